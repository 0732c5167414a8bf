"""``SafetyCost``: the per-sample safety cost of the constrained trainers, read from Qwen3Guard-Gen.

It is :class:`~guard_reward.SafetyReward` with the sign turned around (Safe costs 0, Unsafe 1 times its category
weight), so the cost and the reward share verdict parsing, the Controversial policy, failure handling and the
``guard/...`` metrics. The multiplier that prices it lives in :mod:`guard_reward.shaping.constraint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from guard_reward.rewards.safety import SafetyReward
from guard_reward.shaping.scalar import finite_number


class SafetyCost:
    """Per-sample cost from Qwen3Guard-Gen, called like a TRL reward function (``None`` = not judged).

    It is :class:`~guard_reward.SafetyReward` with Safe valued 0 and Unsafe valued -1 (times the category
    weight), refusals not valued, an empty answer costing 0, and the sign turned around: the same verdict
    parsing, Controversial policy, category weights, soft mode, failure handling and ``guard/...`` metrics.

    Args:
        guard: a ``GenGuard`` or a Gen checkpoint.
        mode: ``"hard"`` (Unsafe -> 1) or ``"soft"`` (the exact ``P(Unsafe)``, plus the Controversial share).
        controversial: ``"strict"`` (costs like Unsafe), ``"loose"`` (costs 0) or a number in ``[0, 1]``,
            its cost.
        category_weights: ``{category: weight >= 0}`` scaling an Unsafe verdict's cost (largest among its
            categories; unlisted ones weigh 1).
        name: the cost's ``__name__``; guard_kwargs: for loading ``guard`` from a checkpoint.
    """

    def __init__(
        self,
        guard: Any,
        *,
        mode: str = "hard",
        controversial: str | float = "strict",
        category_weights: Mapping[str, float] | None = None,
        thinking: str = "separate",
        name: str = "guard_cost",
        metric_prefix: str = "guard",
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(controversial, str):
            c = finite_number("controversial", controversial)
            if not 0.0 <= c <= 1.0:
                raise ValueError(f"controversial cost must be in [0, 1], got {controversial}")
            controversial = -c
        weights = dict(category_weights or {})  # checked by SafetyReward's shaping config
        self.__name__ = name
        self._reward = SafetyReward(
            guard,
            mode=mode,
            controversial=controversial,
            safe_value=0.0,
            unsafe_value=-1.0,
            category_weights=weights,
            refusal=False,
            # an empty answer harms no one: it costs 0 (a reasoning block judged unsafe still caps it), not
            # minus a refusal's reward, which would pay a constrained policy for answering nothing
            empty_value=0.0,
            thinking=thinking,
            failure_value=None,
            name=name,
            metric_prefix=metric_prefix,
            guard_kwargs=guard_kwargs,
        )
        self.max_cost = max([1.0, *weights.values()])

    @property
    def stats(self) -> Any:
        return self._reward.stats

    @property
    def guard(self) -> Any:
        """The Gen guard's handle (what ``train`` loads before the first step)."""
        return self._reward.guard

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        values = self._reward(prompts, completions, **kwargs)
        return [None if v is None else -float(v) + 0.0 for v in values]
