"""Scalar safety rewards for TRL from Qwen3Guard-Gen: ``SafetyReward`` and the report's
``HybridSafetyReward``.

Both are plain picklable callables with a configurable ``__name__``. Unlike the tech report's guard-only
reward (1 if Safe else 0), ``SafetyReward`` separates over-refusal from justified refusal — whether a prompt
is harmful comes from a dataset column or from the guard's own prompt verdict, judged once per unique prompt —
because a guard-only reward is most easily maximised by refusing everything.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward import metrics
from guard_reward.conversations import check_thinking_mode
from guard_reward.guards.parsing import RESPONSE_CATEGORIES
from guard_reward.rewards.base import (
    GuardHandle,
    check_name,
    emit,
    emit_columns,
    harm_from_column,
    prompt_conversation,
    response_conversations,
    unique_prompts,
    warn_reward_hacking_risk,
)
from guard_reward.shaping.scalar import ScalarShaping, hybrid_value, is_unsafe, prompt_harm, scalar_reward
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)


def _load_gen(path: str, **kw: Any) -> Any:
    from guard_reward.guards.gen import GenGuard

    return GenGuard.from_pretrained(path, **kw)


class _GenReward:
    """Shared plumbing: guard handle, thinking mode, failure policy, counters, metrics."""

    def __init__(
        self,
        guard: Any,
        *,
        name: str,
        thinking: str,
        failure_value: float | None,
        metric_prefix: str,
        guard_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self.__name__ = check_name(name)
        self.guard = GuardHandle(guard, _load_gen, dict(guard_kwargs or {}))
        self.thinking = check_thinking_mode(thinking)
        if failure_value is not None and (
            isinstance(failure_value, bool) or not isinstance(failure_value, (int, float))
        ):
            raise TypeError(f"failure_value must be a number or None (no signal), got {failure_value!r}")
        self.failure_value = None if failure_value is None else float(failure_value)
        self.metric_prefix = check_name(metric_prefix)
        self.stats: Counter[str] = Counter()
        self._checked_recipe = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

    def _judge(self, prompts: Sequence[Any], completions: Sequence[Any], decode: bool) -> list[Verdict]:
        conversations = response_conversations(prompts, completions)
        return self.guard.get().moderate(conversations, decode=decode, thinking=self.thinking)

    def _fail(
        self, values: list[float | None], failed: Sequence[int], verdicts: Sequence[Verdict], what: str
    ) -> list[float | None]:
        """Apply the failure policy to the samples at ``failed``, counting and logging them."""
        if failed:
            self.stats["failures"] += len(failed)
            errors = sorted({verdicts[i].error for i in failed if verdicts[i].error})
            logger.warning(
                "%s: %d of %d samples could not be valued (%s); returning %s for them",
                self.__name__,
                len(failed),
                len(values),
                "; ".join(errors)[:200] if errors else what,
                "None (no signal)" if self.failure_value is None else self.failure_value,
            )
            for i in failed:
                values[i] = self.failure_value
        return values


class SafetyReward(_GenReward):
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
        failure_value: returned for a sample the guard cannot judge; ``None`` = TRL's "no signal".
        decode: force greedy decoding of the verdict lines (categories in the metrics); ``None`` = only when
            refusal handling or category weights need it.
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
        failure_value: float | None = None,
        decode: bool | None = None,
        name: str = "guard_safety",
        metric_prefix: str = metrics.DEFAULT_PREFIX,
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            guard,
            name=name,
            thinking=thinking,
            failure_value=failure_value,
            metric_prefix=metric_prefix,
            guard_kwargs=guard_kwargs,
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

    def _harm(self, prompts: Sequence[Any], kwargs: dict[str, Any]) -> list[float | None] | None:
        """Per sample, whether its prompt is harmful; ``None`` when refusal handling is off."""
        if not self.shaping.refusal:
            return None
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
            return list(harm_from_column(values, self.harmful_column))
        uniques, index = unique_prompts(prompts)
        verdicts = self.guard.get().moderate([prompt_conversation(p) for p in uniques], decode=False)
        harm = [prompt_harm(v, self.shaping) for v in verdicts]
        failed = sum(h is None for h in harm)
        if failed:
            self.stats["prompt_failures"] += failed
            logger.warning(
                "%s: %d of %d unique prompts could not be judged", self.__name__, failed, len(uniques)
            )
        self.stats["prompts_judged"] += len(uniques)
        return [harm[j] for j in index]

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
        start = time.perf_counter()
        if not self._checked_recipe:
            self._checked_recipe = True
            warn_reward_hacking_risk(self.__name__, log_metric)
        harm = self._harm(prompts, kwargs)  # first: a missing column fails before the guard runs
        verdicts = self._judge(prompts, completions, self.decode)
        values = [
            scalar_reward(v, self.shaping, None if harm is None else harm[i]) for i, v in enumerate(verdicts)
        ]
        failed = [i for i, v in enumerate(values) if v is None]
        values = self._fail(values, failed, verdicts, "a refusal to a prompt whose harm is unknown")
        self.stats.update(calls=1, samples=len(values))
        summary = metrics.verdict_metrics(
            verdicts,
            harmful=harm,
            prefix=self.metric_prefix,
            categories=RESPONSE_CATEGORIES if self.decode else (),
        )
        summary[metrics.metric_name(self.metric_prefix, metrics.SECONDS)] = time.perf_counter() - start
        emit(log_metric, summary)
        emit_columns(log_extra, metrics.verdict_columns(verdicts, self.metric_prefix))
        return values


class HybridSafetyReward(_GenReward):
    """The tech report's hybrid reward: unsafe -> ``min(unsafe_value, H)``, else refusal ->
    ``min(refusal_value, H)``, else ``H``, with ``H`` any TRL reward function's value (e.g. a helpfulness
    reward model).

    Args:
        guard: a ``GenGuard`` or a Gen checkpoint (loaded on first use with ``guard_kwargs``).
        helpfulness: a TRL reward function ``(prompts, completions, **kwargs) -> list[float | None]``; it gets
            the same keyword arguments as this reward.
        unsafe_value, refusal_value: the caps (the report's −10 and −5).
        controversial: ``"strict"`` (Controversial counts as unsafe) or ``"loose"``.
        thinking, failure_value, name, metric_prefix: as in :class:`SafetyReward`.
    """

    def __init__(
        self,
        guard: Any,
        helpfulness: Callable[..., Sequence[float | None]],
        *,
        unsafe_value: float = -10.0,
        refusal_value: float = -5.0,
        controversial: str = "strict",
        thinking: str = "separate",
        failure_value: float | None = None,
        name: str = "guard_hybrid",
        metric_prefix: str = metrics.DEFAULT_PREFIX,
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            guard,
            name=name,
            thinking=thinking,
            failure_value=failure_value,
            metric_prefix=metric_prefix,
            guard_kwargs=guard_kwargs,
        )
        if not callable(helpfulness):
            raise TypeError(f"helpfulness must be a TRL reward function, got {type(helpfulness).__name__}")
        if controversial not in ("strict", "loose"):
            raise ValueError(f"controversial={controversial!r} is not accepted; use 'strict' or 'loose'")
        for label, value in (("unsafe_value", unsafe_value), ("refusal_value", refusal_value)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{label} must be a number, got {value!r}")
        self.helpfulness = helpfulness
        self.unsafe_value = float(unsafe_value)
        self.refusal_value = float(refusal_value)
        self.controversial = controversial

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
        start = time.perf_counter()
        verdicts = self._judge(prompts, completions, decode=True)
        scores = list(
            self.helpfulness(
                prompts=prompts,
                completions=completions,
                completion_ids=completion_ids,
                trainer_state=trainer_state,
                log_metric=log_metric,
                log_extra=log_extra,
                **kwargs,
            )
        )
        if len(scores) != len(prompts):
            raise ValueError(f"helpfulness returned {len(scores)} values for {len(prompts)} completions")
        values: list[float | None] = []
        for v, h in zip(verdicts, scores, strict=True):
            if not v.ok:
                values.append(None)
                continue
            h = None if h is None else float(h)
            unsafe = is_unsafe(v, self.controversial)
            values.append(
                hybrid_value(
                    unsafe,
                    bool(v.refusal),
                    h,
                    unsafe_cap=self.unsafe_value,
                    refusal_cap=self.refusal_value,
                )
            )
        values = self._fail(values, [i for i, v in enumerate(verdicts) if not v.ok], verdicts, "no verdict")
        self.stats.update(calls=1, samples=len(values))
        summary = metrics.verdict_metrics(verdicts, prefix=self.metric_prefix, categories=RESPONSE_CATEGORIES)
        refusals = [bool(v.refusal) for v in verdicts if v.ok and v.refusal is not None]
        if refusals:
            summary[metrics.metric_name(self.metric_prefix, metrics.REFUSAL_RATE)] = sum(refusals) / len(
                refusals
            )
        summary[metrics.metric_name(self.metric_prefix, metrics.SECONDS)] = time.perf_counter() - start
        emit(log_metric, summary)
        emit_columns(log_extra, metrics.verdict_columns(verdicts, self.metric_prefix))
        return values
