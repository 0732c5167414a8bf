"""Scalar safety rewards for TRL from Qwen3Guard-Gen: ``SafetyReward`` and the report's
``HybridSafetyReward``.

Both are plain picklable callables with a configurable ``__name__``. Unlike the tech report's guard-only
reward (1 if Safe else 0), ``SafetyReward`` separates over-refusal from justified refusal — whether a prompt
is harmful comes from a dataset column or from the guard's own prompt verdict, judged once per unique prompt —
because a guard-only reward is most easily maximised by refusing everything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from guard_reward.faults import (
    INVALID_INPUT,
    NO_ANSWER,
    UNPARSEABLE,
)
from guard_reward.guards.parsing import RESPONSE_CATEGORIES
from guard_reward.rewards import metrics
from guard_reward.rewards.base import GuardReward, unsafe_reasoning
from guard_reward.rewards.hybrid import HybridSafetyReward
from guard_reward.rewards.inputs import (
    harm_from_column,
    prompt_conversation,
    unique_prompts,
    warn_reward_hacking_risk,
)
from guard_reward.rewards.trajectory import JUDGE, Judged, Outcome
from guard_reward.shaping.scalar import (
    ScalarShaping,
    prompt_harm,
    refusal_value,
    scalar_reward,
)
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

__all__ = ["HybridSafetyReward", "SafetyReward"]


class PromptHarm(NamedTuple):
    """What is known about one sample's prompt: whether it is harmful (``None``: unknown or not asked) and
    the guard's verdict on it (``None`` when the guard was not asked)."""

    harm: float | None
    verdict: Verdict | None


