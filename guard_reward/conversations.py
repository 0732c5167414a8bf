"""Conversations: validation, TRL input formats, tool calls, and reasoning/answer splitting.

A conversation is a list of ``{"role", "content"}`` messages (TRL's conversational format). Both guards judge
its last message: a user message is prompt moderation, an assistant message is response moderation (the
Qwen3Guard-Gen template's own rule). Everything that reaches a guard goes through :func:`validate_conversation`,
so bad input fails here with one clear message instead of deep inside a chat template.

Tool use (TRL's and OpenAI's message shapes) is flattened into plain messages before any template sees it,
because the Qwen3Guard-Gen template reads only ``content`` and silently drops ``tool`` messages and
``tool_calls``. The text used is the one Qwen3's own chat template writes for the policy, so the guard reads
what the policy's tokens say:

* an assistant message's ``tool_calls`` are appended to its content, one block per call::

      <tool_call>
      {"name": "send_email", "arguments": {"to": "a@b.c", "body": "..."}}
      </tool_call>

  (a newline between the text and the first block and between blocks; arguments given as a dict are written
  as JSON, arguments given as a string are written as they are);
* consecutive ``tool`` messages become one ``user`` message, each result wrapped as
  ``<tool_response>\n...\n</tool_response>`` and joined by newlines (Qwen3 puts tool results in a user turn
  the same way). Tool results are thus context the guard reads on the user side, never the assistant's words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Message = dict[str, str]
Conversation = list[Message]
ThinkingMode = Literal["answer", "separate", "whole"]

THINKING_MODES: tuple[str, ...] = ("answer", "separate", "whole")
JUDGED_ROLES = ("user", "assistant")
KNOWN_ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
#: End-of-turn markers a decoded completion may still carry (when decoded with special tokens).
END_OF_TURN_TEXTS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")


def validate_conversation(conversation: Any, index: int | None = None) -> Conversation:
    """Check one conversation and return it as a list of plain ``{"role", "content"}`` dicts, tool calls and
    tool results flattened as the module docstring says.

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
    out = flatten_tools(conversation, where)
    last = conversation[-1]["role"]
    if last not in JUDGED_ROLES:
        raise ValueError(
            f"{where}: the last message is {last!r}; the judged (last) message must be 'user' "
            "(prompt moderation) or 'assistant' (response moderation)"
        )
    return out


def check_message(message: Any, where: str) -> dict[str, Any]:
    """Check one message (``system``/``user``/``assistant``/``tool``; an assistant message may carry
    ``tool_calls`` and then a ``None`` content) and return it with its role, content and tool calls only.

    Raises:
        ValueError / TypeError naming ``where`` and what is accepted.
    """
    if not isinstance(message, Mapping) or "role" not in message:
        raise TypeError(f"{where}: expected a dict with 'role' and 'content', got {message!r:.80}")
    role = message["role"]
    if role not in KNOWN_ROLES:
        raise ValueError(f"{where}: unknown role {role!r}; accepted: {', '.join(KNOWN_ROLES)}")
    calls = message.get("tool_calls") if role == "assistant" else None
    if calls is not None:
        if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
            raise TypeError(f"{where}: tool_calls must be a list of calls, got {type(calls).__name__}")
        calls = [check_tool_call(c, f"{where}, tool call {k}") for k, c in enumerate(calls)]
    if "content" not in message and not calls:
        raise TypeError(f"{where}: expected a dict with 'role' and 'content', got {message!r:.80}")
    content = message.get("content")
    if content is None:
        if not calls:
            raise TypeError(
                f"{where}: content is None and the message has no tool_calls; an assistant turn with nothing "
                "to say is an empty string"
            )
        content = ""
    if role == "tool" and isinstance(content, list):
        content = _text_parts(content, where)
    if not isinstance(content, str):
        raise TypeError(
            f"{where}: content must be a string, got {type(content).__name__} "
            "(multimodal content parts are not supported by Qwen3Guard)"
        )
    return {"role": role, "content": content, "tool_calls": calls or []}


