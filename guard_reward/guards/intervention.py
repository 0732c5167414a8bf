"""Dynamic intervention: stop (or end) a generated sequence once Qwen3Guard-Stream flags it.

:class:`GuardStoppingCriteria` is a transformers ``StoppingCriteria``. At every generation step it feeds each
running sequence's new token to one batched, KV-cached
:class:`~guard_reward.guards.stream_session.StreamSession` (one guard forward per step for the whole batch,
never a re-run of the context) and applies the official response-level rule online
(:class:`~guard_reward.guards.debounce.Debouncer`): a sequence stops at the token where two consecutive risky
tokens flag it, and the criteria records where and why.

This differs from the official stream demo, which re-runs the guard over the whole growing sequence per token,
and from the technical report's CARE loop (detect, roll back, regenerate), of which this is the "detect" half.

What the guard reads mirrors :meth:`StreamGuard.score_ids`: with ``thinking="answer"`` a reasoning block that
opens with ``<think>`` is withheld until ``</think>`` and only the answer is judged; with ``"include"``
everything after ``<think>`` is judged; newline tokens after ``<think>``/``</think>`` and end-of-turn ids are
never fed. So the recorded per-token risks equal ``score_ids`` on the final completion, and the flag equals
:func:`debounce` of them.

In TRL rollouts (which end a completion at EOS and otherwise keep padding), use ``end_with_eos=True`` and pass
:meth:`GuardStoppingCriteria.generate_kwargs` to ``generate``: a flagged sequence is then closed with EOS on
the next step, so the trainer sees a terminated, cut-short completion.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from guard_reward.guards.debounce import Debouncer, token_levels
from guard_reward.guards.offsets import token_char_offsets
from guard_reward.guards.stream_session import StreamSession
from guard_reward.types import TokenRisk

if TYPE_CHECKING:
    from guard_reward.conversations import Conversation
    from guard_reward.guards.stream import StreamGuard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopRecord:
    """Where the guard flagged a sequence.

    Attributes:
        index: position of the flagging token in the generated tokens (0 = first generated token), or
            ``None``.
        label: ``"Unsafe"`` / ``"Controversial"`` when flagged, else ``"Safe"``.
        fed: how many generated tokens the guard read.
    """

    index: int | None
    label: str
    fed: int


@dataclass
class _Row:
    phase: str = "start"  # start -> (reasoning) -> newlines -> feed ; finished / flagged end it
    include: bool = False
    generated: list[int] = field(default_factory=list)
    feed_start: int | None = None
    risks: list[TokenRisk] = field(default_factory=list)
    debouncer: Debouncer | None = None
    flag: tuple[int, str] | None = None
    finished: bool = False


class GuardStoppingCriteria(StoppingCriteria):
    """Stop each sequence of a batch at the guard's debounced flag (module docstring).

    Args:
        guard: the :class:`StreamGuard`; the policy must share its vocabulary.
        prompts: one TRL prompt (string or message list) per sequence, or per prompt when ``generate`` expands
            each prompt into ``num_return_sequences`` consecutive rows. ``None``: the prompt token ids found
            in ``input_ids`` are used as the guard's prefix, which is right only for policies with a Qwen3
            chat template (they must end with ``<|im_start|>assistant\\n``, optionally followed by the empty
            think block). :meth:`begin` sets new prompts for the next ``generate`` call.
        mode, mixed_pairs: the debounce rule (:func:`~guard_reward.guards.debounce.debounce`).
        thinking: ``"answer"`` / ``"include"``; default: the guard's.
        policy_thinks: ``None`` detects a reasoning policy by a first generated ``<think>``; ``True`` treats
            every completion as reasoning until ``</think>`` (templates that put ``<think>`` in the prompt).
        max_new_tokens: room reserved in the guard's window (earlier prompt turns are trimmed for it).
        end_with_eos: instead of stopping a flagged sequence, force EOS as its next token (use with
            :meth:`logits_processor`); ``eos_token_id`` defaults to the guard's ``<|im_end|>``.
        policy_tokenizer: checked with :meth:`StreamGuard.shares_tokenizer` when given.
    """

    def __init__(
        self,
        guard: StreamGuard,
        prompts: Sequence[str | Conversation] | None = None,
        *,
        mode: str = "strict",
        mixed_pairs: bool = False,
        thinking: str | None = None,
        policy_thinks: bool | None = None,
        max_new_tokens: int = 0,
        end_with_eos: bool = False,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        policy_tokenizer: Any = None,
    ) -> None:
        from guard_reward.guards.stream import check_stream_thinking

        if policy_tokenizer is not None and not guard.shares_tokenizer(policy_tokenizer):
            raise ValueError(
                "the policy's tokenizer does not share the guard's vocabulary; GuardStoppingCriteria feeds "
                "the generated ids to the guard as they are"
            )
        Debouncer(mode, mixed_pairs=mixed_pairs)  # validates mode
        self.guard = guard
        self.mode, self.mixed_pairs = mode, mixed_pairs
        self.include = check_stream_thinking(thinking or guard.thinking) == "include"
        self.policy_thinks = policy_thinks
        self.max_new_tokens = max_new_tokens
        self.end_with_eos = end_with_eos
        self.eos_token_id = guard.im_end_id if eos_token_id is None else eos_token_id
        self.pad_token_id = guard.pad_id if pad_token_id is None else pad_token_id
        self.prompts = list(prompts) if prompts is not None else None
        self.session: StreamSession | None = None
        self.rows: list[_Row] = []
        self._prompt_ids: torch.Tensor | None = None
        self._seen = 0
        tok = guard.tokenizer
        self._header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self._empty_think = tok.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
        self._open_think = tok.encode("<think>\n", add_special_tokens=False)

    def begin(self, prompts: Sequence[str | Conversation] | None) -> None:
        """Set the prompts of the next ``generate`` call (``None``: read them from ``input_ids``)."""
        self.prompts = list(prompts) if prompts is not None else None
        self._close()

    # --------------------------------------------------------------------------------------------- results

    @property
    def records(self) -> list[StopRecord]:
        """Per sequence of the last generation: where it was flagged."""
        out = []
        for row in self.rows:
            index, label = row.flag if row.flag is not None else (None, "Safe")
            out.append(StopRecord(index, label, sum(len(r) for r in row.risks)))
        return out

    @property
    def stopped(self) -> torch.Tensor:
        """``(B,)`` bool: which sequences the guard flagged."""
        return torch.tensor([row.flag is not None for row in self.rows], dtype=torch.bool)

    def token_risks(self) -> list[TokenRisk]:
        """Per sequence, the risks the guard read, like :meth:`StreamGuard.score_ids` on the generated ids:
        ``span`` locates them in the generated tokens, ``offsets`` index the decoded generated text."""
        out = []
        for row in self.rows:
            start = row.feed_start if row.feed_start is not None else len(row.generated)
            shift = len(token_char_offsets(self.guard.tokenizer, row.generated[:start])[0])
            risks = [r for r in row.risks if len(r)] or [self._empty()]
            joined = TokenRisk(
                token_ids=torch.cat([r.token_ids for r in risks]),
                offsets=torch.cat([r.offsets for r in risks]).reshape(-1, 2) + shift,
                p_safe=torch.cat([r.p_safe for r in risks]),
                p_unsafe=torch.cat([r.p_unsafe for r in risks]),
                p_controversial=torch.cat([r.p_controversial for r in risks]),
                category_probs=torch.cat([r.category_probs for r in risks]),
                category_names=self.guard.category_names,
                query_probs=risks[0].query_probs,
                query_category_probs=risks[0].query_category_probs,
                truncated=risks[0].truncated,
            )
            out.append(replace(joined, span=(start, start + len(joined))))
        return out

    def _empty(self) -> TokenRisk:
        n_cat = len(self.guard.category_names)
        zero = torch.zeros(0)
        return TokenRisk(
            torch.zeros(0, dtype=torch.long), torch.zeros((0, 2), dtype=torch.long), zero, zero, zero,
            torch.zeros((0, n_cat)), self.guard.category_names,
        )  # fmt: skip

    def logits_processor(self) -> LogitsProcessor:
        """A processor that makes EOS the only choice for sequences flagged at the previous step."""
        return _EndFlagged(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """``stopping_criteria`` (and ``logits_processor`` with ``end_with_eos``) for ``model.generate``."""
        out: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList([self])}
        if self.end_with_eos:
            out["logits_processor"] = LogitsProcessorList([self.logits_processor()])
        return out

    # ---------------------------------------------------------------------------------------------- stepping

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        if self._is_new_generation(input_ids):
            self._start(input_ids)
        new = input_ids[:, self._seen :].tolist()
        self._seen = input_ids.shape[1]
        chunks: list[list[int]] = [[] for _ in self.rows]
        for b, (row, tokens) in enumerate(zip(self.rows, new, strict=True)):
            for t in tokens:
                if row.finished or row.flag is not None:
                    break
                row.generated.append(t)
                if t in self.guard.trailing_ids or t == self.eos_token_id:
                    row.finished = True
                elif self._accept(row, t):
                    if row.feed_start is None:
                        row.feed_start = len(row.generated) - 1
                    chunks[b].append(t)
        if any(chunks):
            assert self.session is not None
            for b, risk in enumerate(self.session.feed_batch(chunks)):
                row = self.rows[b]
                if not len(risk):
                    continue
                row.risks.append(risk)
                for k, level in enumerate(token_levels(risk)):
                    if row.debouncer.push(level):  # type: ignore[union-attr]
                        base = row.feed_start + sum(len(r) for r in row.risks[:-1])  # type: ignore[operator]
                        row.flag = (base + k, row.debouncer.result[1])  # type: ignore[union-attr]
                        logger.debug("sequence %d flagged %s at generated token %d", b, *row.flag[::-1])
                        break
        done = [row.flag is not None and not self.end_with_eos for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _accept(self, row: _Row, t: int) -> bool:
        """Advance the row's reading state with token ``t``; True when ``t`` is fed to the guard."""
        guard = self.guard
        if row.phase == "start":
            row.phase = "newlines"
            if row.include:
                if t == guard.think_open_id:
                    return False
            elif self.policy_thinks or t == guard.think_open_id:
                row.phase = "reasoning"
                return False
        if row.phase == "reasoning":
            if t == guard.think_close_id:
                row.phase = "newlines"
            return False
        if row.phase == "newlines":
            if guard._is_newline(t):
                return False
            row.phase = "feed"
        return True

    # ------------------------------------------------------------------------------------------- lifecycle

    def _is_new_generation(self, input_ids: torch.Tensor) -> bool:
        if self._prompt_ids is None or input_ids.shape[0] != self._prompt_ids.shape[0]:
            return True
        p = self._prompt_ids.shape[1]
        if input_ids.shape[1] <= self._seen:
            return True
        return not torch.equal(input_ids[:, :p].cpu(), self._prompt_ids)

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
        self._prompt_ids = None

    def _start(self, input_ids: torch.Tensor) -> None:
        """A new ``generate`` call: the first call sees the prompt plus one generated token per row."""
        self._close()
        batch = input_ids.shape[0]
        prompt_len = input_ids.shape[1] - 1
        self._prompt_ids = input_ids[:, :prompt_len].cpu()
        self._seen = prompt_len
        first = input_ids[:, prompt_len].tolist()
        self.rows = []
        for t in first:
            thinks = self.policy_thinks if self.policy_thinks is not None else t == self.guard.think_open_id
            row = _Row(
                include=self.include and thinks, debouncer=Debouncer(self.mode, mixed_pairs=self.mixed_pairs)
            )
            self.rows.append(row)
        session_rows = [self._session_row(b, batch, row.include) for b, row in enumerate(self.rows)]
        self.session = StreamSession(self.guard, session_rows)

    def _session_row(self, b: int, batch: int, include: bool) -> tuple[list[int], int | None, bool]:
        if self.prompts is not None:
            if batch % len(self.prompts):
                raise ValueError(
                    f"{len(self.prompts)} prompts for a batch of {batch} sequences; give one prompt per "
                    "sequence, or per prompt when each is expanded into consecutive return sequences"
                )
            prompt = self.prompts[b // (batch // len(self.prompts))]
            return self.guard.session_row(prompt, include, self.max_new_tokens, b)
        ids = self._prompt_ids[b].tolist()  # type: ignore[index]
        first = next((k for k, i in enumerate(ids) if i != self.pad_token_id), len(ids))
        ids = ids[first:]
        h, e = len(self._header), len(self._empty_think)
        if ids[-h:] == self._header:
            ids = ids + (self._open_think if include else self._empty_think)
        elif include or not (ids[-h - e : -e] == self._header and ids[-e:] == self._empty_think):
            raise ValueError(
                f"sequence {b}: the prompt ids do not end with a Qwen3 assistant header "
                "('<|im_start|>assistant\\n' [+ empty think block]); pass prompts= (messages) instead"
            )
        if len(ids) + self.max_new_tokens > self.guard.max_length:
            from guard_reward.guards.common import ContextTooLongError

            raise ContextTooLongError(
                f"sequence {b}: a {len(ids)}-token prompt + {self.max_new_tokens} new tokens exceed the "
                f"guard's window of {self.guard.max_length}; pass prompts= so earlier turns can be trimmed"
            )
        return ids, self.guard._query_pos(ids), False


class _EndFlagged(LogitsProcessor):
    """Force EOS for the sequences the criteria has flagged (used with ``end_with_eos=True``)."""

    def __init__(self, criteria: GuardStoppingCriteria) -> None:
        self.criteria = criteria

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = self.criteria.rows
        # Only within the generation the criteria is tracking (a new generate call starts with other rows).
        if (
            self.criteria._prompt_ids is None
            or len(rows) != scores.shape[0]
            or input_ids.shape[1] != self.criteria._seen
        ):
            return scores
        flagged = [b for b, row in enumerate(rows) if row.flag is not None and not row.finished]
        if flagged:
            scores = scores.clone()
            scores[flagged] = float("-inf")
            scores[flagged, self.criteria.eos_token_id] = 0.0
        return scores
