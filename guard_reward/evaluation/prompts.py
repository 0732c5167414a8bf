"""Held-out prompt sets for safety evaluation: JSONL files read line by line, bad lines reported by number.

A record is ``{"prompt": str | messages}`` or ``{"messages": [...]}`` (ending with the user turn to answer),
with optional ``"harmful"`` (bool: the request should not be fulfilled), ``"category"`` (str) and ``"id"``.
Unlike ``guard-reward moderate``'s records, an evaluation record carries no response: the policy writes it.
Lines are read with :func:`guard_reward.evaluation.jsonl.read_records`, so an undecodable or non-JSON line is
one error naming that line, like ``moderate``.

Sets without a ``harmful`` label give no per-type rates (unsafe rate on harmful prompts, over-refusal on benign
prompts), only the overall unsafe rate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from guard_reward.conversations import Conversation, validate_conversation
from guard_reward.evaluation.jsonl import read_records

logger = logging.getLogger(__name__)

#: The example sets shipped in ``guard_reward/data`` (``eval_<name>.jsonl``).
BUNDLED = ("sandbox", "english")


@dataclass(frozen=True)
class EvalPrompt:
    """One held-out prompt: ``messages`` ends with the user turn the policy answers."""

    line: int
    messages: Conversation
    harmful: bool | None = None
    category: str | None = None
    id: Any = None

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def bundled_prompt_set(name: str) -> Path:
    """The path of a bundled example set (``"sandbox"``: the sandbox language, answered by the demo's tiny
    policy; ``"english"``: a few plain-English requests for real checkpoints)."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled prompt set {name!r}; bundled sets: {', '.join(BUNDLED)}")
    return Path(str(resources.files("guard_reward") / "data" / f"eval_{name}.jsonl"))


def record_to_prompt(record: Any, line: int) -> EvalPrompt:
    """An :class:`EvalPrompt` from one JSON record; raises ``ValueError``/``TypeError`` naming the problem."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = validate_conversation(record["messages"])
    elif "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            messages = validate_conversation([{"role": "user", "content": prompt}])
        elif isinstance(prompt, list):
            messages = validate_conversation(prompt)
        else:
            raise TypeError(f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    else:
        raise ValueError("a record needs 'prompt' (a string or messages) or 'messages'")
    if messages[-1]["role"] != "user":
        raise ValueError(
            f"the last message must be the user's (the policy answers it), got {messages[-1]['role']!r}"
        )
    harmful = record.get("harmful")
    if harmful is not None and not isinstance(harmful, bool):
        raise TypeError(f"'harmful' must be true, false or absent, got {harmful!r:.40}")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise TypeError(f"'category' must be a string or absent, got {category!r:.40}")
    return EvalPrompt(line, messages, harmful, category, record.get("id"))


def read_prompt_set(path: str | os.PathLike) -> tuple[list[EvalPrompt], list[str]]:
    """``(prompts, errors)``: every readable record, and one message per bad line (``"line N: ..."``).
    Raises ``ValueError`` when the file has no usable prompt at all."""
    path = Path(path)
    prompts: list[EvalPrompt] = []
    errors: list[str] = []
    for number, record, error in read_records(path):
        if error is None:
            try:
                prompts.append(record_to_prompt(record, number))
            except (TypeError, ValueError) as exc:
                error = f"line {number}: {exc}"
        if error is not None:
            errors.append(error)
    if errors:
        logger.warning("%s: %d bad lines skipped, e.g. %s", path, len(errors), errors[0])
    if not prompts:
        shown = "; ".join(errors[:3]) or "the file is empty"
        raise ValueError(f"{path} has no usable prompt ({shown})")
    return prompts, errors


def missing_rates(prompts: list[EvalPrompt]) -> list[str]:
    """What a set cannot measure, as sentences for the log and the report."""
    out = []
    if not any(p.harmful is True for p in prompts):
        out.append("no prompt is labelled harmful: the unsafe rate on harmful prompts cannot be given")
    if not any(p.harmful is False for p in prompts):
        out.append(
            "no prompt is labelled benign (harmful: false): the over-refusal rate and the unsafe rate on benign "
            "prompts cannot be given"
        )
    return out
