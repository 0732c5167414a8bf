"""``GuardReward``: the public base of the Qwen3Guard-Gen scalar rewards, and the one skeleton they all run.

A call goes one way: **truncation** (which completions were cut off, TRL's rule) -> **judging** (every assistant
turn of every completion in one guard call, :mod:`guard_reward.rewards.trajectory`) -> **deciding** (each turn
valued by the subclass, the completion valued by its worst or last turn) -> **metrics** (rates, failure totals,
per-sample columns). A subclass fills in only what is its own: what it needs to know per sample besides the
verdicts (:meth:`GuardReward._contexts`: the prompt's harm, a helpfulness score), how one turn's verdict becomes a
value (:meth:`GuardReward._outcome`) and which rates it logs (:meth:`GuardReward._rates`).

Unlike a reward that asks the guard about the completion as one message, the rewards built on this judge each
assistant turn of a completion (tool calls included) and value the completion by the worst or the last turn.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward.conversations import check_thinking_mode
from guard_reward.faults import NO_ANSWER, check_on_error
from guard_reward.rewards import metrics
from guard_reward.rewards.inputs import GuardHandle, check_name, load_gen
from guard_reward.rewards.trajectory import (
    JUDGE,
    Judged,
    Outcome,
    TrajectoryValues,
    check_turns,
    decide,
    end_ids,
    judge_turns,
    truncated_flags,
    turn_outcomes,
)
from guard_reward.shaping.scalar import finite_number, is_unsafe
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)


class GuardReward(metrics.CountedReward):
    """A TRL reward function valuing each completion by Qwen3Guard-Gen's verdicts on its assistant turns.

    The arguments are those every scalar reward shares (documented on :class:`~guard_reward.SafetyReward`).
    A subclass sets :attr:`decode` (whether the guard decodes its verdict lines) and implements
    :meth:`_outcome` and :meth:`_rates`; :meth:`_contexts` and :meth:`_before_judging` are optional.
    """

    #: Whether the guard decodes its verdict lines (categories, refusal); a subclass may set it per instance.
    decode: bool = False

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
            truncated_value = finite_number("truncated_value", truncated_value, optional=True)
        self.truncated_value = truncated_value
        if eos_token_ids is not None and (
            isinstance(eos_token_ids, (str, bytes))
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in eos_token_ids)
        ):
            raise TypeError(f"eos_token_ids must be a list of token ids or None, got {eos_token_ids!r}")
        self.eos_token_ids = None if eos_token_ids is None else [int(i) for i in eos_token_ids]
        self.guard = GuardHandle(guard, load_gen, dict(guard_kwargs or {}))
        self.thinking = check_thinking_mode(thinking)
        self.failure_value = finite_number("failure_value", failure_value, optional=True)
        self.no_answer_value = finite_number("no_answer_value", no_answer_value, optional=True)
        if empty_value != "refusal":
            empty_value = finite_number("empty_value", empty_value, optional=True)
        self.empty_value = empty_value
        self.on_error = check_on_error(on_error)
        self.metric_prefix = check_name(metric_prefix)
        self.counter = metrics.RewardCounter(self.__name__)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        return self.evaluate(
            prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **kwargs
        )[0]

    def evaluate(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> tuple[list[float | None], list[Verdict]]:
        """What ``__call__`` does, also returning each completion's verdict: the turn that decided its value,
        with every turn's verdict in ``Verdict.turns``."""
        key = (list(prompts), list(completions), None if completion_ids is None else list(completion_ids))
        out = self._evaluate(
            prompts, completions, completion_ids, trainer_state, log_metric, log_extra, kwargs
        )
        self._last = (key, out)
        return out.values, out.verdicts

    def evaluate_turns(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> TrajectoryValues:
        """What :meth:`evaluate` does, with every judged turn's own value. The batch this reward judged last
        (the same prompts, completions and ids, e.g. as a scalar reward of the same step) is answered from
        that call, without judging or logging it again."""
        key = (list(prompts), list(completions), None if completion_ids is None else list(completion_ids))
        last = getattr(self, "_last", None)
        if last is not None and last[0] == key:
            return last[1]
        out = self._evaluate(
            prompts, completions, completion_ids, trainer_state, log_metric, log_extra, kwargs
        )
        self._last = (key, out)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}

    def _evaluate(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None,
        trainer_state: Any,
        log_metric: Callable[[str, float], None] | None,
        log_extra: Callable[[str, list], None] | None,
        kwargs: dict[str, Any],
    ) -> TrajectoryValues:
        start = time.perf_counter()
        self._before_judging(prompts, log_metric, kwargs)
        truncated = self._truncated(completion_ids, log_metric, len(prompts))
        samples = judge_turns(
            self.guard.get(),
            prompts,
            completions,
            rule=self.turns,
            decode=self.decode,
            thinking=self.thinking,
        )
        call = {"completion_ids": completion_ids, "trainer_state": trainer_state, "log_metric": log_metric}
        contexts = self._contexts(samples, prompts, completions, {**call, "log_extra": log_extra, **kwargs})
        batch: Counter[str] = Counter()
        values: list[float | None] = []
        verdicts: list[Verdict] = []
        per_turn: list[list[float | None]] = []
        for i, (sample, context) in enumerate(zip(samples, contexts, strict=True)):
            outcomes = [self._outcome(v, context) for v in sample.verdicts]
            (value, reason, error), verdict = decide(sample, outcomes, truncated[i], self.truncated_value)
            values.append(value if reason is None else self._failed(i, reason, error, batch))
            verdicts.append(verdict)
            turns = turn_outcomes(sample, outcomes, truncated[i], self.truncated_value)
            per_turn.append([v if why is None else None for v, why, _ in turns[: len(sample.verdicts)]])
        rates = self._rates(verdicts, contexts)
        rates.update(metrics.turn_items(verdicts, truncated, prefix=self.metric_prefix))
        seconds = time.perf_counter() - start
        self.counter.emit(
            log_metric, self.metric_prefix, rates=rates, batch=batch, samples=len(values), elapsed=seconds
        )
        metrics.emit_columns(log_extra, metrics.verdict_columns(verdicts, self.metric_prefix))
        return TrajectoryValues(values, verdicts, per_turn, samples)

    # -- what a subclass fills in

    def _before_judging(self, prompts: Sequence[Any], log_metric: Any, kwargs: dict[str, Any]) -> None:
        """Checks that must fail before the guard runs (default: none)."""

    def _contexts(
        self, samples: list[Judged], prompts: Sequence[Any], completions: Sequence[Any], call: dict[str, Any]
    ) -> list[Any]:
        """Per sample, what :meth:`_outcome` needs besides the verdict (default: nothing). ``call`` holds every
        keyword argument of the call (``completion_ids``, ``trainer_state``, ``log_metric``, ``log_extra`` and
        the dataset columns)."""
        return [None] * len(samples)

    def _outcome(self, verdict: Verdict, context: Any) -> Outcome:
        """One turn's ``(value, failure reason, error)``; a reason means the turn could not be valued."""
        raise NotImplementedError

    def _rates(self, verdicts: list[Verdict], contexts: list[Any]) -> dict[str, list[float]]:
        """Per-item values of the sequence-level rates (:func:`~guard_reward.rewards.metrics.verdict_items`)."""
        raise NotImplementedError

    # -- the skeleton's own steps

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

    def _failed(self, index: int, reason: str, error: str | None, batch: Counter[str]) -> float | None:
        """A sample without a value: counted and logged once per reason; raised under ``on_error="raise"``
        (a cut-off reasoning block is a fact about the completion and is never raised)."""
        self.counter.fail(reason, f"sample {index}: {error or reason}", batch, self.on_error)
        return self.failure_value if reason != NO_ANSWER else None


def unsafe_reasoning(verdict: Verdict, controversial: str | float) -> Verdict | None:
    """The reasoning's own verdict when it was judged and counts as unsafe under ``controversial``, else
    ``None``."""
    part = (verdict.parts or {}).get("reasoning")
    if part is not None and part.ok and is_unsafe(part, controversial):
        return part
    return None
