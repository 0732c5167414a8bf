"""Qwen3Guard-Stream as a per-token risk scorer: whole responses in one forward pass, streaming sessions.

The official Stream API (``stream_moderate_from_ids``) needs remote code, re-runs the whole growing sequence
for every token and rounds probabilities to two decimals. Because Qwen3 attention is causal and the heads are
applied position by position, one teacher-forced pass over ``prompt + response`` gives, at every response
position, the same verdict the stream would give after reading that token; :meth:`StreamGuard.score` does that
for a batch of conversations (right-padded token-budget micro-batches, :mod:`guard_reward.guards.batching`;
heads applied only to the judged positions; a prefix shared by several inputs, such as a GRPO group's prompt,
is run once and its KV cache copied, see :mod:`guard_reward.guards.prefix_sharing`), and
:meth:`StreamGuard.score_ids` does it on the policy's own token ids when the policy shares the guard's
vocabulary (no decode/re-encode, so risks align 1:1 with policy tokens). :meth:`StreamGuard.open_stream` is the
incremental form, KV-cached (see :mod:`guard_reward.guards.stream_session`). Turning conversations and ids into
guard inputs is :mod:`guard_reward.guards.stream_encoding`'s part.

What is judged (see :mod:`guard_reward.guards.stream_inputs`): the content of the last assistant message, fed
after the template's prefix; the closing ``<|im_end|>`` is not scored. ``thinking="answer"`` (default) judges
the answer alone, the reasoning replaced by the empty think block (the official non-thinking convention);
``thinking="include"`` judges reasoning and answer as one response, starting after ``<think>\\n`` (the
official evaluation's convention for thinking data). A conversation ending with a user turn yields an empty
TokenRisk carrying the prompt verdict (query heads at that turn's ``<|im_end|>``).

Context policy: inputs longer than ``max_length`` (the checkpoint's ``max_position_embeddings`` by default)
follow :func:`guard_reward.guards.common.fit_to_context` — earlier turns are trimmed, the judged message is
never cut, and ``ContextTooLongError`` is raised when it alone does not fit. Trimmed inputs are flagged
``truncated`` and counted.

Per-sample failures (``on_error``): ``score``/``score_ids`` raise a :class:`~guard_reward.faults.SampleError`
for a sample they cannot score (the default, ``on_error="raise"``: context too long, ids past the guard's
embedding table, a malformed sample, non-finite probabilities); with ``on_error="skip"`` that sample gets a
failed :class:`TokenRisk` (``error``/``reason`` set, empty tensors) and the others are scored as usual. A
completion whose reasoning was cut off before ``</think>`` is never scored as an answer: under
``thinking="answer"`` it gets a failed record with reason ``"no_answer"`` (under both policies: it is a fact
about the completion, not an error of the guard); under ``"include"`` its reasoning is scored and
``answer_missing`` is set. Batch-level errors (out of memory, a broken checkpoint) always raise.

Ids: any id inside the guard's embedding table is scored, including ids past the tokenizer (Qwen3 models have
151,936 embedding rows for 151,669 tokens, and a policy can sample the padded rows); such ids have no text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from guard_reward.conversations import Conversation
from guard_reward.faults import INVALID_INPUT, NON_FINITE, OnError, SampleError, check_on_error
from guard_reward.guards.batching import micro_batches
from guard_reward.guards.common import hub_kwargs, resolve_device, resolve_dtype
from guard_reward.guards.prefix_sharing import encode_shared, plan_sharing, run_rows
from guard_reward.guards.stream_encoding import StreamEncoding
from guard_reward.guards.stream_heads import (
    LabelMaps,
    Qwen3StreamGuardModel,
    label_maps,
    load_stream_model,
    token_risks,
)
from guard_reward.guards.stream_inputs import Encoded
from guard_reward.types import TokenRisk

if TYPE_CHECKING:
    from guard_reward.guards.stream_session import StreamSession

StreamThinking = Literal["answer", "include"]
STREAM_THINKING = ("answer", "include")


def check_stream_thinking(thinking: str) -> StreamThinking:
    """``thinking`` itself when it is a Stream thinking mode (``"answer"`` or ``"include"``), else a
    ``ValueError`` naming the accepted ones."""
    if thinking not in STREAM_THINKING:
        raise ValueError(f"thinking={thinking!r} is not accepted; use one of {', '.join(STREAM_THINKING)}")
    return thinking  # type: ignore[return-value]


class StreamGuard(StreamEncoding):
    """Qwen3Guard-Stream per-token risk (module docstring); turning inputs into token ids is
    :class:`~guard_reward.guards.stream_encoding.StreamEncoding`'s part.

    Attributes:
        tokenizer, model: the guard's tokenizer (with its chat template) and :class:`Qwen3StreamGuardModel`.
        category_names: response category labels in head order; ``query_category_names`` likewise (9, with
            ``Jailbreak``).
        max_length: the longest guard input (prefix + judged tokens).
        thinking, token_budget, max_batch_size: defaults for the calls (see :meth:`from_pretrained`).
        share_prefix: in :meth:`score` / :meth:`score_ids`, run token prefixes shared by several inputs of a
            micro-batch once (a GRPO group's prompt) and continue each input from a copy of that KV cache
            (:mod:`guard_reward.guards.prefix_sharing`); results are unchanged up to float rounding.
    """

    def __init__(
        self,
        model: Qwen3StreamGuardModel,
        tokenizer: Any,
        maps: LabelMaps,
        *,
        thinking: str = "answer",
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_length: int | None = None,
        share_prefix: bool = True,
    ) -> None:
        if token_budget < 1 or max_batch_size < 1:
            raise ValueError(
                f"token_budget and max_batch_size must be >= 1, got {token_budget}, {max_batch_size}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.maps = maps
        self.thinking = check_stream_thinking(thinking)
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.max_length = int(max_length) if max_length is not None else limit
        if self.max_length < 1 or (limit and self.max_length > limit):
            raise ValueError(f"max_length={max_length} must be between 1 and max_position_embeddings={limit}")
        self.category_names = maps.categories
        self.query_category_names = maps.query_categories
        self._init_vocabulary(model, tokenizer)
        self.n_shared_batches = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        thinking: str = "answer",
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_length: int | None = None,
        attn_implementation: str = "sdpa",
        share_prefix: bool = True,
        **kw: Any,
    ) -> StreamGuard:
        """Load a Qwen3Guard-Stream checkpoint (hub id or local folder; a folder never touches the network).

        No remote code is run. ``dtype``: ``None`` = bfloat16 on a GPU that supports it, else float32.
        ``token_budget`` bounds ``batch size x longest input`` per forward; ``kw`` (e.g. ``revision``) goes to
        ``from_pretrained`` of the model and tokenizer.
        """
        from transformers import AutoTokenizer

        device = resolve_device(device)
        hub = hub_kwargs(name_or_path, **kw)
        model, raw = load_stream_model(
            name_or_path,
            device=device,
            dtype=resolve_dtype(dtype, device),
            attn_implementation=attn_implementation,
            **hub,
        )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{name_or_path}: the tokenizer has no chat template; the guard needs it")
        return cls(
            model,
            tokenizer,
            label_maps(raw, f"{name_or_path}/config.json"),
            thinking=thinking,
            token_budget=token_budget,
            max_batch_size=max_batch_size,
            max_length=max_length,
            share_prefix=share_prefix,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------------------------------------- scoring

    def score(
        self,
        conversations: Sequence[Conversation],
        *,
        thinking: str | None = None,
        on_error: OnError = "raise",
    ) -> list[TokenRisk]:
        """Per-token risk of the last assistant message of each conversation, one batched pass.

        ``TokenRisk.offsets`` are spans into that message's ``content`` string. ``on_error``: what a
        per-sample failure does (module docstring).
        """
        mode = check_stream_thinking(thinking or self.thinking)
        policy = check_on_error(on_error)
        encoded: list[Encoded | TokenRisk] = []
        for i, conv in enumerate(conversations):
            try:
                encoded.append(self._encode_conversation(conv, i, mode))
            except SampleError as exc:
                encoded.append(self._failed(exc, policy))
        return self._run(encoded, policy)

    def score_ids(
        self,
        prompts: Sequence[str | Conversation],
        completion_ids: Sequence[Sequence[int]],
        *,
        thinking: str | None = None,
        on_error: OnError = "raise",
    ) -> list[TokenRisk]:
        """Per-token risk of policy completions given as token ids in the guard's vocabulary, scored verbatim.

        Args:
            prompts: TRL prompts, a string or a message list each (rendered with the guard's template).
            completion_ids: ``list[list[int]]`` as TRL passes them. Trailing ``<|im_end|>``/``<|endoftext|>``
                ids (TRL keeps the EOS) are not scored; with ``thinking="answer"`` a reasoning block up to
                ``</think>`` is not scored either; newline tokens right after ``<think>`` / ``</think>``
                belong to the template's scaffolding. Any id inside the guard's embedding table is accepted
                (ids past the tokenizer have no text).
            on_error: what a per-sample failure does (module docstring).

        Returns:
            One :class:`TokenRisk` per completion; ``span = (start, end)`` tells which ``completion_ids[i]``
            it covers (``token_ids == completion_ids[i][start:end]``); ``offsets`` are spans into
            ``tokenizer.decode(completion_ids[i], skip_special_tokens=True)`` (the text TRL passes as the
            completion).
        """
        if len(prompts) != len(completion_ids):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(completion_ids)} completion_ids; one per sample"
            )
        mode = check_stream_thinking(thinking or self.thinking)
        policy = check_on_error(on_error)
        prefix_cache: dict[tuple[str, bool], list[int]] = {}
        encoded: list[Encoded | TokenRisk] = []
        for i, (prompt, ids) in enumerate(zip(prompts, completion_ids, strict=True)):
            try:
                encoded.append(self._encode_ids(prompt, ids, i, mode, prefix_cache))
            except SampleError as exc:
                encoded.append(self._failed(exc, policy))
        return self._run(encoded, policy)

    def shares_tokenizer(self, other: Any) -> bool:
        """Whether ``other``'s ids mean the same tokens as the guard's (same vocabulary, or a subset of it at
        the same ids, e.g. a Qwen2.5 tokenizer). Then :meth:`score_ids` may be fed the policy's ids
        directly."""
        if other is self.tokenizer:
            return True
        mine = self.tokenizer.get_vocab()
        theirs = other.get_vocab()
        return len(theirs) <= len(mine) and all(mine.get(tok) == i for tok, i in theirs.items())

    def open_stream(
        self, prompt_messages: str | Conversation, *, thinking: str | None = None, max_new_tokens: int = 0
    ) -> StreamSession:
        """A KV-cached session that judges tokens as they are fed (see
        :class:`~guard_reward.guards.stream_session.StreamSession`); ``max_new_tokens`` reserves room in the
        context window for the tokens to come (earlier turns are trimmed for it)."""
        return self.open_streams([prompt_messages], thinking=thinking, max_new_tokens=max_new_tokens)

    def open_streams(
        self, prompts: Sequence[str | Conversation], *, thinking: str | None = None, max_new_tokens: int = 0
    ) -> StreamSession:
        """A batched session: one row per prompt, fed with ``feed_batch`` (one forward per call for all rows).

        With ``thinking="include"`` the prompt ends with ``<think>\\n`` and the caller feeds the reasoning,
        the ``</think>`` and the answer; otherwise it ends with the empty think block and the caller feeds the
        answer.
        """
        from guard_reward.guards.stream_session import StreamSession

        include = check_stream_thinking(thinking or self.thinking) == "include"
        rows = [self.session_row(p, include, max_new_tokens, i) for i, p in enumerate(prompts)]
        return StreamSession(self, rows)

    # ------------------------------------------------------------------------------------------- running

    def _failed(self, exc: SampleError, policy: str) -> TokenRisk:
        """A per-sample failure: raised again under ``on_error="raise"``, else that sample's record."""
        if policy == "raise":  # a malformed sample keeps its original TypeError / ValueError
            raise (exc.__cause__ if exc.reason == INVALID_INPUT and exc.__cause__ else exc)
        return TokenRisk.failed(exc.reason, str(exc), self.category_names)

    def _run(self, items: list[Encoded | TokenRisk], policy: str = "raise") -> list[TokenRisk]:
        """Score the encoded items (records of samples that already failed pass through), then check that
        every probability is finite."""
        results: list[TokenRisk | None] = [x if isinstance(x, TokenRisk) else None for x in items]
        todo = [k for k, x in enumerate(items) if not isinstance(x, TokenRisk)]
        encoded: list[Encoded] = [items[k] for k in todo]  # type: ignore[misc]
        rows = [e.ids for e in encoded]
        lengths = [len(ids) for ids in rows]
        for batch in micro_batches(rows, lengths, self.token_budget, self.max_batch_size, self.share_prefix):
            for j, risk in zip(batch, self._forward([encoded[j] for j in batch]), strict=True):
                finite = all(
                    bool(torch.isfinite(t).all())
                    for t in (risk.p_safe, risk.p_unsafe, risk.p_controversial, risk.category_probs)
                )
                if not finite:
                    error = SampleError(
                        NON_FINITE, f"sample {todo[j]}: the guard produced NaN or infinite risk"
                    )
                    risk = self._failed(error, policy)
                results[todo[j]] = risk
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _forward(self, batch: list[Encoded]) -> list[TokenRisk]:
        """One forward over the batch; heads only on the judged positions and the query positions."""
        hidden_at = self._hidden([e.ids for e in batch])
        rows = torch.cat([torch.full((len(e.token_ids),), b, dtype=torch.long) for b, e in enumerate(batch)])
        cols = torch.cat([torch.arange(e.start, len(e.ids), dtype=torch.long) for e in batch])
        q_items = [b for b, e in enumerate(batch) if e.query_pos is not None]
        q_rows = torch.tensor(q_items, dtype=torch.long)
        q_cols = torch.tensor([batch[b].query_pos for b in q_items], dtype=torch.long)
        return self.to_token_risks(batch, hidden_at(rows, cols), hidden_at(q_rows, q_cols))

    def _hidden(self, ids: list[list[int]]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Run the rows (right-padded; shared prefixes once when that pays) and return a lookup ``(rows (N,),
        positions (N,)) -> (N, H)`` of last hidden states."""
        plan = plan_sharing(ids) if self.share_prefix else None
        if plan is not None:
            past = encode_shared(self.model, ids, plan, self.pad_id, keep_hidden=True)
            own_ids = [row[cut:] for row, cut in zip(ids, plan.cut)]
            own = run_rows(self.model, past.cache, own_ids, past.key_mask, past.length, self.pad_id)
            self.n_shared_batches += 1
            return lambda r, c: past.gather(plan.cut, own, r, c)
        device = self.device
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for b, row in enumerate(ids):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[b, : len(row)] = 1
        out = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
        hidden = out.last_hidden_state  # (B, L, H)
        return lambda r, c: hidden[r.to(device), c.to(device)]

    def to_token_risks(
        self, batch: Sequence[Encoded], response_hidden: torch.Tensor, query_hidden: torch.Tensor | None
    ) -> list[TokenRisk]:
        """Apply the heads to gathered hidden states; see :func:`~.stream_heads.token_risks`."""
        return token_risks(self.model, self.maps, batch, response_hidden, query_hidden)
