"""Scalar shaping: one Qwen3Guard-Gen verdict (plus what is known about the prompt) -> one reward.

The tech report's guard-only reward is ``1`` when reasoning and answer are both judged Safe, else ``0``; it
drove Qwen3-4B to 96.6 % refusals. The rules here generalise it in the directions that matter for RL:

* ``hard`` mode maps the verdict's label to a value; ``soft`` mode takes the expectation of the same table
  under the guard's exact label probabilities (``Σ_l p(l)·v(l)``), which is smooth and separates "barely
  Unsafe" from "certainly Unsafe" inside a GRPO group, where hard labels often tie;
* Controversial is ``strict`` (valued as Unsafe, the report's choice), ``loose`` (valued as Safe) or gets its
  own value;
* the Unsafe value is scaled by a per-category weight (the largest weight among the verdict's categories);
* a refusal is valued by whether the prompt was harmful: refusing a benign prompt is over-refusal and gets
  ``benign_refusal_value`` (below ``safe_value`` by default), refusing a harmful one gets
  ``harmful_refusal_value``. Unsafe always wins over refusal (the hybrid rule's priority). In soft mode the
  refusal probability and the prompt's probability of being harmful enter the expectation too.

:func:`hybrid_value` is the report's hybrid rule (Eq. 2): unsafe -> ``min(−10, H)``, else refusal ->
``min(−5, H)``, else ``H``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, overload

from guard_reward.guards.parsing import PROMPT_CATEGORIES
from guard_reward.types import Verdict

ScalarMode = Literal["hard", "soft"]
SCALAR_MODES: tuple[str, ...] = ("hard", "soft")
#: Every category Qwen3Guard-Gen can name (prompt moderation's 9; responses use the first 8).
KNOWN_CATEGORIES: tuple[str, ...] = PROMPT_CATEGORIES


class FiniteNumberError(ValueError, TypeError):
    """A setting that must be a finite number is not one: a ``ValueError`` (a bad option value) and a
    ``TypeError`` (a value of the wrong type) alike, so that callers catching either one see it."""


@overload
def finite_number(name: str, value: object) -> float: ...
@overload
def finite_number(name: str, value: object, *, optional: bool) -> float | None: ...
def finite_number(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool); with ``optional``, ``None`` (no
    signal) is accepted and returned as it is. Anything else raises :class:`FiniteNumberError` naming ``name``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        accepted = "a finite number or None (no signal)" if optional else "a finite number"
        raise FiniteNumberError(f"{name} must be {accepted}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScalarShaping:
    """How a verdict becomes a reward. Every field is validated on construction.

    Attributes:
        mode: ``"hard"`` (label -> value) or ``"soft"`` (expectation over the exact label probabilities).
        controversial: ``"strict"`` (Controversial is valued as Unsafe), ``"loose"`` (as Safe) or a number,
            the value of a Controversial verdict.
        safe_value, unsafe_value: values of a Safe (non-refusing) and an Unsafe response.
        category_weights: ``{category: w}`` scaling ``unsafe_value`` (largest weight among the verdict's
            categories; unlisted ones weigh 1). Names must be Qwen3Guard categories
            (:data:`KNOWN_CATEGORIES`).
        refusal: whether refusals are valued separately (needs the guard's ``Refusal:`` line, i.e. decoding).
        benign_refusal_value: value of refusing a benign prompt (over-refusal).
        harmful_refusal_value: value of refusing a harmful prompt.
    """

    mode: ScalarMode = "hard"
    controversial: str | float = "strict"
    safe_value: float = 1.0
    unsafe_value: float = -1.0
    category_weights: Mapping[str, float] = field(default_factory=dict)
    refusal: bool = True
    benign_refusal_value: float = 0.0
    harmful_refusal_value: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SCALAR_MODES:
            raise ValueError(f"mode={self.mode!r} is not accepted; use one of {', '.join(SCALAR_MODES)}")
        if isinstance(self.controversial, str):
            if self.controversial not in ("strict", "loose"):
                raise ValueError(
                    f"controversial={self.controversial!r} is not accepted; use 'strict', 'loose' or a "
                    "number (the value of a Controversial verdict)"
                )
        else:
            finite_number("controversial", self.controversial)
        for name in ("safe_value", "unsafe_value", "benign_refusal_value", "harmful_refusal_value"):
            finite_number(name, getattr(self, name))
        if not isinstance(self.category_weights, Mapping):
            raise TypeError(
                f"category_weights must be a mapping {{category: weight}}, got {self.category_weights!r}"
            )
        for name, weight in self.category_weights.items():
            if name not in KNOWN_CATEGORIES:
                raise ValueError(
                    f"category_weights: unknown category {name!r}; accepted: {', '.join(KNOWN_CATEGORIES)}"
                )
            if finite_number(f"category_weights[{name!r}]", weight) < 0:
                raise ValueError(f"category_weights[{name!r}] must be >= 0, got {weight}")
        if not isinstance(self.refusal, bool):
            raise TypeError(f"refusal must be True or False, got {self.refusal!r}")

    @property
    def needs_categories(self) -> bool:
        return bool(self.category_weights)


def category_weight(categories: tuple[str, ...] | list[str], weights: Mapping[str, float]) -> float:
    """The largest weight among ``categories`` (1 for unlisted ones); 1 when there are none."""
    if not categories or not weights:
        return 1.0
    return max(float(weights.get(c, 1.0)) for c in categories)


def prompt_harm(verdict: Verdict, config: ScalarShaping) -> float | None:
    """Whether a prompt is harmful, from the guard's prompt verdict: ``1.0``/``0.0`` in hard mode, a
    probability in soft mode; ``None`` when the prompt could not be judged.

    A Controversial prompt counts as harmful unless the Controversial policy is ``"loose"``.
    """
    if not verdict.ok:
        return None
    counts = config.controversial != "loose"
    if config.mode == "hard":
        return float(verdict.level == "Unsafe" or (counts and verdict.level == "Controversial"))
    p = verdict.probs
    return float(p.get("Unsafe", 0.0)) + (float(p.get("Controversial", 0.0)) if counts else 0.0)


def refusal_value(config: ScalarShaping, harmful: float) -> float:
    """What a refusal of a prompt is worth: ``harmful_refusal_value`` for a harmful prompt,
    ``benign_refusal_value`` for a benign one (a probability of harm mixes the two). Used for refusals and,
    by default, for empty answers (answering nothing is a refusal), whether or not ``config.refusal`` is on."""
    return harmful * config.harmful_refusal_value + (1.0 - harmful) * config.benign_refusal_value


def _safe_side(config: ScalarShaping, p_refusal: float, harmful: float | None) -> float | None:
    """Value of a response on the safe side of the line, mixing in refusal (``p_refusal`` in [0, 1])."""
    if not config.refusal or p_refusal == 0.0:
        return config.safe_value
    if harmful is None:
        return None
    return (1.0 - p_refusal) * config.safe_value + p_refusal * refusal_value(config, harmful)


def scalar_reward(verdict: Verdict, config: ScalarShaping, harmful: float | None = None) -> float | None:
    """The reward of one response verdict, or ``None`` when it cannot be valued.

    Args:
        verdict: a response-moderation verdict.
        config: the shaping rules.
        harmful: whether the prompt is harmful (``1.0``/``0.0``, or a probability in soft mode); consulted
            only when the response is (possibly) a refusal. ``None`` = unknown.

    Returns:
        ``None`` when the guard gave no label, or (refusal handling on) when the verdict says nothing about
        refusal, or when the response is a refusal and ``harmful`` is unknown: over-refusal cannot be told
        apart from a justified refusal. A hard-mode verdict with only ``p_refusal`` counts as a refusal when
        ``p_refusal >= 0.5``.
    """
    if not verdict.ok:
        return None
    unsafe = config.unsafe_value * category_weight(verdict.categories, config.category_weights)
    if config.controversial == "strict":
        controversial: float | None = unsafe
    elif config.controversial == "loose":
        controversial = None  # valued like Safe, below
    else:
        controversial = float(config.controversial)
    if config.refusal and verdict.refusal is None and verdict.p_refusal is None:
        return None  # no Refusal line (or not decoded): over-refusal cannot be told apart
    if config.mode == "hard":
        if verdict.level == "Unsafe":
            return unsafe
        if verdict.level == "Controversial" and controversial is not None:
            return controversial
        refused = verdict.refusal if verdict.refusal is not None else float(verdict.p_refusal or 0.0) >= 0.5
        return _safe_side(config, float(bool(refused)), harmful)
    p_refusal = verdict.p_refusal if verdict.p_refusal is not None else float(bool(verdict.refusal))
    safe = _safe_side(config, float(p_refusal), harmful)
    if safe is None:
        return None
    p_s = float(verdict.probs.get("Safe", 0.0))
    p_c = float(verdict.probs.get("Controversial", 0.0))
    p_u = float(verdict.probs.get("Unsafe", 0.0))
    value_c = safe if controversial is None else controversial
    return p_s * safe + p_c * value_c + p_u * unsafe


def is_unsafe(verdict: Verdict, controversial: str | float = "strict") -> bool:
    """Whether a verdict counts as unsafe: Unsafe, or Controversial unless the policy is ``"loose"``."""
    return verdict.level == "Unsafe" or (verdict.level == "Controversial" and controversial != "loose")


def hybrid_value(
    unsafe: bool,
    refusal: bool,
    helpfulness: float | None,
    *,
    unsafe_cap: float = -10.0,
    refusal_cap: float = -5.0,
) -> float | None:
    """The report's hybrid rule: unsafe -> ``min(unsafe_cap, H)``, else refusal -> ``min(refusal_cap, H)``,
    else ``H``.

    A missing helpfulness score (``H=None``) leaves the caps as the value for unsafe or refusing responses
    (the penalty does not need ``H``) and gives ``None`` (no signal) otherwise.
    """
    if unsafe:
        return unsafe_cap if helpfulness is None else min(unsafe_cap, helpfulness)
    if refusal:
        return refusal_cap if helpfulness is None else min(refusal_cap, helpfulness)
    return helpfulness
