"""Rendered chat text -> TRL conversational messages, for the chat formats RL policies are trained in.

OpenRLHF (and verl's token-level path) hand a reward only text: the prompt rendered by the policy's chat template
and the decoded response, special tokens included. To judge it like a TRL completion, the text is parsed back
into messages. Recognised formats, each by its turn markers:

* ``chatml`` — Qwen2.5/Qwen3 (``<|im_start|>role\\n…<|im_end|>``). Qwen3's ``<tool_call>{json}</tool_call>``
  blocks in an assistant turn become ``tool_calls``; a user turn made only of ``<tool_response>`` blocks (how
  Qwen3's template renders tool results) and a ``tool`` turn become ``tool`` messages, named after the call
  they answer (by position).
* ``llama3`` — Llama 3.x (``<|start_header_id|>role<|end_header_id|>\\n\\n…<|eot_id|>``): an assistant turn that is
  one JSON ``{"name", "parameters"}`` object is a tool call, ``ipython`` turns are tool results; the template's own
  date preamble in the system turn is dropped.
* ``gemma`` — Gemma (``<start_of_turn>user|model\\n…<end_of_turn>``).
* ``deepseek`` — DeepSeek-R1 and its distills (``<｜User｜>…<｜Assistant｜>…<｜end▁of▁sentence｜>``); its generation
  prompt opens a ``<think>`` block, which stays in front of the response.
* ``harmony`` — gpt-oss (``<|start|>header<|message|>…<|end|>``): the ``analysis`` channel becomes the reasoning
  (a ``<think>`` block), ``final`` the answer, ``to=functions.NAME`` calls ``tool_calls`` and tool replies
  ``tool`` messages; the template's own ``system`` turn (model identity, dates, channels) is dropped and the
  ``developer`` turn's instructions become the system message.

Anything else is one user message (the prompt) and one assistant message (the response). Reasoning stays in
the assistant content as ``<think>…</think>`` (the form the rewards split), and every trailing end-of-turn or
end-of-text marker of these formats is removed from a content, so an empty answer reads as empty.

Unlike the official routes (each framework's own ``apply_chat_template`` going one way only), this goes back from
text to messages, so it is keyed on markers rather than on a tokenizer: nothing is loaded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
#: End-of-turn / end-of-text markers of the recognised formats, removed from the end of every content.
END_MARKERS = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>",
    "</s>", "<|end|>", "<|return|>", "<|call|>", "<｜end▁of▁sentence｜>",
)  # fmt: skip
#: Begin-of-text markers a decoded prompt starts with.
BOS_MARKERS = ("<|begin_of_text|>", "<bos>", "<｜begin▁of▁sentence｜>", "<s>")

#: A raw turn: ``(role or harmony header, content, closed)``; ``closed`` is False for the open turn at the end.
Turn = tuple[str, str, bool]
Message = dict[str, Any]


def strip_end_markers(text: str) -> str:
    """``text`` without trailing end-of-turn markers (and the whitespace between them)."""
    while True:
        stripped = text.rstrip()
        for marker in END_MARKERS:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                break
        else:
            return text


def _turns(pattern: re.Pattern[str], text: str) -> list[Turn]:
    return [(m.group(1).strip(), m.group(2), bool(m.group(3))) for m in pattern.finditer(text)]


_CHATML = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)(?:(<\|im_end\|>)|(?=<\|im_start\|>)|\Z)", re.S)
_LLAMA3 = re.compile(
    r"<\|start_header_id\|>(.*?)<\|end_header_id\|>\n\n(.*?)(?:(<\|eot_id\|>|<\|eom_id\|>)|(?=<\|start_header_id\|>)|\Z)",
    re.S,
)
_GEMMA = re.compile(r"<start_of_turn>([^\n]*)\n(.*?)(?:(<end_of_turn>)|(?=<start_of_turn>)|\Z)", re.S)
_HARMONY = re.compile(
    r"<\|start\|>(.*?)<\|message\|>(.*?)(?:(<\|end\|>|<\|return\|>|<\|call\|>)|(?=<\|start\|>)|\Z)", re.S
)
_DS_USER, _DS_ASSISTANT, _DS_END = "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"
_DEEPSEEK = re.compile(
    f"({_DS_USER}|{_DS_ASSISTANT})(.*?)(?:({_DS_END})|(?={_DS_USER}|{_DS_ASSISTANT})|\\Z)", re.S
)
_LLAMA3_PREAMBLE = re.compile(
    r"^(?:Environment: ipython\n)?Cutting Knowledge Date: [^\n]*\nToday Date: [^\n]*\n\n"
)


def _deepseek_turns(text: str) -> list[Turn]:
    first = min((i for i in (text.find(_DS_USER), text.find(_DS_ASSISTANT)) if i >= 0), default=len(text))
    head = text[:first]
    for bos in BOS_MARKERS:
        head = head.removeprefix(bos)
    turns: list[Turn] = [("system", head, True)] if head.strip() else []
    for m in _DEEPSEEK.finditer(text):
        role = "user" if m.group(1) == _DS_USER else "assistant"
        # a user turn ends where the assistant's begins; only an assistant turn has an end marker
        turns.append((role, m.group(2), (role == "user" and m.end() < len(text)) or bool(m.group(3))))
    return turns


#: name -> (marker identifying the format, raw-turn splitter).
FORMATS: dict[str, tuple[str, Callable[[str], list[Turn]]]] = {
    "chatml": ("<|im_start|>", lambda t: _turns(_CHATML, t)),
    "llama3": ("<|start_header_id|>", lambda t: _turns(_LLAMA3, t)),
    "gemma": ("<start_of_turn>", lambda t: _turns(_GEMMA, t)),
    "deepseek": (_DS_USER, _deepseek_turns),
    "harmony": ("<|start|>", lambda t: _turns(_HARMONY, t)),
}


def detect_format(text: str) -> str | None:
    """The name of the chat format ``text`` is rendered in (see :data:`FORMATS`), or ``None``."""
    for name, (marker, _) in FORMATS.items():
        if marker in text:
            return name
    return None


def raw_turns(text: str, fmt: str) -> list[Turn]:
    """The turns of ``text`` in format ``fmt``, contents as rendered (markers inside them untouched)."""
    return FORMATS[fmt][1](text)


# ---- raw turns -> TRL messages ---------------------------------------------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_TOOL_RESPONSE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.S)


def _tool_call(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _chatml_assistant(content: str) -> Message:
    """An assistant content with ``<tool_call>`` blocks (after any reasoning) -> content and ``tool_calls``. A
    block that is not a JSON object with a ``name`` stays in the content (what the model wrote is judged)."""
    head, sep, answer = content.rpartition(THINK_CLOSE)
    calls, kept = [], []
    last = 0
    for m in _TOOL_CALL.finditer(answer):
        try:
            call = json.loads(m.group(1))
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError("no name")
        except ValueError:
            logger.warning(
                "a <tool_call> block is not a JSON object with a name; kept as text: %.80s", m.group(1)
            )
            continue
        kept.append(answer[last : m.start()])
        last = m.end()
        calls.append(_tool_call(call["name"], call.get("arguments", {})))
    kept.append(answer[last:])
    text = head + sep + "".join(kept).rstrip()
    message: Message = {"role": "assistant", "content": text if calls else content}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_messages(contents: list[str], calls: list[dict[str, Any]], answered: int) -> list[Message]:
    """Tool results, named after the calls they answer: the ``answered``-th call since the last assistant turn
    onwards, in order (``""`` when there is no such call)."""
    out = []
    for k, content in enumerate(contents, start=answered):
        name = calls[k]["function"]["name"] if k < len(calls) else ""
        out.append({"role": "tool", "name": name, "content": content})
    return out


def _chatml_messages(turns: list[Turn]) -> list[Message]:
    out: list[Message] = []
    calls: list[dict[str, Any]] = []
    answered = 0
    for role, content, _ in turns:
        content = strip_end_markers(content)
        responses = _TOOL_RESPONSE.findall(content)
        if role == "tool" or (role == "user" and responses and not _TOOL_RESPONSE.sub("", content).strip()):
            results = _tool_messages(responses or [content], calls, answered)
            out.extend(results)
            answered += len(results)
        elif role == "assistant":
            out.append(_chatml_assistant(content))
            calls, answered = out[-1].get("tool_calls", []), 0
        else:
            out.append({"role": role, "content": content})
    return out


def _json_text(content: str) -> str:
    """A tool result the template wrote as a JSON string (``"21 C"``; gpt-oss and Llama 3.2 do) -> its text."""
    if content.startswith('"'):
        try:
            text = json.loads(content)
        except ValueError:
            return content
        if isinstance(text, str):
            return text
    return content


def _llama3_call(content: str) -> dict[str, Any] | None:
    """Llama 3's JSON tool call (``{"name": ..., "parameters": {...}}``, the whole assistant turn), or ``None``."""
    if not content.lstrip().startswith("{"):
        return None
    try:
        call = json.loads(content)
    except ValueError:
        return None
    if isinstance(call, dict) and isinstance(call.get("name"), str) and "parameters" in call:
        return _tool_call(call["name"], call["parameters"])
    return None


