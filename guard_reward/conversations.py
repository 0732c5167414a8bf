"""Conversations: validation, TRL input formats, and reasoning/answer splitting.

A conversation is a list of ``{"role", "content"}`` messages (TRL's conversational format). Both guards judge
its last message: a user message is prompt moderation, an assistant message is response moderation (the
Qwen3Guard-Gen template's own rule). Everything that reaches a guard goes through :func:`validate_conversation`,
so bad input fails here with one clear message instead of deep inside a chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

Message = dict[str, str]
Conversation = list[Message]
ThinkingMode = Literal["answer", "separate", "whole"]

THINKING_MODES: tuple[str, ...] = ("answer", "separate", "whole")
JUDGED_ROLES = ("user", "assistant")
KNOWN_ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
#: End-of-turn markers a decoded completion may still carry (when decoded with special tokens).
END_OF_TURN_TEXTS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")


def validate_conversation(conversation: Any, index: int | None = None) -> Conversation:
    """Check one conversation and return it as a list of plain ``{"role", "content"}`` dicts.

    Raises:
        ValueError / TypeError naming the conversation (``index``) and what is accepted.
    """
    where = f"conversation {index}" if index is not None else "conversation"
    if isinstance(conversation, dict) and "role" in conversation:
        raise TypeError(
            f"{where}: got a single message; pass a list of messages, e.g. [{{'role': 'user', ...}}]"
        )
    if not isinstance(conversation, Sequence) or isinstance(conversation, (str, bytes)):
        raise TypeError(
            f"{where}: expected a list of {{'role', 'content'}} messages, got {type(conversation).__name__}"
        )
    if len(conversation) == 0:
        raise ValueError(f"{where}: is empty; it needs at least one user message")
    out: Conversation = []
    for j, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TypeError(
                f"{where}, message {j}: expected a dict with 'role' and 'content', got {message!r:.80}"
            )
        role, content = message["role"], message["content"]
        if role not in KNOWN_ROLES:
            raise ValueError(
                f"{where}, message {j}: unknown role {role!r}; accepted: {', '.join(KNOWN_ROLES)}"
            )
        if not isinstance(content, str):
            raise TypeError(
                f"{where}, message {j}: content must be a string, got {type(content).__name__} "
                "(multimodal content parts are not supported by Qwen3Guard)"
            )
        out.append({"role": role, "content": content})
    last = out[-1]["role"]
    if last not in JUDGED_ROLES:
        raise ValueError(
            f"{where}: the last message is {last!r}; the judged (last) message must be 'user' "
            "(prompt moderation) or 'assistant' (response moderation)"
        )
    return out


def moderation_of(conversation: Conversation) -> Literal["prompt", "response"]:
    """``"prompt"`` when the last message is the user's, else ``"response"``."""
    return "prompt" if conversation[-1]["role"] == "user" else "response"


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split ``"<think>reasoning</think>answer"`` at the last ``</think>``.

    Returns ``(reasoning, answer)``; ``reasoning`` is ``None`` when the text has no ``</think>``. A leading
    ``<think>`` is removed from the reasoning (TRL decodes completions without special tokens, so it may or may
    not be there); surrounding newlines are stripped from both parts as the Qwen3 chat template does.
    """
    if THINK_CLOSE not in text:
        return None, text
    head, _, answer = text.rpartition(THINK_CLOSE)
    reasoning = head.split(THINK_OPEN, 1)[-1] if THINK_OPEN in head else head
    return reasoning.strip("\n"), answer.lstrip("\n")


def reasoning_cut_off(text: str) -> bool:
    """Whether a reasoning block was opened and never closed (``<think>`` without a later ``</think>``): the
    generation stopped inside the reasoning, so there is no answer."""
    opened = text.rfind(THINK_OPEN)
    return opened >= 0 and text.find(THINK_CLOSE, opened) < 0


def is_empty_answer(answer: str) -> bool:
    """Whether an answer (the text after the reasoning) is empty once end-of-turn markers and whitespace are
    removed."""
    for marker in END_OF_TURN_TEXTS:
        answer = answer.replace(marker, "")
    return answer.strip() == ""


def to_conversation(
    prompt: str | Sequence[Message], completion: str | Sequence[Message] | None = None
) -> Conversation:
    """Build a conversation from TRL's prompt/completion formats.

    ``prompt`` is a string (standard format) or a message list (conversational format); ``completion`` is a
    string or a list of assistant messages (TRL passes ``[{"role": "assistant", "content": ...}]``). Without a
    completion the result ends with the user turn (prompt moderation).
    """
    messages: Conversation = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    )
    if completion is not None:
        if isinstance(completion, str):
            messages.append({"role": "assistant", "content": completion})
        else:
            messages.extend(dict(m) for m in completion)
    return messages


def with_last_content(conversation: Conversation, content: str) -> Conversation:
    """A copy of ``conversation`` whose last message has ``content``."""
    return [*conversation[:-1], {"role": conversation[-1]["role"], "content": content}]


def check_thinking_mode(thinking: str) -> ThinkingMode:
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking={thinking!r} is not accepted; use one of {', '.join(THINKING_MODES)}")
    return thinking  # type: ignore[return-value]