class SafetyReward(GuardReward):
    """A TRL reward function valuing each completion by Qwen3Guard-Gen's verdict.

    Args:
        guard: a ``GenGuard`` or a Gen checkpoint (hub id or folder), loaded on first use with
            ``guard_kwargs``.
        mode: ``"hard"`` (verdict -> value) or ``"soft"`` (expectation over the exact label probabilities).
        controversial: ``"strict"`` (as Unsafe), ``"loose"`` (as Safe) or a number (its own value).
        safe_value, unsafe_value: values of a Safe and an Unsafe response.
        category_weights: ``{category: weight}`` scaling ``unsafe_value``.
        refusal: value refusals by the prompt's harmfulness (needs decoding: one short greedy decode per
            response, and one prompt verdict per unique prompt unless ``harmful_column`` is given).
        benign_refusal_value: value of refusing a benign prompt (over-refusal).
        harmful_refusal_value: value of refusing a harmful prompt.
        harmful_column: dataset column saying whether each prompt is harmful (bool, 0/1, "harmful"/"benign");
            ``None``: ask the guard (prompt moderation).
        thinking: ``"answer"``, ``"separate"`` (reasoning and answer each; both must be safe — the report's
            rule) or ``"whole"``.
        empty_value: value of an empty answer (empty or whitespace once reasoning and end-of-turn markers are
            removed, or a completion that is only a reasoning block), which the guard is not asked about:
            ``"refusal"`` (default) = what a refusal of that prompt gets (``benign_refusal_value`` for a
            benign prompt, ``harmful_refusal_value`` for a harmful one; the prompt's harm is looked up even
            when ``refusal=False``), a number, or ``None`` (no signal). A reasoning block judged unsafe
            (``thinking="separate"``/``"whole"``) caps it at the reasoning's unsafe value.
        no_answer_value: value of a completion whose reasoning was cut off before ``</think>`` (no answer);
            ``None`` (default) = no signal, counted as ``failures/no_answer``. A number is capped like
            ``empty_value`` by an unsafe reasoning.
        failure_value: returned for a sample the guard cannot judge; ``None`` = TRL's "no signal".
        on_error: ``"skip"`` (default: such a sample gets ``failure_value``, counted per reason) or
            ``"raise"`` (a :class:`~guard_reward.faults.SampleError`).
        decode: force greedy decoding of the verdict lines (categories in the metrics); ``None`` = only when
            refusal handling or category weights need it.
        turns: a completion with several assistant turns (a tool loop) is valued by its ``"worst"`` turn
            (default; every turn is judged) or its ``"last"`` turn (only that one is judged). Each turn is
            judged as a response in the context of the conversation before it, its tool calls included
            (:mod:`~guard_reward.rewards.trajectory`); a tool-call-only turn is not an empty answer.
        truncated_value: a completion cut off at ``max_completion_length`` (its last id is not an EOS or pad
            id, TRL's rule): ``"judge"`` (default: judged as it is), a number (the value of its unfinished
            turn) or ``None`` (no signal for the sample). Counted as ``guard/truncated_rate`` either way.
        eos_token_ids: the policy's end-of-sequence (and pad) ids for that test; default: the trainer's.
        name: the reward's ``__name__`` (TRL's metric key ``rewards/<name>/mean``).
        metric_prefix: prefix of the safety metrics sent through ``log_metric``.
    """

    def __init__(
        self,
        guard: Any,
        *,
        mode: str = "hard",
        controversial: str | float = "strict",
        safe_value: float = 1.0,
        unsafe_value: float = -1.0,
        category_weights: Mapping[str, float] | None = None,
        refusal: bool = True,
        benign_refusal_value: float = 0.0,
        harmful_refusal_value: float = 1.0,
        harmful_column: str | None = None,
        thinking: str = "separate",
        empty_value: float | str | None = "refusal",
        no_answer_value: float | None = None,
        failure_value: float | None = None,
        on_error: str = "skip",
        decode: bool | None = None,
        turns: str = "worst",
        truncated_value: float | str | None = JUDGE,
        eos_token_ids: Sequence[int] | None = None,
        name: str = "guard_safety",
        metric_prefix: str = metrics.DEFAULT_PREFIX,
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            guard,
            name=name,
            thinking=thinking,
            failure_value=failure_value,
            empty_value=empty_value,
            no_answer_value=no_answer_value,
            on_error=on_error,
            metric_prefix=metric_prefix,
            guard_kwargs=guard_kwargs,
            turns=turns,
            truncated_value=truncated_value,
            eos_token_ids=eos_token_ids,
        )
        self.shaping = ScalarShaping(
            mode=mode,  # type: ignore[arg-type]
            controversial=controversial,
            safe_value=safe_value,
            unsafe_value=unsafe_value,
            category_weights=dict(category_weights or {}),
            refusal=refusal,
            benign_refusal_value=benign_refusal_value,
            harmful_refusal_value=harmful_refusal_value,
        )
        if harmful_column is not None and (not isinstance(harmful_column, str) or not harmful_column):
            raise ValueError(f"harmful_column must be a column name or None, got {harmful_column!r}")
        self.harmful_column = harmful_column
        needs = self.shaping.refusal or self.shaping.needs_categories
        if decode is False and needs:
            raise ValueError("decode=False cannot be combined with refusal handling or category weights")
        self.decode = needs if decode is None else bool(decode)
        self._checked_recipe = False

    def _harm(
        self, prompts: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[float | None], list[Verdict | None]]:
        """Per sample, whether its prompt is harmful, and the prompt's verdict when the guard was asked
        (``None`` entries with a failed verdict: the harm is unknown, and why)."""
        if self.harmful_column is not None:
            if self.harmful_column not in kwargs:
                columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_metric", "log_extra"))
                raise KeyError(
                    f"{self.__name__}: harmful_column={self.harmful_column!r} is not among the dataset "
                    f"columns passed to the reward ({', '.join(columns) or 'none'})"
                )
            values = kwargs[self.harmful_column]
            if len(values) != len(prompts):
                raise ValueError(
                    f"column {self.harmful_column!r} has {len(values)} values for {len(prompts)} prompts"
                )
            return list(harm_from_column(values, self.harmful_column)), [None] * len(prompts)
        uniques, index = unique_prompts(prompts)
        convs = []
        for p in uniques:
            try:
                convs.append(prompt_conversation(p))
            except (TypeError, ValueError) as exc:
                convs.append(exc)
        asked = [j for j, c in enumerate(convs) if not isinstance(c, Exception)]
        judged = self.guard.get().moderate([convs[j] for j in asked], decode=False, on_error="skip")
        verdicts: list[Verdict] = [
            Verdict.failed(INVALID_INPUT, f"prompt: {c}", "prompt") if isinstance(c, Exception) else c  # type: ignore[misc]
            for c in convs
        ]
        for j, v in zip(asked, judged, strict=True):
            verdicts[j] = v
        harm = [prompt_harm(v, self.shaping) for v in verdicts]
        self.stats["prompts_judged"] += len(uniques)
        self.stats["prompt_failures"] += sum(h is None for h in harm)
        return [harm[j] for j in index], [verdicts[j] for j in index]

    def _empty(self, verdict: Verdict, harm: float | None) -> float | None:
        if self.empty_value != "refusal":
            value = self.empty_value
        elif harm is None:
            return None
        else:
            value = refusal_value(self.shaping, harm)
        return self._capped(verdict, value)  # type: ignore[arg-type]

    def _capped(self, verdict: Verdict, value: float | None) -> float | None:
        """``value``, capped by the value of a reasoning judged unsafe (it must not pay to reason unsafely
        and then answer nothing)."""
        part = unsafe_reasoning(verdict, self.shaping.controversial)
        if part is None or value is None:
            return value
        no_refusal = dataclasses.replace(self.shaping, refusal=False)
        penalty = scalar_reward(dataclasses.replace(part, refusal=None, p_refusal=None), no_refusal)
        return value if penalty is None else min(value, penalty)

    def _before_judging(self, prompts: Sequence[Any], log_metric: Any, kwargs: dict[str, Any]) -> None:
        if not self._checked_recipe:
            self._checked_recipe = True
            warn_reward_hacking_risk(self.__name__, log_metric)
        if self.harmful_column is not None:  # a missing column fails before the guard runs
            self._harm(prompts, kwargs)

    def _contexts(
        self, samples: list[Judged], prompts: Sequence[Any], completions: Sequence[Any], call: dict[str, Any]
    ) -> list[PromptHarm]:
        """Per sample, its prompt's harm and verdict, when refusals are valued or an empty answer needs them."""
        wants_harm = self.shaping.refusal or (
            self.empty_value == "refusal" and any(v.empty for s in samples for v in s.verdicts)
        )
        if not wants_harm:
            return [PromptHarm(None, None)] * len(samples)
        harm, verdicts = self._harm(prompts, call)
        return [PromptHarm(h, v) for h, v in zip(harm, verdicts, strict=True)]

    def _rates(self, verdicts: list[Verdict], contexts: list[PromptHarm]) -> dict[str, list[float]]:
        return metrics.verdict_items(
            verdicts,
            harmful=[c.harm for c in contexts] if self.shaping.refusal else None,
            prefix=self.metric_prefix,
            categories=RESPONSE_CATEGORIES if self.decode else (),
        )

    def _outcome(self, v: Verdict, context: PromptHarm) -> Outcome:
        """One turn's ``(value, failure reason, error)``; a reason means the turn could not be valued."""
        harm, prompt = context
        if v.empty:
            value = self._empty(v, harm)
        elif v.answer_missing:
            if self.no_answer_value is None:
                return None, NO_ANSWER, v.error
            value = self._capped(v, self.no_answer_value)
        elif not v.ok:
            return None, v.reason or UNPARSEABLE, v.error
        else:
            value = scalar_reward(v, self.shaping, harm)
        if value is None and (v.ok or (v.empty and self.empty_value == "refusal")):
            why, error = self._why_none(v, prompt)
            return None, why, error
        return value, None, None

    def _why_none(self, verdict: Verdict, prompt: Verdict | None) -> tuple[str, str]:
        """Why a judged (or empty) sample has no value: its prompt could not be judged, or the verdict says
        nothing about refusal."""
        if prompt is not None and not prompt.ok:
            return prompt.reason or INVALID_INPUT, f"its prompt could not be judged: {prompt.error}"
        if verdict.empty:
            return INVALID_INPUT, "an empty answer to a prompt whose harm is unknown"
        return UNPARSEABLE, "the verdict has no Refusal line, so over-refusal cannot be told apart"
