"""Turn splitting: a completion -> the policy's turns and the tool results between them.

One completion of an agent loop interleaves what the policy wrote (assistant turns: text, reasoning, tool calls)
with what its tools answered. Every reward judges the policy's turns only, each in the context of the
conversation before it, so every way a completion arrives is split here:

* **messages** (TRL's conversational format): :func:`completion_turns`, each assistant turn as the flattened
  conversation the Gen guard judges (:mod:`guard_reward.rewards.trajectory`);
* **token ids and a tool mask** (TRL's ``tool_mask``, verl's ``response_mask``): :func:`check_tool_mask`,
  :func:`policy_turns`, :func:`turn_contexts` and :func:`scoring_units`, what the Stream guard scores
  (:mod:`guard_reward.rewards.token`); :func:`locate_turns`, where each assistant message's tokens are
  (:mod:`guard_reward.rewards.turn_level`);
* **a verl response** (ids with ``response_mask``, or text with ChatML markers): :func:`turns_from_mask` and
  :func:`turns_from_chatml` rebuild its messages (:mod:`guard_reward.integrations.verl`).

Tool results are rendered as Qwen3's own template renders them (``<tool_response>`` blocks in a user turn), so
the guard reads them as context on the user side, never as the policy's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from guard_reward.conversations import (
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_OPEN,
    Conversation,
    check_message,
    flatten_tools,
    read_tool_responses,
    render_tool_calls,
    render_tool_responses,
    split_thinking,
)
from guard_reward.rewards.inputs import check_pair, normalise_message

# -- messages: TRL's conversational completions
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turns:
    """The assistant turns of one completion, each as the conversation the guard judges.

    Attributes:
        conversations: per assistant turn, the flattened conversation so far ending with that turn
            (:mod:`guard_reward.conversations`): prompt, earlier turns (their answers and tool calls, reasoning
            left out), tool results as ``<tool_response>`` user turns, then the turn itself (reasoning, answer
            and tool calls).
        tool_calls: per assistant turn, how many tool calls it made: its ``tool_calls`` and the
            ``<tool_call>`` blocks its answer text holds (a raw rollout, e.g. verl's, leaves them in the text).
        ends_with_tool: the completion ends with tool results (the policy's next turn was cut off).
    """

    conversations: list[Conversation]
    tool_calls: list[int]
    ends_with_tool: bool


def completion_turns(prompt: Any, completion: Any, index: int = 0) -> Turns:
    """Split one TRL sample into its judged assistant turns (see :class:`Turns`).

    ``completion`` is a string (one assistant turn) or TRL's message list: assistant messages (``content`` a
    string, or ``None`` next to ``tool_calls``) and ``tool`` messages, in order.

    Raises:
        TypeError / ValueError naming the sample and message when the sample is malformed (an unknown role,
        tool-call arguments that are neither a JSON object nor a string, a ``None`` content without tool
        calls, no assistant turn).
    """
    check_pair(index, prompt, completion)
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    context = flatten_tools([normalise_message(m) for m in prompt_messages], f"sample {index}, prompt")
    messages = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    conversations: list[Conversation] = []
    calls: list[int] = []
    tools: list[dict[str, Any]] = []  # a run of tool results, flattened into one user turn when it ends
    for j, raw in enumerate(messages):
        where = f"sample {index}, completion message {j}"
        m = check_message(normalise_message(raw), where)
        if m["role"] == "tool":
            tools.append(m)
            continue
        context.extend(flatten_tools(tools, where) if tools else [])
        tools = []
        if m["role"] != "assistant":
            context.extend(flatten_tools([m], where))
            continue
        conversations.append(
            [*context, {"role": "assistant", "content": render_tool_calls(m["content"], m["tool_calls"])}]
        )
        # earlier turns' reasoning is not context (as in Qwen3's template); a raw rollout's calls are in the text
        _, answer = split_thinking(m["content"])
        calls.append(len(m["tool_calls"]) + answer.count(TOOL_CALL_OPEN))
        context.append({"role": "assistant", "content": render_tool_calls(answer, m["tool_calls"])})
    if not conversations:
        raise ValueError(f"sample {index}: the completion has no assistant message, so nothing to judge")
    return Turns(conversations, calls, bool(tools))


# -- token ids and a tool mask: the policy's own tokens among tool results
# ----------------------------------------------------------------------------------------------------------


def check_tool_mask(
    tool_mask: Any, lengths: Sequence[int], *, name: str = "tool_mask"
) -> list[list[bool]] | None:
    """Validate a tool mask against the completions it describes; ``None`` when there is none.

    Accepted: one row per completion, either a list of 0/1 (or bool) sequences with exactly one entry per
    completion token (TRL's ``tool_mask`` before padding), or a 2-D tensor ``(B, T)`` with ``T`` at least the
    longest completion (TRL's padded ``tool_mask``, verl's ``response_mask``); entries past a completion's end
    are ignored. 1 = a token the policy wrote, 0 = a token it did not (a tool result, the environment).

    Returns:
        ``list[list[bool]]``, row ``i`` of length ``lengths[i]``.
    """
    if tool_mask is None:
        return None
    b = len(lengths)
    accepted = (
        f"expected one row per completion ({b}) with one 0/1 per completion token (1 = the policy's own "
        "token, 0 = a tool's), as a list of lists or a (B, T) tensor with T >= the longest completion"
    )
    if not isinstance(tool_mask, torch.Tensor) and hasattr(tool_mask, "shape"):  # a NumPy array (verl)
        tool_mask = torch.as_tensor(tool_mask)
    if isinstance(tool_mask, torch.Tensor):
        if tool_mask.dim() != 2 or tool_mask.shape[0] != b or tool_mask.shape[1] < max(lengths, default=0):
            raise ValueError(f"{name} has shape {tuple(tool_mask.shape)}; {accepted}")
        rows: list[Any] = [tool_mask[i, :n].tolist() for i, n in enumerate(lengths)]
    elif isinstance(tool_mask, (list, tuple)):
        if len(tool_mask) != b:
            raise ValueError(f"{name} has {len(tool_mask)} rows; {accepted}")
        rows = [r.tolist() if hasattr(r, "tolist") else r for r in tool_mask]
    else:
        raise TypeError(f"{name} is a {type(tool_mask).__name__}; {accepted}")
    out: list[list[bool]] = []
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        if not isinstance(row, (list, tuple)) or (not isinstance(tool_mask, torch.Tensor) and len(row) != n):
            size = len(row) if isinstance(row, (list, tuple)) else type(row).__name__
            raise ValueError(f"{name}[{i}] has {size} entries but completion {i} has {n} tokens; {accepted}")
        bad = [v for v in row if isinstance(v, bool) is False and v not in (0, 1)]
        if bad:
            raise ValueError(f"{name}[{i}] holds {bad[0]!r}; {accepted}")
        out.append([bool(v) for v in row])
    return out


def mask_runs(keep: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """A ``(T,)`` tool mask cut into its maximal runs, in order: ``[(start, end, own), ...]`` with
    ``keep[start:end]`` all equal to ``own`` (True: the policy's tokens, False: a tool's)."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for t in range(1, len(keep) + 1):
        if t == len(keep) or bool(keep[t]) != bool(keep[start]):
            runs.append((start, t, bool(keep[start])))
            start = t
    return runs


def policy_turns(keep: Sequence[bool]) -> list[tuple[int, int]]:
    """The maximal runs of the policy's own tokens: ``[(start, end), ...]`` with ``keep[start:end]`` all True."""
    return [(start, end) for start, end, own in mask_runs(keep) if own]


#: Why a completion's assistant turns could not be placed on its tokens (:func:`locate_turns`).
TURN_COUNT_MISMATCH = "turn_count_mismatch"
TURN_NOT_FOUND = "turn_not_found"


def assistant_messages(completion: Any) -> list[dict[str, Any]]:
    """The assistant turns of a TRL completion, in order: a string is one turn; a message list, its
    ``assistant`` messages."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return [m for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]


def _squeezed(text: str) -> str:
    return "".join(text.split())


def locate_turns(
    tokenizer: Any, completion: Any, ids: Sequence[int], keep: Sequence[bool] | None
) -> list[tuple[int, int]] | str:
    """Where each assistant turn of ``completion`` lies in its token ids ``(T,)``: ``[(start, end), ...]`` in
    turn order, or the reason it cannot be told.

    The turns are the runs of policy tokens of the tool mask ``keep`` ``(T,)`` (all of ``ids`` without one). Their
    number must equal the completion's assistant messages (else :data:`TURN_COUNT_MISMATCH`), and, with a
    ``tokenizer``, each run decoded must hold its message's answer text and the names of its tool calls
    (whitespace ignored; else :data:`TURN_NOT_FOUND`), so turns out of order or a mask from another completion
    are never taken for these turns. Without a tokenizer only the count is checked.
    """
    messages = assistant_messages(completion)
    runs = policy_turns(keep) if keep is not None else ([(0, len(ids))] if len(ids) else [])
    if len(runs) != len(messages):
        return TURN_COUNT_MISMATCH
    if tokenizer is None:
        return runs
    for (start, end), message in zip(runs, messages, strict=True):
        text = _squeezed(tokenizer.decode(list(ids[start:end]), skip_special_tokens=False))
        content = message.get("content")
        _, answer = split_thinking(content if isinstance(content, str) else "")
        names = [
            str((call.get("function") or {}).get("name", "")) if isinstance(call, dict) else ""
            for call in message.get("tool_calls") or []
        ]
        if any(_squeezed(needle) not in text for needle in (answer, *names) if _squeezed(needle)):
            return TURN_NOT_FOUND
    return runs


#: What a guard reads in place of a tool result it is not shown.
EMPTY_TOOL_RESPONSE = render_tool_responses([""])


def tool_results(completion: Any) -> list[str] | None:
    """Per block of consecutive ``tool`` messages in a TRL completion (a message list), their contents joined the
    way Qwen3 templates render them (``<tool_response>\\n...\\n</tool_response>`` each); ``None`` when the
    completion is not a message list."""
    if not isinstance(completion, (list, tuple)):
        return None
    blocks: list[list[str]] = []
    previous = None
    for message in completion:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if previous != "tool":
                blocks.append([])
            content = message.get("content")
            blocks[-1].append(content if isinstance(content, str) else str(content))
        previous = role
    return [render_tool_responses(b) for b in blocks]


def turn_contexts(
    tokenizer: Any,
    prompt: Any,
    completion: Any,
    ids: Sequence[int],
    keep: Sequence[bool],
    *,
    tool_text: bool = True,
) -> list[tuple[int, int, list[dict[str, str]]]]:
    """Split an agent trajectory into the policy's turns, each with the conversation before it.

    ``ids`` ``(T,)`` is one completion (the policy's tokens and the tools' interleaved, as TRL's tool loop and
    verl's multi-turn rollouts build it) and ``keep`` ``(T,)`` its tool mask. Each run of policy tokens is one
    turn; the conversation before turn ``k`` is the prompt, then every earlier turn as an assistant message
    (its decoded text, tool-call markup included: what the policy wrote) and every tool result as a user
    message holding ``<tool_response>`` blocks. A tool result is rendered that way by Qwen3's own template, and a
    guard's prompt must end with a user turn. The tool text comes from the completion's ``tool`` messages when
    they match the tool runs one to one, else from the decoded tool tokens. With ``tool_text=False`` each tool
    result is an empty ``<tool_response>`` block: the guard knows a tool answered, not what it said.

    Returns:
        ``[(start, end, context), ...]``: the turn is ``ids[start:end]``; ``context`` ends with a user message.
    """
    if isinstance(prompt, str):
        conv: list[dict[str, str]] = [{"role": "user", "content": prompt}]
    else:
        conv = [{"role": str(m["role"]), "content": m["content"]} for m in prompt]
    runs = mask_runs(keep)
    gaps = [(start, end) for start, end, own in runs if not own]  # the tool runs
    results = tool_results(completion)
    if not tool_text:
        results = [EMPTY_TOOL_RESPONSE] * len(gaps)
    elif results is None or len(results) != len(gaps):
        results = [tokenizer.decode(list(ids[s:e]), skip_special_tokens=True).strip() for s, e in gaps]
    # Walk the runs in order: a policy turn is scored in the context built so far, then joins it.
    out: list[tuple[int, int, list[dict[str, str]]]] = []
    k = 0
    for start, end, own in runs:
        if own:
            out.append((start, end, list(conv)))
            text = tokenizer.decode(list(ids[start:end]), skip_special_tokens=True)
            conv = [*conv, {"role": "assistant", "content": text}]
        else:
            conv = [*conv, {"role": "user", "content": results[k]}]
            k += 1
    return out


def scoring_units(
    tokenizer: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    ids: Sequence[Sequence[int]],
    keep: Sequence[Sequence[bool]] | None,
    *,
    tool_text: bool = True,
) -> tuple[list[tuple[int, int]], list[Any], list[Any], list[list[int]]]:
    """What a per-token guard scores for a batch: each completion whole, or, where ``keep`` (a checked tool
    mask) has zeros, each policy turn in its context (:func:`turn_contexts`).

    Returns:
        ``(where, prompts, completions, ids)`` per unit: ``where = (sample, offset of the unit in its
        completion)``; a turn's completion is ``[]`` (message format: judged as an assistant message).
    """
    where: list[tuple[int, int]] = []
    u_prompts: list[Any] = []
    u_completions: list[Any] = []
    u_ids: list[list[int]] = []
    for i, row in enumerate(ids):
        if keep is None or all(keep[i]):
            where.append((i, 0))
            u_prompts.append(prompts[i])
            u_completions.append(completions[i])
            u_ids.append(list(row))
            continue
        for start, end, context in turn_contexts(
            tokenizer, prompts[i], completions[i], row, keep[i], tool_text=tool_text
        ):
            where.append((i, start))
            u_prompts.append(context)
            u_completions.append([])
            u_ids.append(list(row[start:end]))
    return where, u_prompts, u_completions, u_ids


# -- verl's response: ids with response_mask, or text with ChatML turn markers
# ----------------------------------------------------------------------------------------------------------

_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?=<\|im_start\|>|$)", re.S)
_END = re.compile(r"(?:\s*(?:<\|im_end\|>|<\|endoftext\|>))+\s*$")


def tool_messages(text: str) -> list[dict[str, str]]:
    """The tool results in a stretch of non-policy text: one message per ``<tool_response>`` block, or the
    whole text (end markers and role headers removed) when it has none; nothing for a bare generation prompt."""
    blocks = read_tool_responses(text)
    if blocks:
        return [{"role": "tool", "content": b} for b in blocks]
    bare = re.sub(r"<\|im_(?:start|end)\|>(?:\w+\n)?", "", text).strip()
    if bare in ("", "user", "assistant", "tool"):
        return []
    return [{"role": "tool", "content": bare}]


def turns_from_mask(tokenizer: Any, ids: Sequence[int], mask: Sequence[int]) -> list[dict[str, str]]:
    """Messages from response ids and verl's ``response_mask`` (``(T,)`` each, valid tokens only): runs of 1
    are assistant turns (decoded without special tokens), runs of 0 tool results."""
    out: list[dict[str, str]] = []
    for start, end, own in mask_runs([bool(int(m)) for m in mask[: len(ids)]]):
        run = list(ids[start:end])
        if own:
            out.append({"role": "assistant", "content": tokenizer.decode(run, skip_special_tokens=True)})
        else:
            out.extend(tool_messages(tokenizer.decode(run, skip_special_tokens=False)))
    return out


def turns_from_chatml(text: str) -> list[dict[str, str]] | None:
    """Messages from a response decoded with special tokens that continues an open assistant turn and holds
    further ChatML turns; ``None`` when it holds none (a single-turn response)."""
    if "<|im_start|>" not in text:
        return None
    out: list[dict[str, str]] = []
    for role, body in _CHATML_TURN.findall("<|im_start|>assistant\n" + text):
        if role == "assistant":
            out.append({"role": "assistant", "content": _END.sub("", body)})
        elif role == "tool" or (role == "user" and TOOL_RESPONSE_OPEN in body):
            out.extend(tool_messages(body))
        else:
            out.append({"role": role, "content": _END.sub("", body)})
    return out
