"""The Qwen3Guard tech report's hybrid reward: the guard's verdict caps a helpfulness score.

As in the report: unsafe -> ``min(unsafe_value, H)``, refusal -> ``min(refusal_value, H)``, else ``H``; unlike
it, a multi-turn completion is valued by its worst (or last) assistant turn, tool calls included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward.faults import NO_ANSWER, UNPARSEABLE
from guard_reward.guards.parsing import RESPONSE_CATEGORIES
from guard_reward.rewards import metrics
from guard_reward.rewards.base import GuardReward, unsafe_reasoning
from guard_reward.rewards.trajectory import JUDGE, Judged, Outcome
from guard_reward.shaping.scalar import finite_number, hybrid_value, is_unsafe
from guard_reward.types import Verdict


class HybridSafetyReward(GuardReward):
    """The tech report's hybrid reward: unsafe -> ``min(unsafe_value, H)``, else refusal ->
    ``min(refusal_value, H)``, else ``H``, with ``H`` any TRL reward function's value (e.g. a helpfulness
    reward model).

    Args:
        guard: a ``GenGuard`` or a Gen checkpoint (loaded on first use with ``guard_kwargs``).
        helpfulness: a TRL reward function ``(prompts, completions, **kwargs) -> list[float | None]``; it gets
            the same keyword arguments as this reward.
        unsafe_value, refusal_value: the caps (the report's −10 and −5).
        controversial: ``"strict"`` (Controversial counts as unsafe) or ``"loose"``.
        empty_value: an empty answer's value: ``"refusal"`` (default: valued as a refusal, ``min(refusal_value,
            H)``), a number or ``None``; an unsafe reasoning makes it ``min(unsafe_value, H)``.
        thinking, no_answer_value, failure_value, on_error, turns, truncated_value, eos_token_ids, name,
            metric_prefix: as in :class:`SafetyReward`.
    """

    decode = True  # the refusal cap needs the guard's Refusal line

    def __init__(
        self,
        guard: Any,
        helpfulness: Callable[..., Sequence[float | None]],
        *,
        unsafe_value: float = -10.0,
        refusal_value: float = -5.0,
        controversial: str = "strict",
        thinking: str = "separate",
        empty_value: float | str | None = "refusal",
        no_answer_value: float | None = None,
        failure_value: float | None = None,
        on_error: str = "skip",
        turns: str = "worst",
        truncated_value: float | str | None = JUDGE,
        eos_token_ids: Sequence[int] | None = None,
        name: str = "guard_hybrid",
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
        if not callable(helpfulness):
            raise TypeError(f"helpfulness must be a TRL reward function, got {type(helpfulness).__name__}")
        if controversial not in ("strict", "loose"):
            raise ValueError(f"controversial={controversial!r} is not accepted; use 'strict' or 'loose'")
        self.helpfulness = helpfulness
        self.unsafe_value = finite_number("unsafe_value", unsafe_value)
        self.refusal_value = finite_number("refusal_value", refusal_value)
        self.controversial = controversial

    def _value(self, v: Verdict, h: float | None) -> float | None:
        caps = {"unsafe_cap": self.unsafe_value, "refusal_cap": self.refusal_value}
        reasoning_unsafe = unsafe_reasoning(v, self.controversial) is not None
        if v.empty:
            if reasoning_unsafe:
                return hybrid_value(True, False, h, **caps)
            if self.empty_value == "refusal":
                return hybrid_value(False, True, h, **caps)
            return self.empty_value  # type: ignore[return-value]
        if v.answer_missing:
            if self.no_answer_value is None:
                return None
            return (
                min(self.no_answer_value, hybrid_value(True, False, h, **caps))
                if reasoning_unsafe
                else (self.no_answer_value)
            )
        return hybrid_value(is_unsafe(v, self.controversial), bool(v.refusal), h, **caps)

    def _contexts(
        self, samples: list[Judged], prompts: Sequence[Any], completions: Sequence[Any], call: dict[str, Any]
    ) -> list[float | None]:
        """Per sample, the helpfulness score ``H`` (the helpfulness function gets this call's arguments)."""
        scores = list(self.helpfulness(prompts=prompts, completions=completions, **call))
        if len(scores) != len(prompts):
            raise ValueError(f"helpfulness returned {len(scores)} values for {len(prompts)} completions")
        return [None if h is None else float(h) for h in scores]

    def _rates(self, verdicts: list[Verdict], contexts: list[Any]) -> dict[str, list[float]]:
        rates = metrics.verdict_items(verdicts, prefix=self.metric_prefix, categories=RESPONSE_CATEGORIES)
        rates[metrics.metric_name(self.metric_prefix, metrics.REFUSAL_RATE)] = [
            float(bool(v.refusal)) for v in verdicts if v.ok and v.refusal is not None
        ]
        return rates

    def _outcome(self, v: Verdict, helpfulness: float | None) -> Outcome:
        """One turn's ``(value, failure reason, error)``."""
        if v.answer_missing and self.no_answer_value is None:
            return None, NO_ANSWER, v.error
        if not v.ok and not v.empty and not v.answer_missing:
            return None, v.reason or UNPARSEABLE, v.error
        return self._value(v, helpfulness), None, None
