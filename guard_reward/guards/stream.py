"""Qwen3Guard-Stream as a per-token risk scorer: whole responses in one forward pass, streaming sessions.

The official Stream API (``stream_moderate_from_ids``) needs remote code, re-runs the whole growing sequence
for every token and rounds probabilities to two decimals. Because Qwen3 attention is causal and the heads are
applied position by position, one teacher-forced pass over ``prompt + response`` gives, at every response
position, the same verdict the stream would give after reading that token; :meth:`StreamGuard.score` does that
for a batch of conversations (right-padded token-budget micro-batches, heads applied only to the judged
positions; a prefix shared by several inputs, such as a GRPO group's prompt, is run once and its KV cache
copied, see :mod:`guard_reward.guards.prefix_sharing`), and :meth:`StreamGuard.score_ids` does it on the policy's own token ids when the policy
shares the guard's vocabulary (no decode/re-encode, so risks align 1:1 with policy tokens).
:meth:`StreamGuard.open_stream` is the incremental form, KV-cached (see
:mod:`guard_reward.guards.stream_session`).

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

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from guard_reward.conversations import (
    THINK_CLOSE,
    THINK_OPEN,
    Conversation,
    to_conversation,
    validate_conversation,
)
from guard_reward.faults import (
    IDS_OUTSIDE_VOCABULARY,
    INVALID_INPUT,
    NO_ANSWER,
    NON_FINITE,
    OnError,
    SampleError,
    check_on_error,
)
from guard_reward.guards.batching import micro_batches
from guard_reward.guards.common import (
    fit_to_context,
    hub_kwargs,
    resolve_device,
    resolve_dtype,
)
from guard_reward.guards.offsets import token_char_offsets
from guard_reward.guards.prefix_sharing import (
    encode_shared,
    plan_sharing,
    run_rows,
)
from guard_reward.guards.stream_heads import (
    LabelMaps,
    Qwen3StreamGuardModel,
    label_maps,
    load_stream_model,
    token_risks,
)
from guard_reward.guards.stream_inputs import (
    IM_END,
    IM_START,
    Encoded,
    has_reasoning,
    judged_text,
    prefix_text,
    query_position,
)
from guard_reward.types import TokenRisk

logger = logging.getLogger(__name__)

StreamThinking = Literal["answer", "include"]
STREAM_THINKING = ("answer", "include")


def check_stream_thinking(thinking: str) -> StreamThinking:
    if thinking not in STREAM_THINKING:
        raise ValueError(f"thinking={thinking!r} is not accepted; use one of {', '.join(STREAM_THINKING)}")
    return thinking  # type: ignore[return-value]


class StreamGuard:
    """Qwen3Guard-Stream per-token risk (module docstring).

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
        ids = tokenizer.convert_tokens_to_ids([IM_START, IM_END, THINK_OPEN, THINK_CLOSE, "<|endoftext|>"])
        self.im_start_id, self.im_end_id, self.think_open_id, self.think_close_id, endoftext = ids
        self.user_id = tokenizer.encode("user", add_special_tokens=False)[0]
        # Ids the guard can embed: the whole embedding table, which may be larger than the tokenizer.
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        rows = getattr(embeddings, "num_embeddings", None) or getattr(model.config, "vocab_size", 0)
        self.vocab_rows = max(int(rows or 0), len(tokenizer))
        # TRL's completion_ids end with the EOS that finished them; those ids are never content.
        self.trailing_ids = {i for i in (self.im_end_id, endoftext, tokenizer.eos_token_id) if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else endoftext
        self._newline_only: dict[int, bool] = {}
        self.n_truncated = 0
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
                conv = self._validate(conv, i)
                content = conv[-1]["content"] if conv[-1]["role"] == "assistant" else ""
                if THINK_OPEN in content and THINK_CLOSE not in content:  # reasoning cut off
                    if mode != "include":
                        encoded.append(self._no_answer(f"conversation {i}"))
                    else:
                        encoded.append(self._fit(conv, self._encode_cut_off))
                    continue
                encoded.append(self._fit(conv, lambda c, m=mode: self._encode_text(c, m)))
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

    def _encode_ids(
        self,
        prompt: str | Conversation,
        raw_ids: Sequence[int],
        i: int,
        mode: str,
        prefix_cache: dict[tuple[str, bool], list[int]],
    ) -> Encoded | TokenRisk:
        """One :meth:`score_ids` input, or the ``no_answer`` record of a cut-off reasoning block."""
        conv = self._prompt_conversation(prompt, i)
        ids = self._check_ids(raw_ids, i)
        start, end, include, missing = self._completion_span(ids, mode)
        if missing and not include:
            return self._no_answer(f"completion_ids[{i}]", span=(start, start))
        _, offsets = token_char_offsets(self.tokenizer, ids)
        placeholder = [*conv, {"role": "assistant", "content": ""}]

        def encode(c: Conversation) -> Encoded:
            key = (json.dumps(c[:-1]), include)
            if key not in prefix_cache:
                prefix_cache[key] = self._encode_prefix(c[:-1], include)
            prefix = prefix_cache[key]
            scored = list(ids[start:end])
            return Encoded(
                [*prefix, *scored],
                scored,
                offsets[start:end],
                self._query_pos(prefix),
                span=(start, end),
                answer_missing=missing,
            )

        return self._fit(placeholder, encode)

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
    ) -> Any:
        """A KV-cached session that judges tokens as they are fed (see
        :class:`~guard_reward.guards.stream_session.StreamSession`); ``max_new_tokens`` reserves room in the
        context window for the tokens to come (earlier turns are trimmed for it)."""
        return self.open_streams([prompt_messages], thinking=thinking, max_new_tokens=max_new_tokens)

    def open_streams(
        self, prompts: Sequence[str | Conversation], *, thinking: str | None = None, max_new_tokens: int = 0
    ) -> Any:
        """A batched session: one row per prompt, fed with ``feed_batch`` (one forward per call for all rows).

        With ``thinking="include"`` the prompt ends with ``<think>\\n`` and the caller feeds the reasoning,
        the ``</think>`` and the answer; otherwise it ends with the empty think block and the caller feeds the
        answer.
        """
        from guard_reward.guards.stream_session import StreamSession

        include = check_stream_thinking(thinking or self.thinking) == "include"
        rows = [self.session_row(p, include, max_new_tokens, i) for i, p in enumerate(prompts)]
        return StreamSession(self, rows)

    def session_row(
        self, prompt: str | Conversation, include: bool, max_new_tokens: int = 0, index: int = 0
    ) -> tuple[list[int], int | None, bool]:
        """``(prefix ids, query position, truncated)`` for a stream on ``prompt``, trimmed to leave room for
        ``max_new_tokens``."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        conv = self._prompt_conversation(prompt, index)
        placeholder = [*conv, {"role": "assistant", "content": ""}]

        def encode(c: Conversation) -> Encoded:
            prefix = self._encode_prefix(c[:-1], include)
            reserve = [self.pad_id] * max_new_tokens
            return Encoded(
                [*prefix, *reserve], reserve, torch.zeros((0, 2), dtype=torch.long), self._query_pos(prefix)
            )

        fitted = self._fit(placeholder, encode)
        return fitted.ids[: fitted.start], fitted.query_pos, fitted.truncated

    # ------------------------------------------------------------------------------------------- internals

    def _prompt_conversation(self, prompt: str | Conversation, index: int) -> Conversation:
        try:
            conv = validate_conversation(to_conversation(prompt), index)
        except (TypeError, ValueError) as exc:
            raise SampleError(INVALID_INPUT, f"prompt {index}: {exc}") from exc
        if conv[-1]["role"] != "user":
            raise SampleError(
                INVALID_INPUT,
                f"prompt {index}: ends with a {conv[-1]['role']!r} message; a prompt to be completed "
                "must end with the user's turn",
            )
        return conv

    def _validate(self, conv: Any, index: int) -> Conversation:
        try:
            return validate_conversation(conv, index)
        except (TypeError, ValueError) as exc:
            raise SampleError(INVALID_INPUT, str(exc)) from exc

    def _failed(self, exc: SampleError, policy: str) -> TokenRisk:
        """A per-sample failure: raised again under ``on_error="raise"``, else that sample's record."""
        if policy == "raise":  # a malformed sample keeps its original TypeError / ValueError
            raise (exc.__cause__ if exc.reason == INVALID_INPUT and exc.__cause__ else exc)
        return TokenRisk.failed(exc.reason, str(exc), self.category_names)

    def _no_answer(self, where: str, span: tuple[int, int] | None = None) -> TokenRisk:
        return TokenRisk.failed(
            NO_ANSWER,
            f"{where}: the reasoning block was cut off before </think>; there is no answer to score "
            "(score it with thinking='include' to judge the reasoning)",
            self.category_names,
            span=span,
            answer_missing=True,
        )

    def _check_ids(self, ids: Sequence[int], index: int) -> list[int]:
        out = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        bad = [i for i in out if not 0 <= i < self.vocab_rows]
        if bad:
            raise SampleError(
                IDS_OUTSIDE_VOCABULARY,
                f"completion_ids[{index}] has ids outside the guard's vocabulary (its embedding table, "
                f"0..{self.vocab_rows - 1}): {bad[:5]}; for a policy with another tokenizer, score the "
                "decoded text and align by offsets",
            )
        return out

    def _is_newline(self, token_id: int) -> bool:
        if token_id not in self._newline_only:
            text = self.tokenizer.decode([token_id])
            self._newline_only[token_id] = text != "" and text.strip("\n") == ""
        return self._newline_only[token_id]

    def _completion_span(self, ids: list[int], mode: str) -> tuple[int, int, bool, bool]:
        """``(start, end, include_reasoning, answer_missing)`` of the ids to score (see :meth:`score_ids`).

        A ``<think>`` without a later ``</think>`` is a reasoning block cut off: ``answer_missing``; its
        reasoning is the span under ``thinking="include"``, nothing otherwise.
        """
        end = len(ids)
        while end > 0 and ids[end - 1] in self.trailing_ids:
            end -= 1
        close = max((k for k in range(end) if ids[k] == self.think_close_id), default=-1)
        opened = max((k for k in range(end) if ids[k] == self.think_open_id), default=-1)

        def skip_newlines(k: int, stop: int) -> int:
            while k < stop and self._is_newline(ids[k]):
                k += 1
            return k

        if opened > close:
            start = skip_newlines(opened + 1, end)
            return start, end, mode == "include", True
        if close >= 0 and mode == "include":
            start = skip_newlines(1 if ids and ids[0] == self.think_open_id else 0, close)
            if start < close:
                return start, end, True, False
        return skip_newlines(close + 1, end), end, False, False

    def _encode_prefix(self, before: Conversation, include: bool) -> list[int]:
        return self.tokenizer.encode(prefix_text(self.tokenizer, before, include), add_special_tokens=False)

    def _query_pos(self, ids: Sequence[int]) -> int | None:
        return query_position(ids, self.im_start_id, self.user_id, self.im_end_id)

    def _encode_cut_off(self, conv: Conversation) -> Encoded:
        """A reasoning block cut off before ``</think>``, judged as reasoning: after ``<think>\\n``."""
        content = conv[-1]["content"]
        start = content.find(THINK_OPEN) + len(THINK_OPEN)
        while start < len(content) and content[start] == "\n":
            start += 1
        prefix_ids = self._encode_prefix(conv[:-1], True)
        enc = self.tokenizer(content[start:], add_special_tokens=False, return_offsets_mapping=True)
        offsets = torch.tensor(enc["offset_mapping"], dtype=torch.long).reshape(-1, 2) + start
        ids = list(enc["input_ids"])
        return Encoded([*prefix_ids, *ids], ids, offsets, self._query_pos(prefix_ids), answer_missing=True)

    def _encode_text(self, conv: Conversation, mode: str) -> Encoded:
        if conv[-1]["role"] == "user":  # prompt moderation: an empty response after the prompt
            prefix = self._encode_prefix(conv, False)
            return Encoded(prefix, [], torch.zeros((0, 2), dtype=torch.long), self._query_pos(prefix))
        content = conv[-1]["content"]
        include = mode == "include" and has_reasoning(content)
        prefix, judged, boundary = judged_text(self.tokenizer, conv, include)
        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=False)
        enc = self.tokenizer(judged, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(boundary[s], boundary[e]) for s, e in enc["offset_mapping"]]
        offsets = torch.tensor(spans, dtype=torch.long).reshape(-1, 2)
        ids = list(enc["input_ids"])
        return Encoded([*prefix_ids, *ids], ids, offsets, self._query_pos(prefix_ids))

    def _fit(self, conv: Conversation, encode: Any) -> Encoded:
        """Encode, trimming earlier turns per the context policy when the input is too long."""
        out = encode(conv)
        if len(out.ids) <= self.max_length:
            return out
        fitted, _ = fit_to_context(conv, lambda c: len(encode(c).ids), self.max_length)
        out = encode(fitted)
        out.truncated = True
        self.n_truncated += 1
        logger.info(
            "input trimmed to the guard's %d-token window (earlier turns cut; %d so far)",
            self.max_length,
            self.n_truncated,
        )
        return out

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
