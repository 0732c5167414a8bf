"""Safety metrics: their names, and per-batch summaries of verdicts and per-token risk.

Rewards call these on every batch and hand the result to TRL's ``log_metric`` and ``log_extra`` (per-sample
columns of the completions table). The summaries are pure functions of the guard's outputs.

How they reach the logs (:func:`emit_metrics`). TRL 1.16 flushes each metric once per step as (sum of every
``log_metric`` call's value over all ranks) / (number of calls over all ranks). So:

* a **rate or mean** is logged with one call per counted item (0/1, or the item's value): the result is the
  rate over the global batch, weighted by each rank's own count (a rank with one benign prompt weighs one,
  not as much as a rank with fifteen);
* a **total** (``failures``, ``failures/<reason>``) is logged with one call per rank, valued ``local count ×
  number of processes``, so that the mean over ranks is the global sum; every reason is logged on every call,
  also at 0, so that every rank contributes to every key;
* ``seconds`` is one call per rank: the mean over ranks.

Rates are over the samples the guard could judge (failures are reported separately, as totals), and a rate
whose denominator is empty is not logged at all — e.g. ``refusal_rate_benign`` in a batch without benign
prompts — so it neither drags the average towards 0 nor counts towards it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from guard_reward.faults import NO_ANSWER, REASONS, SampleError
from guard_reward.rewards.inputs import trainer_of
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "guard"

#: Sequence-level metrics (Gen verdicts), relative to the prefix.
SAFE_RATE = "safe_rate"
CONTROVERSIAL_RATE = "controversial_rate"
UNSAFE_RATE = "unsafe_rate"
REFUSAL_RATE_BENIGN = "refusal_rate_benign"
REFUSAL_RATE_HARMFUL = "refusal_rate_harmful"
REFUSAL_RATE = "refusal_rate"  # the hybrid reward, which does not know the prompts' harm
P_UNSAFE_MEAN = "p_unsafe_mean"
FAILURES = "failures"  # "<prefix>/failures" and "<prefix>/failures/<reason>": totals over ranks
EMPTY_RATE = "empty_rate"  # share of responses whose answer was empty (the guard was not asked)
SECONDS = "seconds"
#: Multi-turn, tool-calling completions (see :func:`turn_items`).
TOOL_CALL_RATE = "tool_call_rate"
UNSAFE_TURN_RATE = "unsafe_turn_rate"
UNSAFE_TOOL_CALL_RATE = "unsafe_tool_call_rate"
TRUNCATED_RATE = "truncated_rate"
CATEGORY = "category"  # "<prefix>/category/<slug>": share of judged responses flagged with that category
#: Token-level metrics (Stream risk).
FIRST_VIOLATION_POS = "first_violation_pos"
STREAM_FLAG_RATE = "stream_flag_rate"
TOKEN_P_UNSAFE_MEAN = "token_p_unsafe_mean"
TOKEN_EMPTY_RATE = "stream_empty_rate"  # share of scored completions with no answer token to score
# The Stream penalty's own failure totals: a Gen reward and a Stream penalty both run in one trainer, and two
# rewards logging one key would be averaged by TRL's flush instead of adding up.
STREAM_FAILURES = "stream_failures"
STREAM_SECONDS = "stream_seconds"


def metric_name(prefix: str, key: str) -> str:
    """``"<prefix>/<key>"``."""
    return f"{prefix}/{key}"


def category_slug(category: str) -> str:
    """A metric-safe name: ``"Suicide & Self-Harm"`` -> ``"suicide_self_harm"``."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def num_processes(log_metric: Any) -> int:
    """How many ranks log through ``log_metric``: the trainer's ``accelerator.num_processes`` when
    ``log_metric`` is a trainer's bound method, else the ``torch.distributed`` world size, else 1."""
    trainer = trainer_of(log_metric)
    n = getattr(getattr(trainer, "accelerator", None), "num_processes", None)
    if isinstance(n, int) and n >= 1:
        return n
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def failure_totals(
    counts: Mapping[str, int], prefix: str = DEFAULT_PREFIX, key: str = FAILURES
) -> dict[str, float]:
    """This rank's failure counts: ``<prefix>/<key>`` and ``<prefix>/<key>/<reason>`` for every known reason
    (0 included, so every rank logs every key); ``key`` is ``failures`` (Gen rewards) or ``stream_failures``.
    Log them with :func:`emit_metrics` as totals."""
    unknown = set(counts) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown failure reasons {sorted(unknown)}; known: {', '.join(REASONS)}")
    out = {metric_name(prefix, key): float(sum(counts.values()))}
    for reason in REASONS:
        out[metric_name(prefix, f"{key}/{reason}")] = float(counts.get(reason, 0))
    return out