def check_tool_call(call: Any, where: str) -> dict[str, Any]:
    """One tool call, ``{"type": "function", "function": {"name", "arguments"}}`` (TRL, OpenAI) or
    ``{"name", "arguments"}``, as ``{"name": str, "arguments": dict | str}``; missing arguments are ``{}``."""
    if not isinstance(call, Mapping):
        raise TypeError(f"{where}: expected a dict, got {type(call).__name__}")
    kind = call.get("type", "function")
    if kind != "function":
        raise ValueError(f"{where}: type {kind!r} is not accepted; only 'function' tool calls exist")
    function = call.get("function", call)
    if not isinstance(function, Mapping):
        raise TypeError(f"{where}: 'function' must be a dict with 'name' and 'arguments'")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: the function name must be a non-empty string, got {name!r:.80}")
    arguments = function.get("arguments", {})
    if not isinstance(arguments, (str, Mapping)):
        raise TypeError(
            f"{where} ({name}): arguments must be a JSON object (dict) or a string, "
            f"got {type(arguments).__name__}"
        )
    return {"name": name, "arguments": arguments if isinstance(arguments, str) else dict(arguments)}


def render_tool_calls(content: str, calls: Sequence[Mapping[str, Any]]) -> str:
    """``content`` followed by each checked tool call as Qwen3 writes it (module docstring)."""
    blocks = []
    for call in calls:
        args = call["arguments"]
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        blocks.append(
            f'<tool_call>\n{{"name": {json.dumps(call["name"], ensure_ascii=False)}, "arguments": {text}}}\n</tool_call>'
        )
    if not blocks:
        return content
    content = content.rstrip("\n")  # Qwen3's template strips the newlines before the calls, too
    return (content + "\n" if content else "") + "\n".join(blocks)


def render_tool_responses(contents: Sequence[str]) -> str:
    """A run of tool results as the one user turn Qwen3's template writes for them: each result wrapped as
    ``<tool_response>\n...\n</tool_response>``, joined by newlines (module docstring)."""
    return "\n".join(f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}" for content in contents)


_TOOL_RESPONSE = re.compile(
    rf"{re.escape(TOOL_RESPONSE_OPEN)}\n?(.*?)\n?{re.escape(TOOL_RESPONSE_CLOSE)}", re.S
)


def read_tool_responses(text: str) -> list[str]:
    """The contents of the ``<tool_response>`` blocks in ``text``, in order (the inverse of
    :func:`render_tool_responses`; the newlines inside the tags are optional)."""
    return _TOOL_RESPONSE.findall(text)


def flatten_tools(messages: Sequence[Any], where: str = "conversation") -> Conversation:
    """Check ``messages`` and return plain ``{"role", "content"}`` messages: tool calls appended to their
    assistant message, each run of ``tool`` messages one ``user`` message of ``<tool_response>`` blocks."""
    out: Conversation = []
    results: list[str] = []  # the run of tool results in progress
    for j, message in enumerate(messages):
        m = check_message(message, f"{where}, message {j}")
        if m["role"] == "tool":
            results.append(m["content"])
            continue
        if results:
            out.append({"role": "user", "content": render_tool_responses(results)})
            results = []
        out.append({"role": m["role"], "content": render_tool_calls(m["content"], m["tool_calls"])})
    if results:
        out.append({"role": "user", "content": render_tool_responses(results)})
    return out


def _text_parts(parts: list[Any], where: str) -> str:
    """A tool result given as content parts (TRL passes multimodal tool results through): its text parts,
    other parts named in brackets (``[image]``) so the guard knows something was there."""
    texts = []
    for part in parts:
        if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, Mapping) and isinstance(part.get("type"), str):
            texts.append(f"[{part['type']}]")
        else:
            raise TypeError(f"{where}: a content part must be a dict with a 'type', got {part!r:.80}")
    return "\n".join(texts)


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