def _llama3_messages(turns: list[Turn]) -> list[Message]:
    out: list[Message] = []
    calls: list[dict[str, Any]] = []
    answered = 0
    for role, content, _ in turns:
        content = strip_end_markers(content)
        if role == "system":
            content = _LLAMA3_PREAMBLE.sub("", content)
            if not content.strip():
                continue  # the template's own date preamble, not the caller's system prompt
        if role in ("ipython", "tool"):
            out.extend(_tool_messages([_json_text(content)], calls, answered))
            answered += 1
            continue
        call = _llama3_call(content) if role == "assistant" else None
        if call is not None:
            out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            calls, answered = [call], 0
        else:
            out.append({"role": role, "content": content})
    return out


def _gemma_messages(turns: list[Turn]) -> list[Message]:
    return [
        {"role": "assistant" if role == "model" else role, "content": strip_end_markers(content)}
        for role, content, _ in turns
    ]


def _harmony_messages(turns: list[Turn]) -> list[Message]:
    """Consecutive assistant turns (analysis, commentary calls, final) form one assistant message."""
    out: list[Message] = []
    for header, content, closed in turns:
        content = strip_end_markers(content)
        role = header.split("<|channel|>")[0].split()[0] if header else ""
        channel = header.split("<|channel|>")[1].split()[0] if "<|channel|>" in header else ""
        if role == "system":
            continue  # the template's own: model identity, dates, channel rules
        if role == "developer":
            instructions = content.split("# Tools")[0].removeprefix("# Instructions\n\n").strip()
            if instructions:
                out.append({"role": "system", "content": instructions})
        elif role == "assistant":
            if not out or out[-1]["role"] != "assistant" or "_final" in out[-1]:
                out.append({"role": "assistant", "content": "", "_reasoning": None})
            message = out[-1]
            target = re.search(r"to=functions\.([^\s<]+)", header)
            if target:
                try:
                    arguments: Any = json.loads(content)
                except ValueError:
                    arguments = content
                message.setdefault("tool_calls", []).append(_tool_call(target.group(1), arguments))
            elif channel == "final":
                message["content"], message["_final"] = content, True
            else:  # analysis (or commentary without a call): reasoning; an open one was cut off
                message["_reasoning"] = (message["_reasoning"] or "") + content
                message["_open"] = not closed
        elif role.startswith("functions."):
            out.append(
                {"role": "tool", "name": role.removeprefix("functions."), "content": _json_text(content)}
            )
        else:
            out.append({"role": role, "content": content})
    for message in out:
        reasoning = message.pop("_reasoning", None)
        message.pop("_final", None)
        if message.pop("_open", False):
            message["content"] = f"{THINK_OPEN}\n{reasoning}"  # no answer yet: the reasoning was cut off
        elif reasoning is not None:
            message["content"] = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{message['content']}"
    return out


