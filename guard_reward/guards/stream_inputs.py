"""Turning conversations and policy token ids into Qwen3Guard-Stream inputs.

The guard reads ``prefix + judged tokens``: the prefix is the conversation rendered by the checkpoint's chat
template up to the start of the assistant content (for the stock Qwen3 template: the assistant header and the
empty think block ``<think>\\n\\n</think>\\n\\n`` that a final assistant turn gets, or the header and
``<think>\\n`` when the reasoning is judged too); the judged tokens are the content, tokenized on their own —
exactly what a policy generating after that prefix produces. The closing ``<|im_end|>`` is not fed: a live
stream only sees it at the very end, and the official evaluation's habit of scoring it (and the ``\\n`` after
it) is a convention this library does not follow.

The prefix is found by rendering the conversation with a sentinel in place of the content and cutting there,
so any template that renders the content verbatim works, and the prefix is the one the template really
produces for a final assistant turn. Offsets are character spans into the content as the caller gave it (the
text TRL passes to reward functions), so they survive the template's stripping of newlines around the think
block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from guard_reward.conversations import THINK_CLOSE, THINK_OPEN, Conversation

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_SENTINEL = "\ue000guard-reward-content\ue001"
_SENTINEL2 = "\ue000guard-reward-answer\ue001"


class TemplateError(ValueError):
    """The chat template does not render the assistant content in a way the guard can locate."""


@dataclass
class Encoded:
    """One guard input: ``ids (L,)`` = prefix + judged tokens (the last ``len(token_ids)`` positions)."""

    ids: list[int]
    token_ids: list[int]
    offsets: torch.Tensor  # (T, 2) long, spans in the judged content
    query_pos: int | None  # position of the <|im_end|> closing the last user turn
    truncated: bool = False
    span: tuple[int, int] | None = None
    answer_missing: bool = False  # the reasoning was cut off before </think>; only reasoning is judged

    @property
    def start(self) -> int:
        return len(self.ids) - len(self.token_ids)


def render(tokenizer: Any, messages: Conversation) -> str:
    """The whole conversation as the template renders it (final assistant turn included)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, enable_thinking=False
    )


def prefix_text(tokenizer: Any, before: Conversation, include_reasoning: bool) -> str:
    """The rendered text up to the start of a final assistant turn's content (or of its reasoning)."""
    content = f"{THINK_OPEN}\n{_SENTINEL}\n{THINK_CLOSE}\n\n{_SENTINEL2}" if include_reasoning else _SENTINEL
    text = render(tokenizer, [*before, {"role": "assistant", "content": content}])
    cut = text.find(_SENTINEL)
    if cut < 0:
        raise TemplateError(
            "the guard's chat template does not render the assistant message content; a Qwen3Guard-Stream "
            "template renders it after '<|im_start|>assistant\\n' and an empty think block"
        )
    return text[:cut]


def answer_start(content: str) -> int:
    """Where the answer begins: after the last ``</think>`` (if any) and the newlines that follow it."""
    close = content.rfind(THINK_CLOSE)
    start = 0 if close < 0 else close + len(THINK_CLOSE)
    while start < len(content) and content[start] == "\n":
        start += 1
    return start


def has_reasoning(content: str) -> bool:
    """Whether the content carries a non-empty reasoning block before a ``</think>``."""
    if THINK_CLOSE not in content:
        return False
    head = content[: content.rfind(THINK_CLOSE)].replace(THINK_OPEN, "")
    return head.strip() != ""


def _boundary_map(n: int, segments: Sequence[tuple[int, int, int, int]]) -> list[int]:
    """Content position of each of the ``n + 1`` character boundaries of the judged text.

    ``segments`` are ``(j0, j1, c0, c1)``: judged ``[j0, j1)`` stands for content ``[c0, c1)``. Equal lengths
    map 1:1; otherwise positions are clamped into the content range (template-inserted newlines map to no
    text).
    """
    out = [0] * (n + 1)
    for j0, j1, c0, c1 in segments:
        for k in range(j1 - j0 + 1):
            out[j0 + k] = c0 + min(k, c1 - c0)
    return out


def _locate_answer(judged: str, content: str, base: int) -> tuple[int, int, int, int]:
    """The segment for the answer ``judged`` (the template may have stripped it further)."""
    pos = content.find(judged, base) if judged else len(content)
    if pos < 0:
        raise TemplateError("the chat template changed the assistant content; cannot locate it to score it")
    return (0, len(judged), pos, pos + len(judged))


def _reasoning_segments(judged: str, content: str) -> list[tuple[int, int, int, int]]:
    """Segments for ``reasoning \\n</think>\\n\\n answer`` as rendered, mapped onto the raw content."""
    k = judged.rfind(THINK_CLOSE)
    reasoning, answer = judged[:k].rstrip("\n"), judged[k + len(THINK_CLOSE) :].lstrip("\n")
    r0 = content.find(reasoning)
    a0 = len(content) - len(answer)
    if r0 < 0 or not content.endswith(answer):
        raise TemplateError(
            "the chat template changed the reasoning or answer text; cannot locate it to score it"
        )
    r1 = r0 + len(reasoning)
    m = content.rfind(THINK_CLOSE, r1, a0)
    j_mid0, j_mid1 = len(reasoning), len(judged) - len(answer)
    segments = [(0, j_mid0, r0, r1)]
    if m < 0:
        segments.append((j_mid0, j_mid1, r1, a0))
    else:
        segments += [
            (j_mid0, k, r1, m),
            (k, k + len(THINK_CLOSE), m, m + len(THINK_CLOSE)),
            (k + len(THINK_CLOSE), j_mid1, m + len(THINK_CLOSE), a0),
        ]
    segments.append((j_mid1, len(judged), a0, len(content)))
    return segments


def judged_text(tokenizer: Any, conversation: Conversation, include: bool) -> tuple[str, str, list[int]]:
    """``(prefix, judged, boundary map)`` for a conversation ending with an assistant message.

    ``include``: judge reasoning + answer (the content must have reasoning); else the answer alone, with the
    reasoning replaced by the empty think block.
    """
    content = conversation[-1]["content"]
    before = conversation[:-1]
    if include:
        shown = content
    else:
        base = answer_start(content)
        shown = content[base:]
    full = render(tokenizer, [*before, {"role": "assistant", "content": shown}])
    prefix = prefix_text(tokenizer, before, include)
    close = full.rfind(IM_END)
    if not full.startswith(prefix) or close < len(prefix):
        raise TemplateError(
            "the chat template renders the conversation differently with and without the assistant content; "
            "the guard cannot tell where the content starts"
        )
    judged = full[len(prefix) : close]
    if include:
        segments = _reasoning_segments(judged, content)
    else:
        j0, j1, c0, c1 = _locate_answer(judged, shown, 0)
        segments = [(j0, j1, c0 + base, c1 + base)]
    return prefix, judged, _boundary_map(len(judged), segments)


def query_position(ids: Sequence[int], im_start: int, user: int, im_end: int) -> int | None:
    """Index of the ``<|im_end|>`` closing the last ``<|im_start|>user`` turn, or ``None``."""
    for i in range(len(ids) - 2, -1, -1):
        if ids[i] == im_start and ids[i + 1] == user:
            for j in range(i + 2, len(ids)):
                if ids[j] == im_end:
                    return j
            return None
    return None
