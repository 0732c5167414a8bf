"""Dense safety rewards from Qwen3Guard-Stream: ``TokenSafetyPenalty`` and its sequence-level sum.

``TokenSafetyPenalty`` follows the dense-reward contract (:class:`~guard_reward.types.DenseRewards`): called
like a TRL reward function, it returns ``(B, T)`` per-token rewards aligned 1:1 with the policy's
``completion_ids``. When the policy shares the guard's vocabulary (every Qwen3 policy), the policy's own ids
are scored verbatim (``StreamGuard.score_ids``: no decode/re-encode, the identity alignment); otherwise the
decoded text is scored with the guard's tokens and carried onto policy tokens by character offsets
(:mod:`guard_reward.alignment`). Stream's risk is turned into rewards by :mod:`guard_reward.shaping.dense`
(``first_violation`` by default). Tokens the guard does not score — a reasoning block when only the answer is
judged, the closing end-of-turn token, tokens without text — get 0.

``SummedTokenReward`` folds it into one scalar per completion (the sum of its per-token rewards) for trainers
that are sequence-level only, such as RLOO. With ``first_violation`` shaping the sum is ``−coef · max_t
risk_t``: the worst risk the response reached.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from guard_reward import metrics
from guard_reward.alignment import align_values, guard_index_for_policy, token_char_offsets
from guard_reward.guards.debounce import Debouncer, token_levels
from guard_reward.rewards.base import GuardHandle, check_name, emit, emit_columns, response_conversations
from guard_reward.shaping.dense import SHAPING_MODES, controversial_weight, shape_dense, unsafe_risk
from guard_reward.types import DenseRewards, TokenRisk

logger = logging.getLogger(__name__)


def _load_stream(path: str, **kw: Any) -> Any:
    from guard_reward.guards.stream import StreamGuard

    return StreamGuard.from_pretrained(path, **kw)


class TokenSafetyPenalty:
    """Per-token safety penalties from Qwen3Guard-Stream, aligned to the policy's ``completion_ids``.

    Args:
        stream: a ``StreamGuard`` or a Stream checkpoint (hub id or folder), loaded on first use with
            ``guard_kwargs``.
        shaping: ``"first_violation"`` (default; the penalty lands where the response became unsafe),
            ``"prob"`` (``−risk_t`` on every token) or ``"threshold"`` (hinge above ``threshold``).
        hard: with ``first_violation``, put ``−coef`` on the token where the debounced flag fires instead of
            the soft ``−Δ`` running-max form.
        coef: scale of the penalty; clip: bound on each token's penalty (``None``: none).
        controversial: ``"strict"`` (Controversial counts as Unsafe), ``"loose"``, or a weight in [0, 1] on
            ``p(Controversial)``; also picks the debounce policy (strict when the weight is > 0).
        threshold: the hinge of ``"threshold"``.
        thinking: Stream's ``"answer"`` (reasoning not scored) or ``"include"`` (reasoning scored too).
        policy_tokenizer: the policy's tokenizer; ``DenseGRPOTrainer`` binds it (:meth:`bind_tokenizer`).
        mixed_pairs: debounce an ``Unsafe, Controversial`` pair too (the report's wording).
        name: the reward's ``__name__``; metric_prefix: prefix of the logged metrics.
    """

    def __init__(
        self,
        stream: Any,
        *,
        shaping: str = "first_violation",
        hard: bool = False,
        coef: float = 1.0,
        controversial: str | float = "strict",
        threshold: float = 0.5,
        clip: float | None = None,
        thinking: str = "answer",
        policy_tokenizer: Any = None,
        mixed_pairs: bool = False,
        name: str = "guard_tokens",
        metric_prefix: str = metrics.DEFAULT_PREFIX,
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if shaping not in SHAPING_MODES:
            raise ValueError(f"shaping={shaping!r} is not accepted; use one of {', '.join(SHAPING_MODES)}")
        if hard and shaping != "first_violation":
            raise ValueError("hard=True applies to shaping='first_violation' only")
        weight = controversial_weight(controversial)
        if hard and controversial not in ("strict", "loose"):
            raise ValueError("hard=True needs controversial 'strict' or 'loose' (the debounce policy)")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0:
            raise ValueError(f"coef must be a number >= 0, got {coef!r}")
        if thinking not in ("answer", "include"):
            raise ValueError(f"thinking={thinking!r} is not accepted; use 'answer' or 'include'")
        self.stream = GuardHandle(stream, _load_stream, dict(guard_kwargs or {}))
        self.shaping, self.hard, self.coef, self.clip = shaping, bool(hard), float(coef), clip
        self.controversial, self.threshold, self.thinking = controversial, float(threshold), thinking
        self.debounce_mode = "strict" if weight > 0 else "loose"
        self.mixed_pairs = bool(mixed_pairs)
        self.policy_tokenizer = policy_tokenizer
        self.__name__ = check_name(name)
        self.metric_prefix = check_name(metric_prefix)
        self.stats: dict[str, float] = {"calls": 0, "samples": 0, "identity": 0, "aligned": 0, "seconds": 0.0}
        self._shared: bool | None = None
        self._cache: tuple[str, DenseRewards] | None = None

    def __repr__(self) -> str:
        return f"TokenSafetyPenalty(name={self.__name__!r}, shaping={self.shaping!r}, hard={self.hard})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` as the policy's (decides identity vs offset alignment)."""
        self.policy_tokenizer = tokenizer
        self._shared = None

    def _flag(self, risk: TokenRisk) -> int | None:
        """Guard-token index where the debounced flag fires (the online rule: the first flagging pair)."""
        debouncer = Debouncer(self.debounce_mode, mixed_pairs=self.mixed_pairs)  # type: ignore[arg-type]
        for level in token_levels(risk):
            if debouncer.push(level):
                break
        return debouncer.result[0]

    def _rows(self, prompts: Sequence[Any], completions: Sequence[Any], ids: list[list[int]]) -> list[tuple]:
        """Per completion: ``(risk (T_i,), scored (T_i,) bool, flag index or None)`` in policy positions."""
        guard = self.stream.get()
        if self.policy_tokenizer is None:
            raise ValueError(
                f"{self.__name__}: no policy tokenizer; pass policy_tokenizer=... or bind_tokenizer() "
                "(DenseGRPOTrainer does this for you)"
            )
        if self._shared is None:
            self._shared = bool(guard.shares_tokenizer(self.policy_tokenizer))
        rows = []
        if self._shared:
            self.stats["identity"] += len(ids)
            for row_ids, r in zip(ids, guard.score_ids(prompts, ids, thinking=self.thinking), strict=True):
                risk = torch.zeros(len(row_ids))
                scored = torch.zeros(len(row_ids), dtype=torch.bool)
                start, end = r.span
                risk[start:end] = unsafe_risk(
                    r.p_unsafe.float(), r.p_controversial.float(), self.controversial
                )
                scored[start:end] = True
                flag = self._flag(r)
                rows.append((risk, scored, None if flag is None else start + flag))
            return rows
        self.stats["aligned"] += len(ids)
        texts, offsets = zip(*(token_char_offsets(self.policy_tokenizer, row) for row in ids), strict=True)
        plain = [
            t if isinstance(c, str) else [{"role": "assistant", "content": t}]
            for t, c in zip(texts, completions, strict=True)
        ]
        risks = guard.score(response_conversations(prompts, plain), thinking=self.thinking)
        for r, policy_offsets in zip(risks, offsets, strict=True):
            value = unsafe_risk(r.p_unsafe.float(), r.p_controversial.float(), self.controversial)
            risk, valid = align_values(value, r.offsets, policy_offsets, fill=0.0)
            scored = valid & (policy_offsets[:, 1] > policy_offsets[:, 0])  # tokens without text: not scored
            flag = self._flag(r)
            policy_flag = None
            if flag is not None:
                reached = (guard_index_for_policy(r.offsets, policy_offsets) >= flag) & scored
                policy_flag = int(reached.nonzero()[0, 0]) if bool(reached.any()) else None
            rows.append((risk * scored, scored, policy_flag))
        return rows

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **kwargs: Any,
    ) -> DenseRewards:
        if completion_ids is None:
            raise ValueError(
                f"{self.__name__} needs completion_ids (TRL passes them to every reward function)"
            )
        if len(completion_ids) != len(prompts) or len(completions) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts, {len(completions)} completions and "
                f"{len(completion_ids)} completion_ids; one of each per sample"
            )
        ids = [
            [int(i) for i in (row.tolist() if isinstance(row, torch.Tensor) else row)]
            for row in completion_ids
        ]
        key = json.dumps([prompts, ids], default=str)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]  # the same batch again (e.g. as dense and as folded scalar): already logged
        start = time.perf_counter()
        rows = self._rows(prompts, completions, ids)
        b, t = len(ids), max((len(r) for r in ids), default=0)
        risk = torch.zeros(b, t)
        scored = torch.zeros(b, t, dtype=torch.bool)
        mask = torch.zeros(b, t, dtype=torch.bool)
        flags = torch.full((b,), -1, dtype=torch.long)
        for i, (r, s, f) in enumerate(rows):
            risk[i, : len(r)] = r
            scored[i, : len(s)] = s
            mask[i, : len(ids[i])] = True
            if f is not None:
                flags[i] = f
        hard_flags = flags if self.hard else None
        d = shape_dense(
            risk,
            scored,
            self.shaping,
            coef=self.coef,
            threshold=self.threshold,
            clip=self.clip,
            flag_index=hard_flags,
        )
        out = DenseRewards(d.float(), mask)
        seconds = time.perf_counter() - start
        self.stats["calls"] += 1
        self.stats["samples"] += b
        self.stats["seconds"] += seconds
        summary = metrics.token_metrics(risk, scored, flags, prefix=self.metric_prefix)
        summary[metrics.metric_name(self.metric_prefix, "stream_seconds")] = seconds
        emit(log_metric, summary)
        emit_columns(
            log_extra, {f"{self.metric_prefix}_stream_flag": [None if f < 0 else int(f) for f in flags]}
        )
        self._cache = (key, out)
        return out


class SummedTokenReward:
    """A dense reward folded into one scalar per completion: the sum of its per-token rewards.

    For sequence-level trainers (RLOO), or to give GRPO's group normalisation the dense signal as well.
    Args: ``dense`` a dense reward (e.g. :class:`TokenSafetyPenalty`); ``name`` (default ``<dense>_sum``).
    """

    def __init__(self, dense: Callable[..., DenseRewards], name: str | None = None) -> None:
        if not callable(dense):
            raise TypeError(f"dense must be a dense reward callable, got {type(dense).__name__}")
        self.dense = dense
        self.__name__ = check_name(name or f"{getattr(dense, '__name__', type(dense).__name__)}_sum")

    def bind_tokenizer(self, tokenizer: Any) -> None:
        bind = getattr(self.dense, "bind_tokenizer", None)
        if callable(bind):
            bind(tokenizer)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rewards, mask = self.dense(prompts=prompts, completions=completions, **kwargs)
        return [float(x) for x in (rewards * mask).sum(dim=1)]
