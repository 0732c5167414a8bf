"""What Qwen3Guard-Gen judges for each conversation, and each sample's verdict from those judgements.

The official usage sends the last message as it is. Here a response is first split by the thinking mode:
``"answer"`` judges the text after ``</think>``, ``"separate"`` judges the reasoning and the answer as two units
(both must be safe: :func:`~guard_reward.guards.gen_verdicts.combine_parts`), ``"whole"`` judges the content as
it is. An **empty answer** (nothing but whitespace once the reasoning block and end-of-turn markers are gone) is
never sent as an answer: its verdict has ``empty=True`` and ``level=None``; a **cut-off reasoning block**
(``<think>`` without ``</think>``) has no answer either: ``answer_missing=True``, ``reason="no_answer"``. In both
cases ``"separate"`` and ``"whole"`` still judge the reasoning, reported in ``parts["reasoning"]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from guard_reward.conversations import (
    THINK_OPEN,
    Conversation,
    ThinkingMode,
    is_empty_answer,
    moderation_of,
    reasoning_cut_off,
    split_thinking,
    validate_conversation,
    with_last_content,
)
from guard_reward.faults import INVALID_INPUT, NO_ANSWER, OnError, SampleError
from guard_reward.guards.common import fit_to_context
from guard_reward.guards.gen_verdicts import combine_parts
from guard_reward.types import Verdict


def checked_conversations(conversations: Sequence[Any], policy: OnError) -> list[Conversation | SampleError]:
    """Validate ``moderate``'s argument: a list of conversations, each a list of ``{"role", "content"}``
    messages. A malformed one raises (``policy="raise"``) or becomes its :class:`SampleError` (``"skip"``)."""
    if not isinstance(conversations, Sequence) or isinstance(conversations, (str, bytes)):
        raise TypeError(
            "moderate(conversations): expected a list of conversations (each a list of "
            f"{{'role', 'content'}} messages), got {type(conversations).__name__}"
        )
    if len(conversations) > 0 and isinstance(conversations[0], dict):
        raise TypeError("moderate() takes a list of conversations; wrap a single conversation in a list")
    convs: list[Conversation | SampleError] = []
    for i, c in enumerate(conversations):
        try:
            convs.append(validate_conversation(c, i))
        except (TypeError, ValueError) as exc:
            if policy == "raise":
                raise
            convs.append(SampleError(INVALID_INPUT, str(exc)))
    return convs


def plan_units(
    convs: Sequence[Conversation | SampleError], mode: ThinkingMode
) -> tuple[list[Conversation], list[dict[str, Any]]]:
    """Split each conversation into the units the guard judges, per the thinking mode (module docstring).

    Returns:
        ``(units, plans)``: the conversations to judge, and per sample a plan mapping ``"answer"`` /
        ``"reasoning"`` to the index of its unit; an empty answer or a cut-off reasoning block gets no answer
        unit and a ``"status"`` (``"empty"`` / ``"no_answer"``); a malformed sample carries its ``"error"``.
    """
    units: list[Conversation] = []
    plans: list[dict[str, Any]] = []
    for conv in convs:
        plan: dict[str, Any] = {}
        plans.append(plan)
        if isinstance(conv, SampleError):
            plan["error"] = conv
            continue
        if moderation_of(conv) != "response":
            plan["answer"] = len(units)
            units.append(conv)
            continue
        content = conv[-1]["content"]
        if reasoning_cut_off(content):
            plan["status"] = "no_answer"
            reasoning: str | None = content.split(THINK_OPEN, 1)[-1].strip("\n")
            answer = ""
        else:
            reasoning, answer = split_thinking(content)
            if is_empty_answer(answer):
                plan["status"] = "empty"
        if mode != "answer" and reasoning and reasoning.strip() and "status" in plan:
            plan["reasoning"] = len(units)
            units.append(with_last_content(conv, reasoning if mode == "separate" else content))
        if "status" in plan:
            continue
        if mode == "separate" and reasoning:
            plan["reasoning"] = len(units)
            units.append(with_last_content(conv, reasoning))
        plan["answer"] = len(units)
        units.append(conv if mode == "whole" else with_last_content(conv, answer))
    return units, plans


def sample_verdict(plan: dict[str, Any], judged: dict[int, Verdict]) -> Verdict:
    """One sample's verdict from its plan (see :func:`plan_units`) and the verdicts of the judged units
    (``judged``: unit index -> verdict)."""
    if "error" in plan:
        error: SampleError = plan["error"]
        return Verdict.failed(error.reason, str(error))
    parts = {name: judged[u] for name, u in plan.items() if name in ("reasoning", "answer")}
    failed = [v for v in parts.values() if not v.probs]  # a unit that failed before or in the pass
    if failed:
        return Verdict.failed(failed[0].reason or INVALID_INPUT, failed[0].error or "", failed[0].moderation)
    if plan.get("status") == "no_answer":
        return Verdict.failed(
            NO_ANSWER,
            "the reasoning block was cut off before </think>: there is no answer to judge",
            parts=parts or None,
            answer_missing=True,
        )
    if plan.get("status") == "empty":
        return Verdict.empty_answer(parts or None)
    return combine_parts(parts)


def encode_conversation(tokenizer: Any, conv: Conversation) -> list[int]:
    """A unit's guard token ids: the Gen chat template rendered as text, then tokenized without special tokens
    (what the official usage feeds ``generate``)."""
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def render_units(
    tokenizer: Any, units: list[Conversation], limit: int, policy: str, stats: Counter[str]
) -> list[tuple[tuple[int, ...], bool, str] | SampleError]:
    """Render and tokenize each unit, fitting it to ``limit`` tokens (the context policy of
    :func:`~guard_reward.guards.common.fit_to_context`): ``(ids, truncated, moderation)``, or (``policy="skip"``)
    the :class:`SampleError` of a unit that does not fit. Counts ``stats["truncated"]``."""
    out: list[tuple[tuple[int, ...], bool, str] | SampleError] = []
    for conv in units:
        ids = encode_conversation(tokenizer, conv)
        truncated = False
        if len(ids) > limit:
            try:
                conv, truncated = fit_to_context(
                    conv, lambda c: len(encode_conversation(tokenizer, c)), limit
                )
            except SampleError as exc:
                if policy == "raise":
                    raise
                out.append(exc)
                continue
            ids = encode_conversation(tokenizer, conv)
            stats["truncated"] += 1
        out.append((tuple(ids), truncated, moderation_of(conv)))
    return out
