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
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward import metrics
from guard_reward.conversations import check_thinking_mode
from guard_reward.faults import (
    INVALID_INPUT,
    NO_ANSWER,
    UNPARSEABLE,
    FailureCounter,
    SampleError,
    check_on_error,
)
from guard_reward.guards.parsing import RESPONSE_CATEGORIES
from guard_reward.rewards.base import (
    GuardHandle,
    check_name,
    emit_columns,
    harm_from_column,
    prompt_conversation,
    response_conversations,
    unique_prompts,
    warn_reward_hacking_risk,
)
from guard_reward.shaping.scalar import (
    ScalarShaping,
    hybrid_value,
    is_unsafe,
    prompt_harm,
    refusal_value,
    scalar_reward,
)
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
    ) -> None:
        self.__name__ = check_name(name)
        self.guard = GuardHandle(guard, _load_gen, dict(guard_kwargs or {}))
        self.thinking = check_thinking_mode(thinking)
        self.failure_value = _optional_number("failure_value", failure_value)
        self.no_answer_value = _optional_number("no_answer_value", no_answer_value)
        if empty_value != "refusal":
            empty_value = _optional_number("empty_value", empty_value)  # type: ignore[arg-type]
        self.empty_value = empty_value
        self.on_error = check_on_error(on_error)
        self.metric_prefix = check_name(metric_prefix)
        self.stats: Counter[str] = Counter()
        self.failures = FailureCounter(self.__name__)
        self._checked_recipe = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

    def _judge(self, prompts: Sequence[Any], completions: Sequence[Any], decode: bool) -> list[Verdict]:
        """One verdict per sample; a malformed sample gets an ``invalid_input`` verdict (the guard is not
        asked about it)."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"got {len(prompts)} prompts and {len(completions)} completions; they must pair up"
            )
        conversations: dict[int, Any] = {}
        verdicts: dict[int, Verdict] = {}
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            try:
                conversations[i] = response_conversations([prompt], [completion])[0]
            except (TypeError, ValueError) as exc:
                verdicts[i] = Verdict.failed(INVALID_INPUT, f"sample {i}: {exc}")
        judged = self.guard.get().moderate(
            list(conversations.values()), decode=decode, thinking=self.thinking, on_error="skip"
        )
        verdicts.update(zip(conversations, judged, strict=True))
        return [verdicts[i] for i in range(len(prompts))]

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


def _optional_number(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite number or None (no signal), got {value!r}")
    return float(value)


def _reasoning_unsafe(verdict: Verdict, controversial: str | float) -> Verdict | None:
    """The reasoning's own verdict when it was judged and counts as unsafe, else ``None``."""
    part = (verdict.parts or {}).get("reasoning")
    if part is not None and part.ok and is_unsafe(part, controversial):
        return part
    return None


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
        part = _reasoning_unsafe(verdict, self.shaping.controversial)
        if part is None or value is None:
            return value
        no_refusal = dataclasses.replace(self.shaping, refusal=False)
        penalty = scalar_reward(dataclasses.replace(part, refusal=None, p_refusal=None), no_refusal)
        return value if penalty is None else min(value, penalty)

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
        if self.harmful_column is not None:  # first: a missing column fails before the guard runs
            self._harm(prompts, kwargs)
        verdicts = self._judge(prompts, completions, self.decode)
        wants_harm = self.shaping.refusal or (
            self.empty_value == "refusal" and any(v.empty for v in verdicts)
        )
        harm, prompt_verdicts = self._harm(prompts, kwargs) if wants_harm else (None, None)
        counts: Counter[str] = Counter()
        values: list[float | None] = []
        for i, v in enumerate(verdicts):
            h = None if harm is None else harm[i]
            if v.empty:
                value = self._empty(v, h)
            elif v.answer_missing:
                value = self._capped(v, self.no_answer_value)
                if self.no_answer_value is None:
                    value = self._failed(i, NO_ANSWER, v.error, counts)
            elif not v.ok:
                value = self._failed(i, v.reason or UNPARSEABLE, v.error, counts)
            else:
                value = scalar_reward(v, self.shaping, h)
            if value is None and (v.ok or (v.empty and self.empty_value == "refusal")):
                why, error = self._why_none(v, None if prompt_verdicts is None else prompt_verdicts[i])
                value = self._failed(i, why, error, counts)
            values.append(value)
        self._emit(
            log_metric,
            metrics.verdict_items(
                verdicts,
                harmful=harm if self.shaping.refusal else None,
                prefix=self.metric_prefix,
                categories=RESPONSE_CATEGORIES if self.decode else (),
            ),
            counts,
            start,
            len(values),
        )
        emit_columns(log_extra, metrics.verdict_columns(verdicts, self.metric_prefix))
        return values

    def _why_none(self, verdict: Verdict, prompt: Verdict | None) -> tuple[str, str]:
        """Why a judged (or empty) sample has no value: its prompt could not be judged, or the verdict says
        nothing about refusal."""
        if prompt is not None and not prompt.ok:
            return prompt.reason or INVALID_INPUT, f"its prompt could not be judged: {prompt.error}"
        if verdict.empty:
            return INVALID_INPUT, "an empty answer to a prompt whose harm is unknown"
        return UNPARSEABLE, "the verdict has no Refusal line, so over-refusal cannot be told apart"


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
        empty_value: an empty answer's value: ``"refusal"`` (default: valued as a refusal, ``min(refusal_value,
            H)``), a number or ``None``; an unsafe reasoning makes it ``min(unsafe_value, H)``.
        thinking, no_answer_value, failure_value, on_error, name, metric_prefix: as in :class:`SafetyReward`.
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
        empty_value: float | str | None = "refusal",
        no_answer_value: float | None = None,
        failure_value: float | None = None,
        on_error: str = "skip",
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

    def _value(self, v: Verdict, h: float | None) -> float | None:
        caps = {"unsafe_cap": self.unsafe_value, "refusal_cap": self.refusal_value}
        unsafe_reasoning = _reasoning_unsafe(v, self.controversial) is not None
        if v.empty:
            if unsafe_reasoning:
                return hybrid_value(True, False, h, **caps)
            if self.empty_value == "refusal":
                return hybrid_value(False, True, h, **caps)
            return self.empty_value  # type: ignore[return-value]
        if v.answer_missing:
            if self.no_answer_value is None:
                return None
            return (
                min(self.no_answer_value, hybrid_value(True, False, h, **caps))
                if unsafe_reasoning
                else (self.no_answer_value)
            )
        return hybrid_value(is_unsafe(v, self.controversial), bool(v.refusal), h, **caps)

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
        counts: Counter[str] = Counter()
        values: list[float | None] = []
        for i, (v, h) in enumerate(zip(verdicts, scores, strict=True)):
            h = None if h is None else float(h)
            if v.answer_missing and self.no_answer_value is None:
                values.append(self._failed(i, NO_ANSWER, v.error, counts))
            elif not v.ok and not v.empty and not v.answer_missing:
                values.append(self._failed(i, v.reason or UNPARSEABLE, v.error, counts))
            else:
                values.append(self._value(v, h))
        rates = metrics.verdict_items(verdicts, prefix=self.metric_prefix, categories=RESPONSE_CATEGORIES)
        rates[metrics.metric_name(self.metric_prefix, metrics.REFUSAL_RATE)] = [
            float(bool(v.refusal)) for v in verdicts if v.ok and v.refusal is not None
        ]
        self._emit(log_metric, rates, counts, start, len(values))
        emit_columns(log_extra, metrics.verdict_columns(verdicts, self.metric_prefix))
        return values