def _deepseek_messages(turns: list[Turn]) -> list[Message]:
    return [{"role": role, "content": strip_end_markers(content)} for role, content, _ in turns]


_CONVERTERS: dict[str, Callable[[list[Turn]], list[Message]]] = {
    "chatml": _chatml_messages,
    "llama3": _llama3_messages,
    "gemma": _gemma_messages,
    "deepseek": _deepseek_messages,
    "harmony": _harmony_messages,
}


def to_messages(turns: list[Turn], fmt: str) -> list[Message]:
    """Raw turns of format ``fmt`` -> TRL messages (``role``, ``content``, ``tool_calls``, tool ``name``)."""
    return _CONVERTERS[fmt](turns)


def split_rendered(prompt: str, query: str) -> tuple[list[Message], list[Message]]:
    """``(prompt messages, completion messages)`` of a rendered prompt and the query that continues it (prompt
    text + decoded response, special tokens included).

    The completion is every turn of the query after the prompt's closed turns: the open turn the generation
    prompt began (e.g. ``<think>\\n`` of DeepSeek-R1, Qwen3's empty think block) is completed by the response and
    keeps its opening. A multi-turn response (tool calls, tool results, more assistant turns) gives several
    messages. Raises ``ValueError`` when the query does not start with the prompt.
    """
    if not query.startswith(prompt):
        raise ValueError("the query does not start with its prompt, so the response is unknown")
    fmt = detect_format(prompt)
    if fmt is None:
        content = prompt
        for bos in BOS_MARKERS:
            content = content.removeprefix(bos)
        response = strip_end_markers(query[len(prompt) :])
        return [{"role": "user", "content": strip_end_markers(content).strip()}], [
            {"role": "assistant", "content": response}
        ]
    prompt_turns = raw_turns(prompt, fmt)
    closed = len(prompt_turns) - (1 if prompt_turns and not prompt_turns[-1][2] else 0)
    query_turns = raw_turns(query, fmt)
    completion = to_messages(query_turns[closed:], fmt)
    if not completion:  # the response added no turn of its own: nothing generated, or text without markers
        completion = [{"role": "assistant", "content": strip_end_markers(query[len(prompt) :])}]
    return to_messages(query_turns[:closed], fmt), completion
