"""Dense safety rewards from Qwen3Guard-Stream: ``TokenSafetyPenalty``.

``TokenSafetyPenalty`` follows the dense-reward contract (:class:`~guard_reward.types.DenseRewards`): called
like a TRL reward function, it returns ``(B, T)`` per-token rewards aligned 1:1 with the policy's
``completion_ids``. When the policy shares the guard's vocabulary (every Qwen3 policy), the policy's own ids
are scored verbatim (``StreamGuard.score_ids``: no decode/re-encode, the identity alignment); otherwise the
decoded text is scored with the guard's tokens and carried onto policy tokens by character offsets
(:mod:`guard_reward.guards.offsets`). Stream's risk is turned into rewards by :mod:`guard_reward.shaping.dense`
(``first_violation`` by default). Tokens the guard does not score — a reasoning block when only the answer is
judged, the closing end-of-turn token, tokens without text — get 0.

Fault policy (``on_error="skip"``, the default): a completion the guard cannot score (too long for its context,
ids it can neither embed nor read as text, non-finite risk, a malformed sample, or a reasoning block cut off
before ``</think>`` under ``thinking="answer"``) gets no signal: its whole row of the mask is False (a row
whose completion has tokens but whose mask is all False is a sample without signal, like a scalar ``None``).
It is counted per reason (``guard/stream_failures/<reason>``) and logged once per reason with an example.
``on_error="raise"`` raises a :class:`~guard_reward.faults.SampleError` instead (a cut-off reasoning block is a
fact about the completion and is never raised). Ids past the guard's embedding table make that one row fall
back to the text path (decode, score the text, align by offsets).

Agent trajectories (a ``tool_mask``: TRL's ``tools=`` loop, verl's ``response_mask``): the completion
interleaves the policy's turns with tool results. Only the policy's tokens are read: each of its turns is
scored as the last assistant turn of the conversation before it (the prompt, its earlier turns, and a user
turn of ``<tool_response>`` blocks per tool result), so the guard reads tool-call arguments as the policy's
words and never reads a tool's text as such. By default the tool results are shown empty (``tool_context``):
Stream's risk is causal and conditioned on its context, and a tiny trained Stream guard put p(Unsafe) = 1.0
on every token of a benign answer after a tool result holding an unsafe word (0.0 with the result hidden), so
the policy would be penalised for what the tool said. Harm that needs the tool's text to be seen is the
scalar Gen reward's to judge. Tool tokens get reward 0 and are outside the mask; a first violation is
searched turn by turn (a debounced pair never straddles a tool result) and reported in policy tokens.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from guard_reward.faults import IDS_OUTSIDE_VOCABULARY, INVALID_INPUT, check_on_error
from guard_reward.guards.debounce import Debouncer, token_levels
from guard_reward.guards.offsets import align_values, guard_index_for_policy, token_char_offsets
from guard_reward.guards.remote import RemoteStreamGuard
from guard_reward.rewards import metrics
from guard_reward.rewards.inputs import GuardHandle, check_name, load_stream, response_conversations
from guard_reward.rewards.turns import check_tool_mask, scoring_units
from guard_reward.shaping.dense import SHAPING_MODES, controversial_weight, shape_dense, unsafe_risk
from guard_reward.shaping.scalar import finite_number
from guard_reward.types import DenseRewards, TokenRisk
from guard_reward.wire import SHAPING_FIELDS

#: A batch as the cache compares it: ``(prompts, completion ids, tool mask)``.
_BatchKey = tuple[list[Any], list[list[int]], list[list[bool]] | None]
#: Which token of the first debounced Unsafe pair carries the hard first-violation penalty.
HARD_POSITIONS: tuple[str, ...] = ("first", "second")
#: What shaping reads of guard token ids scored as they are: the three levels (the risk and the debounced flag).
_IDS_FIELDS = ("p_safe", "p_unsafe", "p_controversial")


def _wire_fields(guard: Any, text: bool) -> dict[str, Any]:
    """``score``/``score_ids`` keywords asking a served guard for only the per-token fields shaping reads (12 or,
    with the offsets text needs, 28 of 72 bytes a token), unless its owner chose the fields; a local guard computes
    every field anyway."""
    if isinstance(guard, RemoteStreamGuard) and guard.fields is None:
        return {"fields": SHAPING_FIELDS if text else _IDS_FIELDS}
    return {}


class TokenSafetyPenalty(metrics.CountedReward):
    """Per-token safety penalties from Qwen3Guard-Stream, aligned to the policy's ``completion_ids``.

    Args:
        stream: a ``StreamGuard`` or a Stream checkpoint (hub id or folder), loaded on first use with
            ``guard_kwargs``.
        shaping: ``"first_violation"`` (default; the penalty lands where the response became unsafe),
            ``"prob"`` (``−risk_t`` on every token) or ``"threshold"`` (hinge above ``threshold``).
        hard: with ``first_violation``, put ``−coef`` on one token of the first debounced Unsafe pair (see
            ``hard_position``) instead of the soft ``−Δ`` running-max form.
        hard_position: ``"first"`` (default: the first token of the pair, the one that made the answer
            unsafe) or ``"second"`` (where the debounced flag fires, the official stream's stopping point).
            Also the position reported as ``first_violation_pos``.
        coef: scale of the penalty; clip: bound on each token's penalty (``None``: none).
        controversial: ``"strict"`` (Controversial counts as Unsafe), ``"loose"``, or a weight in [0, 1] on
            ``p(Controversial)``; also picks the debounce policy (strict when the weight is > 0).
        threshold: the hinge of ``"threshold"``.
        thinking: Stream's ``"answer"`` (reasoning not scored) or ``"include"`` (reasoning scored too).
        policy_tokenizer: the policy's tokenizer; ``DenseGRPOTrainer`` binds it (:meth:`bind_tokenizer`).
        mixed_pairs: debounce an ``Unsafe, Controversial`` pair too (the report's wording).
        on_error: ``"skip"`` (a completion that cannot be scored gets no signal, counted) or ``"raise"``.
        tool_context: with a ``tool_mask``, show the guard the tool results' text before the turns that follow
            them (default False: each result is an empty ``<tool_response>`` block). Stream's risk is causal
            and conditioned on the context, so an unsafe tool result would raise the risk of every later
            policy token, penalising the policy for what the tool said.
        name: the reward's ``__name__``; metric_prefix: prefix of the logged metrics.

    ``stats`` counts ``calls``, ``samples``, ``failures``, ``empty``, ``seconds`` and the rows scored by
    ``identity`` (the policy's ids) or ``aligned`` (text and offsets).
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
        hard_position: str = "first",
        on_error: str = "skip",
        tool_context: bool = False,
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
        if not 0.0 <= finite_number("threshold", threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if clip is not None and finite_number("clip", clip) <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        if finite_number("coef", coef) < 0:
            raise ValueError(f"coef must be a number >= 0, got {coef!r}")
        if thinking not in ("answer", "include"):
            raise ValueError(f"thinking={thinking!r} is not accepted; use 'answer' or 'include'")
        if hard_position not in HARD_POSITIONS:
            raise ValueError(
                f"hard_position={hard_position!r} is not accepted; use one of {', '.join(HARD_POSITIONS)}"
            )
        self.on_error = check_on_error(on_error)
        if not isinstance(tool_context, bool):
            raise ValueError(f"tool_context must be True or False, got {tool_context!r}")
        self.tool_context = tool_context
        self.hard_position = hard_position
        self.stream = GuardHandle(stream, load_stream, dict(guard_kwargs or {}))
        self.shaping, self.hard, self.coef, self.clip = shaping, bool(hard), float(coef), clip
        self.controversial, self.threshold, self.thinking = controversial, float(threshold), thinking
        self.debounce_mode = "strict" if weight > 0 else "loose"
        self.mixed_pairs = bool(mixed_pairs)
        self.policy_tokenizer = policy_tokenizer
        self.__name__ = check_name(name)
        self.metric_prefix = check_name(metric_prefix)
        # the Stream penalty's own keys: a Gen reward in the same trainer logs guard/failures and guard/seconds
        self.counter = metrics.RewardCounter(self.__name__, metrics.STREAM_FAILURES, metrics.STREAM_SECONDS)
        self._shared: bool | None = None
        self._cache: tuple[_BatchKey, DenseRewards] | None = None

    def __repr__(self) -> str:
        return f"TokenSafetyPenalty(name={self.__name__!r}, shaping={self.shaping!r}, hard={self.hard})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` as the policy's (decides identity vs offset alignment)."""
        self.policy_tokenizer = tokenizer
        self._shared = None

    def _flag(self, risk: TokenRisk) -> int | None:
        """Guard-token index of the first debounced pair (the online rule): its first token, or with
        ``hard_position="second"`` the token where the flag fires."""
        debouncer = Debouncer(self.debounce_mode, mixed_pairs=self.mixed_pairs)  # type: ignore[arg-type]
        for level in token_levels(risk):
            if debouncer.push(level):
                break
        index = debouncer.result[0]
        if index is None:
            return None
        return index - 1 if self.hard_position == "first" else index

    def _check_tokenizer(self) -> None:
        if self.policy_tokenizer is None:
            raise ValueError(
                f"{self.__name__}: no policy tokenizer; pass policy_tokenizer=... or bind_tokenizer() "
                "(DenseGRPOTrainer does this for you)"
            )

    def _rows(self, prompts: Sequence[Any], completions: Sequence[Any], ids: list[list[int]]) -> list[Any]:
        """Per completion: ``(risk (T_i,), scored (T_i,) bool, flag index or None)`` in policy positions, or
        the :class:`TokenRisk` of a sample that could not be scored."""
        guard = self.stream.get()
        if self._shared is None:
            self._shared = bool(guard.shares_tokenizer(self.policy_tokenizer))
        rows: list[Any] = [None] * len(ids)
        by_text = list(range(len(ids)))
        if self._shared:
            limit = int(guard.vocab_rows)
            # ids past the guard's embedding table: that row falls back to the text path
            by_ids = [i for i, row in enumerate(ids) if all(0 <= t < limit for t in row)]
            by_text = [i for i in range(len(ids)) if i not in set(by_ids)]
            self.stats["identity"] += len(by_ids)
            risks = guard.score_ids(
                [prompts[i] for i in by_ids],
                [ids[i] for i in by_ids],
                thinking=self.thinking,
                on_error="skip",
                **_wire_fields(guard, text=False),
            )
            for i, r in zip(by_ids, risks, strict=True):
                rows[i] = r if not r.ok else self._identity_row(r, len(ids[i]))
        if by_text:
            self.stats["aligned"] += len(by_text)
            for i, row in zip(
                by_text, self._text_rows(guard, prompts, completions, ids, by_text), strict=True
            ):
                rows[i] = row
        return rows

    def _identity_row(self, r: TokenRisk, n: int) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        risk = torch.zeros(n)
        scored = torch.zeros(n, dtype=torch.bool)
        start, end = r.span  # type: ignore[misc]
        risk[start:end] = unsafe_risk(r.p_unsafe.float(), r.p_controversial.float(), self.controversial)
        scored[start:end] = True
        flag = self._flag(r)
        return risk, scored, None if flag is None else start + flag

    def _text_rows(
        self,
        guard: Any,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        ids: list[list[int]],
        which: list[int],
    ) -> list[Any]:
        """Decode with the policy's tokenizer, score the text, carry the risk onto policy tokens by offsets."""
        decoded: dict[int, tuple[str, torch.Tensor]] = {}
        rows: dict[int, Any] = {}
        for i in which:
            try:
                decoded[i] = token_char_offsets(self.policy_tokenizer, ids[i])
            except (IndexError, KeyError, TypeError, ValueError, OverflowError) as exc:
                rows[i] = TokenRisk.failed(
                    IDS_OUTSIDE_VOCABULARY,
                    f"completion {i}: the policy tokenizer cannot decode its ids ({exc})",
                    tuple(guard.category_names),
                )
        todo = [i for i in which if i in decoded]
        plain = [
            decoded[i][0]
            if isinstance(completions[i], str)
            else [{"role": "assistant", "content": decoded[i][0]}]
            for i in todo
        ]
        conversations = response_conversations([prompts[i] for i in todo], plain)
        risks = guard.score(
            conversations, thinking=self.thinking, on_error="skip", **_wire_fields(guard, text=True)
        )
        for i, r in zip(todo, risks, strict=True):
            if not r.ok:
                rows[i] = r
                continue
            policy_offsets = decoded[i][1]
            value = unsafe_risk(r.p_unsafe.float(), r.p_controversial.float(), self.controversial)
            risk, valid = align_values(value, r.offsets, policy_offsets, fill=0.0)
            scored = valid & (policy_offsets[:, 1] > policy_offsets[:, 0])  # tokens without text: not scored
            flag = self._flag(r)
            policy_flag = None
            if flag is not None:
                reached = (guard_index_for_policy(r.offsets, policy_offsets) >= flag) & scored
                policy_flag = int(reached.nonzero()[0, 0]) if bool(reached.any()) else None
            rows[i] = (risk * scored, scored, policy_flag)
        return [rows[i] for i in which]

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        tool_mask: Any = None,
        **kwargs: Any,
    ) -> DenseRewards:
        """``(B, T)`` rewards and mask aligned to ``completion_ids``.

        ``tool_mask`` (TRL's, or verl's ``response_mask``; a list of 0/1 rows or a ``(B, T)`` tensor): 1 on the
        policy's own tokens, 0 on tool results. Each policy turn is then scored as an assistant turn in the
        context of the conversation before it (tool results as context, never as the policy's words); tool
        tokens get no reward and are outside the mask; ``first_violation_pos`` counts policy tokens only.
        """
        ids, keep = self._inputs(prompts, completions, completion_ids, tool_mask)
        # The same batch again (e.g. as dense and as folded scalar) is answered from the cache, already logged;
        # the key is compared exactly, element by element (the same objects compare at once).
        key = (list(prompts), ids, keep)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        start = time.perf_counter()
        self._check_tokenizer()
        where, u_prompts, u_completions, u_ids = scoring_units(
            self.policy_tokenizer, prompts, completions, ids, keep, tool_text=self.tool_context
        )
        risk, scored, flags, failed = _place(where, self._rows(u_prompts, u_completions, u_ids), ids)
        batch: Counter[str] = Counter()
        mask, judged, policy_flags = self._masks(ids, keep, risk, scored, flags, failed, batch)
        hard_flags = flags if self.hard else None
        d = shape_dense(risk, scored, self.shaping, coef=self.coef, threshold=self.threshold, clip=self.clip,
                        flag_index=hard_flags)  # fmt: skip
        out = DenseRewards(d.float(), mask)
        seconds = time.perf_counter() - start
        empty = [float(not bool(scored[i].any())) for i in range(len(ids)) if judged[i]]
        rates = metrics.token_items(risk, scored, policy_flags, prefix=self.metric_prefix, rows=judged)
        rates[metrics.metric_name(self.metric_prefix, metrics.TOKEN_EMPTY_RATE)] = empty
        self.counter.emit(log_metric, self.metric_prefix, rates=rates, batch=batch, samples=len(ids),
                          elapsed=seconds, empty=int(sum(empty)), seconds=seconds)  # fmt: skip
        metrics.emit_columns(
            log_extra,
            {f"{self.metric_prefix}_stream_flag": [None if f < 0 else int(f) for f in policy_flags]},
        )
        self._cache = (key, out)
        return out

    def _inputs(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any, tool_mask: Any
    ) -> tuple[list[list[int]], list[list[bool]] | None]:
        """The completion ids as lists of ints, and the checked tool mask (``None`` without one)."""
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
        keep = check_tool_mask(tool_mask, [len(r) for r in ids], name=f"{self.__name__}: tool_mask")
        return ids, keep

    def _masks(
        self,
        ids: list[list[int]],
        keep: list[list[bool]] | None,
        risk: torch.Tensor,
        scored: torch.Tensor,
        flags: torch.Tensor,
        failed: dict[int, TokenRisk],
        batch: Counter[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reward mask ``(B, T)`` (the policy's own tokens of every sample with signal), the samples with
        signal ``(B,)`` and the first flags counted in policy tokens ``(B,)`` (``-1``: none). A failed sample
        is counted (or raised, :meth:`~guard_reward.rewards.metrics.RewardCounter.fail`) and its rows of
        ``risk``, ``scored`` and ``flags`` are cleared in place."""
        b, t = scored.shape
        mask = torch.zeros(b, t, dtype=torch.bool)
        judged = torch.zeros(b, dtype=torch.bool)
        policy_flags = torch.full((b,), -1, dtype=torch.long)
        for i in range(b):
            if i in failed:
                message = f"completion {i}: {failed[i].error}"
                self.counter.fail(failed[i].reason or INVALID_INPUT, message, batch, self.on_error)
                risk[i], scored[i], flags[i] = 0.0, False, -1
                continue
            own = torch.tensor(keep[i] if keep is not None else [True] * len(ids[i]), dtype=torch.bool)
            mask[i, : len(ids[i])] = own
            judged[i] = True
            if flags[i] >= 0:
                policy_flags[i] = int(own[: int(flags[i])].sum())
        return mask, judged, policy_flags


def _place(
    where: list[tuple[int, int]], unit_rows: list[Any], ids: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, TokenRisk]]:
    """The scored units put back into their samples: risk ``(B, T)``, scored ``(B, T)`` bool, the first flag
    of each sample in completion tokens ``(B,)`` (``-1``: none), and per failed sample its first failure (no
    signal: the whole sample stays out of the mask)."""
    b, t = len(ids), max((len(r) for r in ids), default=0)
    risk = torch.zeros(b, t)
    scored = torch.zeros(b, t, dtype=torch.bool)
    flags = torch.full((b,), -1, dtype=torch.long)
    failed: dict[int, TokenRisk] = {}
    for (i, offset), row in zip(where, unit_rows, strict=True):
        if isinstance(row, TokenRisk):
            failed.setdefault(i, row)
            continue
        r, s, f = row
        risk[i, offset : offset + len(r)] = r
        scored[i, offset : offset + len(s)] = s
        if f is not None and flags[i] < 0:
            flags[i] = offset + f
    return risk, scored, flags, failed
