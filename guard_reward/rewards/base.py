"""What the Qwen3Guard-Gen scalar rewards share: the guard handle, the thinking mode, the fault policy, the
multi-turn judging of :mod:`guard_reward.rewards.trajectory`, truncation, counters and metrics.

Unlike a reward that asks the guard about the completion as one message, the rewards built on this judge each
assistant turn of a completion (tool calls included) and value the completion by the worst or the last turn.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from guard_reward.conversations import check_thinking_mode
from guard_reward.faults import (
    NO_ANSWER,
    FailureCounter,
    SampleError,
    check_on_error,
)
from guard_reward.rewards import metrics
from guard_reward.rewards.inputs import (
    GuardHandle,
    check_name,
)
from guard_reward.rewards.trajectory import (
    JUDGE,
    Judged,
    check_turns,
    end_ids,
    judge_turns,
    truncated_flags,
)
from guard_reward.shaping.scalar import finite_number, is_unsafe
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)


def _load_gen(path: str, **kw: Any) -> Any:
    from guard_reward.guards.gen import GenGuard

    return GenGuard.from_pretrained(path, **kw)


class _GenReward:
    """Shared plumbing: guard handle, thinking mode, fault policy, counters, metrics."""

    def __init__(
        self,
        guard: Any,
        *,
        name: str,
        thinking: str,
        failure_value: float | None,
        empty_value: float | str | None,
        no_answer_value: float | None,
        on_error: str,
        metric_prefix: str,
        guard_kwargs: Mapping[str, Any] | None,
        turns: str = "worst",
        truncated_value: float | str | None = JUDGE,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.__name__ = check_name(name)
        self.turns = check_turns(turns)
        if truncated_value != JUDGE:
            truncated_value = finite_number("truncated_value", truncated_value, optional=True)  # type: ignore[arg-type]
        self.truncated_value = truncated_value
        if eos_token_ids is not None and (
            isinstance(eos_token_ids, (str, bytes))
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in eos_token_ids)
        ):
            raise TypeError(f"eos_token_ids must be a list of token ids or None, got {eos_token_ids!r}")
        self.eos_token_ids = None if eos_token_ids is None else [int(i) for i in eos_token_ids]
        self.guard = GuardHandle(guard, _load_gen, dict(guard_kwargs or {}))
        self.thinking = check_thinking_mode(thinking)
        self.failure_value = finite_number("failure_value", failure_value, optional=True)
        self.no_answer_value = finite_number("no_answer_value", no_answer_value, optional=True)
        if empty_value != "refusal":
            empty_value = finite_number("empty_value", empty_value, optional=True)  # type: ignore[arg-type]
        self.empty_value = empty_value
        self.on_error = check_on_error(on_error)
        self.metric_prefix = check_name(metric_prefix)
        self.stats: Counter[str] = Counter()
        self.failures = FailureCounter(self.__name__)
        self._checked_recipe = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

    def _judge(self, prompts: Sequence[Any], completions: Sequence[Any], decode: bool) -> list[Judged]:
        """Every sample's judged assistant turns, all in one guard call (:mod:`~guard_reward.rewards.trajectory`);
        a malformed sample gets one ``invalid_input`` verdict (the guard is not asked about it)."""
        return judge_turns(
            self.guard.get(), prompts, completions, rule=self.turns, decode=decode, thinking=self.thinking
        )

    def _truncated(self, completion_ids: Any, log_metric: Any, n: int) -> list[bool | None]:
        """Per sample, whether TRL would call it truncated; ``None`` where that cannot be told."""
        ends = end_ids(self.eos_token_ids, log_metric)
        if ends is None and completion_ids is not None and self.truncated_value != JUDGE:
            raise ValueError(
                f"{self.__name__}: truncated_value={self.truncated_value!r} needs the policy's end-of-sequence "
                "ids to recognise cut-off completions; pass eos_token_ids=[...] (a trainer passing "
                "log_metric provides them)"
            )
        if completion_ids is None and self.truncated_value != JUDGE and "no_ids" not in self.stats:
            self.stats["no_ids"] += 1
            logger.warning(
                "%s: no completion_ids were passed, so truncated_value is not applied", self.__name__
            )
        return truncated_flags(completion_ids, ends, n)

    def _failed(self, index: int, reason: str, error: str | None, counts: Counter[str]) -> float | None:
        """A sample without a value: counted and logged once per reason; raised under ``on_error="raise"``
        (a cut-off reasoning block is a fact about the completion and is never raised)."""
        message = f"sample {index}: {error or reason}"
        if self.on_error == "raise" and reason != NO_ANSWER:
            raise SampleError(reason, f"{self.__name__}: {message}")
        counts[reason] += 1
        self.failures.record(reason, message)
        return self.failure_value if reason != NO_ANSWER else None

    def _emit(
        self,
        log_metric: Any,
        rates: dict[str, list[float]],
        counts: Counter[str],
        start: float,
        n: int,
    ) -> None:
        self.stats.update(calls=1, samples=n, failures=sum(counts.values()))
        metrics.emit_metrics(
            log_metric,
            rates=rates,
            totals=metrics.failure_totals(counts, self.metric_prefix),
            per_rank={metrics.metric_name(self.metric_prefix, metrics.SECONDS): time.perf_counter() - start},
        )


def _reasoning_unsafe(verdict: Verdict, controversial: str | float) -> Verdict | None:
    """The reasoning's own verdict when it was judged and counts as unsafe, else ``None``."""
    part = (verdict.parts or {}).get("reasoning")
    if part is not None and part.ok and is_unsafe(part, controversial):
        return part
    return None