def emit_metrics(
    log_metric: Callable[[str, float], None] | None,
    rates: Mapping[str, Sequence[float]] | None = None,
    totals: Mapping[str, float] | None = None,
    per_rank: Mapping[str, float] | None = None,
) -> None:
    """Send metrics through TRL's ``log_metric`` so that its flush gives global values (module docstring).

    Args:
        rates: ``{key: per-item values}``; one call per item (an empty list logs nothing).
        totals: ``{key: this rank's count}``; one call valued ``count × num_processes``.
        per_rank: ``{key: value}``; one call (the flush averages it over ranks).
    """
    if log_metric is None:
        return
    world = num_processes(log_metric)
    for key, items in (rates or {}).items():
        for value in items:
            log_metric(key, float(value))
    for key, total in (totals or {}).items():
        log_metric(key, float(total) * world)
    for key, value in (per_rank or {}).items():
        log_metric(key, float(value))


class RewardCounter:
    """Everything one reward counts, and how a call's counts reach the logs.

    A reward keeps one and shows it as ``reward.stats`` (:attr:`totals`) and ``reward.failures`` (this object,
    whose :attr:`counts` are the failures by reason). One call's own failures are a plain ``Counter`` the
    reward passes to :meth:`fail` and :meth:`emit`, so that concurrent calls (verl scores samples in threads)
    never mix their counts.

    Attributes:
        owner: the reward's name, in the log lines.
        totals: lifetime counts: ``calls``, ``samples``, ``failures`` and whatever else the reward counts.
        counts: lifetime failures by reason; the first failure of each reason is logged with an example.
    """

    def __init__(self, owner: str, failures_key: str = FAILURES, seconds_key: str = SECONDS) -> None:
        self.owner = owner
        self.failures_key, self.seconds_key = failures_key, seconds_key
        self.totals: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()

    def fail(self, reason: str, message: str, batch: Counter[str], on_error: str = "skip") -> None:
        """One sample without a value: raised as a :class:`~guard_reward.faults.SampleError` under
        ``on_error="raise"`` (a cut-off reasoning block is a fact about the completion and never is), else
        counted in ``batch`` (this call's) and :attr:`counts`, and logged the first time its reason is seen."""
        if on_error == "raise" and reason != NO_ANSWER:
            raise SampleError(reason, f"{self.owner}: {message}")
        batch[reason] += 1
        self.counts[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning(
                "%s: a sample could not be judged (%s) and gets no signal; further %s failures are only "
                "counted (guard/failures/%s). Example: %.300s",
                self.owner,
                reason,
                reason,
                reason,
                message,
            )

    def total(self) -> int:
        """How many failures were counted, all reasons together."""
        return sum(self.counts.values())

    def emit(
        self,
        log_metric: Callable[[str, float], None] | None,
        prefix: str,
        *,
        rates: Mapping[str, Sequence[float]],
        batch: Counter[str],
        samples: int,
        elapsed: float,
        **counted: float,
    ) -> None:
        """The end of one call: :attr:`totals` gain the call (``calls``, ``samples``, ``failures`` and
        ``counted``), and its metrics are sent (:func:`emit_metrics`): ``rates``, the call's failure totals
        (``<prefix>/<failures_key>[/<reason>]``) and its duration in seconds, ``elapsed``
        (``<prefix>/<seconds_key>``)."""
        self.totals.update(calls=1, samples=samples, failures=sum(batch.values()), **counted)
        emit_metrics(
            log_metric,
            rates=rates,
            totals=failure_totals(batch, prefix, self.failures_key),
            per_rank={metric_name(prefix, self.seconds_key): elapsed},
        )


def verdict_items(
    verdicts: Sequence[Verdict],
    *,
    harmful: Sequence[float | None] | None = None,
    prefix: str = DEFAULT_PREFIX,
    categories: Sequence[str] = (),
) -> dict[str, list[float]]:
    """Per-item values of the sequence-level rates for one batch of response verdicts.

    Args:
        verdicts: one per completion.
        harmful: per completion, whether its prompt is harmful (``1``/``0``, a probability counts as harmful
            when ≥ 0.5, ``None`` unknown); refusal rates count only the samples where it is known.
        prefix: metric prefix.
        categories: category names to report a rate for (every one, also at 0, so curves are continuous);
            empty when the verdicts carry no categories (no decoding).

    Returns:
        ``{"<prefix>/safe_rate": [0/1 per judged verdict], ...}``: level rates, ``p_unsafe_mean`` and
        ``category/*`` over judged verdicts, ``empty_rate`` over all verdicts, refusal rates over judged
        verdicts with a refusal answer and a known prompt harm.
    """
    ok = [v for v in verdicts if v.ok]
    out: dict[str, list[float]] = {metric_name(prefix, EMPTY_RATE): [float(v.empty) for v in verdicts]}
    for key, level in ((SAFE_RATE, "Safe"), (CONTROVERSIAL_RATE, "Controversial"), (UNSAFE_RATE, "Unsafe")):
        out[metric_name(prefix, key)] = [float(v.level == level) for v in ok]
    out[metric_name(prefix, P_UNSAFE_MEAN)] = [float(v.probs.get("Unsafe", 0.0)) for v in ok]
    for category in categories:
        out[metric_name(prefix, f"{CATEGORY}/{category_slug(category)}")] = [
            float(category in v.categories) for v in ok
        ]
    if harmful is not None:
        if len(harmful) != len(verdicts):
            raise ValueError(f"harmful has {len(harmful)} entries for {len(verdicts)} verdicts")
        for key, want in ((REFUSAL_RATE_BENIGN, False), (REFUSAL_RATE_HARMFUL, True)):
            out[metric_name(prefix, key)] = [
                float(bool(v.refusal))
                for v, h in zip(verdicts, harmful, strict=True)
                if v.ok and v.refusal is not None and h is not None and (h >= 0.5) == want
            ]
    return {key: values for key, values in out.items() if values}


def turn_items(
    verdicts: Sequence[Verdict],
    truncated: Sequence[bool | None] | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, list[float]]:
    """Per-item values of the multi-turn rates for one batch of completion verdicts (each carrying its
    ``turns`` and ``tool_calls``, as the scalar rewards return them).

    Returns:
        ``tool_call_rate`` (per completion whose turns are known: 1 if any turn called a tool),
        ``unsafe_turn_rate`` (per judged assistant turn: 1 if Unsafe), ``unsafe_tool_call_rate`` (per judged
        turn that called a tool: 1 if Unsafe) and ``truncated_rate`` (per completion whose truncation is
        known: 1 if it did not end with an end-of-sequence token); empty lists are left out.
    """
    with_turns = [v for v in verdicts if v.turns]
    judged = [(t, n) for v in with_turns for t, n in zip(v.turns, v.tool_calls, strict=True) if t.ok]
    out = {
        metric_name(prefix, TOOL_CALL_RATE): [float(any(v.tool_calls)) for v in with_turns],
        metric_name(prefix, UNSAFE_TURN_RATE): [float(t.level == "Unsafe") for t, _ in judged],
        metric_name(prefix, UNSAFE_TOOL_CALL_RATE): [float(t.level == "Unsafe") for t, n in judged if n],
        metric_name(prefix, TRUNCATED_RATE): [float(t) for t in truncated or () if t is not None],
    }
    return {key: values for key, values in out.items() if values}


def emit_columns(log_extra: Callable[[str, list], None] | None, columns: Mapping[str, Sequence[Any]]) -> None:
    """Send per-sample columns (``{column: one value per sample}``) through TRL's ``log_extra``, which adds
    them to the completions table."""
    if log_extra is not None:
        for column, values in columns.items():
            log_extra(column, list(values))


def verdict_columns(verdicts: Sequence[Verdict], prefix: str = DEFAULT_PREFIX) -> dict[str, list]:
    """Per-sample columns for the completions table: level, categories (comma-joined) and refusal; and, when
    a completion has several assistant turns, every turn's level (``"Safe,Unsafe"``).

    ``None`` where the guard gave no answer; the category column is ``""`` for a judged response without one.
    """
    columns = {
        f"{prefix}_level": [v.level for v in verdicts],
        f"{prefix}_category": [", ".join(v.categories) if v.ok else None for v in verdicts],
        f"{prefix}_refusal": [v.refusal for v in verdicts],
    }
    if any(len(v.turns) > 1 for v in verdicts):  # the level of every assistant turn, "-" where none
        columns[f"{prefix}_turns"] = [",".join(t.level or "-" for t in v.turns) for v in verdicts]
    return columns


def token_items(
    risk: torch.Tensor,
    mask: torch.Tensor,
    flag_index: torch.Tensor,
    *,
    prefix: str = DEFAULT_PREFIX,
    rows: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """Per-item values of the token-level rates for one batch of per-token risk.

    Args:
        risk: ``(B, T)`` per-token unsafe probability (after the Controversial policy).
        mask: ``(B, T)`` bool, the scored tokens.
        flag_index: ``(B,)`` long, the token where the response was flagged, ``−1`` if never.
        rows: ``(B,)`` bool, the responses that were scored (default: all); the others count nowhere.

    Returns:
        ``stream_flag_rate`` (0/1 per scored response), ``token_p_unsafe_mean`` (one value per scored token)
        and ``first_violation_pos`` (the flag index of each flagged response); empty lists are left out.
    """
    mask = mask.to(torch.bool)
    rows = torch.ones(risk.shape[0], dtype=torch.bool) if rows is None else rows.to(torch.bool)
    flagged = (flag_index >= 0) & rows
    out = {
        metric_name(prefix, STREAM_FLAG_RATE): flagged[rows].float().tolist(),
        metric_name(prefix, TOKEN_P_UNSAFE_MEAN): risk[mask & rows[:, None]].float().tolist(),
        metric_name(prefix, FIRST_VIOLATION_POS): flag_index[flagged].float().tolist(),
    }
    return {key: values for key, values in out.items() if values}


def curve_keys(logs: dict[str, float], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The keys of a trainer log entry that belong on the safety curves: the guard metrics, the rewards, KL
    and the mean completion length. Evaluation keys (``eval_…``) are kept too."""
    wanted = (f"{prefix}/", "reward", "rewards/", "kl", "completions/mean_length")
    keep = []
    for key in logs:
        bare = key.removeprefix("eval_")
        if bare.startswith(wanted):
            keep.append(key)
    return keep


class CountedReward:
    """What every reward that keeps a :class:`RewardCounter` as ``self.counter`` shows of it."""

    __name__: str
    counter: RewardCounter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

    @property
    def stats(self) -> Counter[str]:
        """Lifetime counts: ``calls``, ``samples``, ``failures`` and the reward's own (its class docstring)."""
        return self.counter.totals

    @property
    def failures(self) -> RewardCounter:
        """The reward's counter; its ``counts`` are the failures by reason."""
        return self.counter
