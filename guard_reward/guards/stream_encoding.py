"""Turning conversations, prompts and policy token ids into Qwen3Guard-Stream inputs (:class:`Encoded`).

:class:`StreamEncoding` is the part of :class:`~guard_reward.guards.stream.StreamGuard` that knows the
tokenizer: the special ids, which ids the guard can embed, where the judged span of a policy completion starts
and ends (a reasoning block, the template's newlines after ``<think>`` / ``</think>``, the trailing EOS), the
prefix a streaming session opens with, and the context policy (:func:`~guard_reward.guards.common.fit_to_context`:
earlier turns are trimmed, trimmed inputs flagged and counted). Which text is judged, and how its offsets map
back to the content, is decided in :mod:`guard_reward.guards.stream_inputs`; running the model is
:mod:`guard_reward.guards.stream`'s part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from guard_reward.conversations import (
    THINK_CLOSE,
    THINK_OPEN,
    Conversation,
    to_conversation,
    validate_conversation,
)
from guard_reward.faults import IDS_OUTSIDE_VOCABULARY, INVALID_INPUT, NO_ANSWER, SampleError
from guard_reward.guards.common import fit_to_context
from guard_reward.guards.offsets import token_char_offsets
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


class StreamEncoding:
    """Encoding half of :class:`~guard_reward.guards.stream.StreamGuard` (one of its base classes).

    The guard sets ``tokenizer``, ``max_length`` and ``category_names`` and calls :meth:`_init_vocabulary`,
    which sets the rest.

    Attributes:
        im_start_id, im_end_id, think_open_id, think_close_id, user_id: the template's special token ids.
        vocab_rows: ids below it can be embedded (the embedding table, which may be larger than the tokenizer).
        trailing_ids: end-of-turn ids a TRL completion ends with; never content.
        pad_id: the padding id of the guard's batches.
        n_truncated: inputs trimmed to the window so far.
    """

    tokenizer: Any
    max_length: int
    category_names: tuple[str, ...]

    def _init_vocabulary(self, model: Any, tokenizer: Any) -> None:
        """Read the special ids and the embeddable range from ``tokenizer`` and ``model`` (class docstring)."""
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

    def _encode_conversation(self, conv: Any, index: int, mode: str) -> Encoded | TokenRisk:
        """One :meth:`~guard_reward.guards.stream.StreamGuard.score` input, or the ``no_answer`` record of a
        cut-off reasoning block under ``thinking="answer"``."""
        conv = self._validate(conv, index)
        content = conv[-1]["content"] if conv[-1]["role"] == "assistant" else ""
        if THINK_OPEN in content and THINK_CLOSE not in content:  # reasoning cut off
            if mode != "include":
                return self._no_answer(f"conversation {index}")
            return self._fit(conv, self._encode_cut_off)
        return self._fit(conv, lambda c: self._encode_text(c, mode))

    def _encode_ids(
        self,
        prompt: str | Conversation,
        raw_ids: Sequence[int],
        i: int,
        mode: str,
        prefix_cache: dict[tuple[str, bool], list[int]],
    ) -> Encoded | TokenRisk:
        """One :meth:`~guard_reward.guards.stream.StreamGuard.score_ids` input, or the ``no_answer`` record of
        a cut-off reasoning block."""
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
        """``(start, end, include_reasoning, answer_missing)`` of the ids to score (see
        :meth:`~guard_reward.guards.stream.StreamGuard.score_ids`).

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

    def _fit(self, conv: Conversation, encode: Callable[[Conversation], Encoded]) -> Encoded:
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
