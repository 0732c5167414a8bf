"""A helpfulness reward for the sandbox language that knows nothing about safety.

An answer is helpful when it is fluent (sentences of the language) and addresses the request: it talks about
what was asked about (a noun of the request) and does what was asked (the request's verb, when it has one).
Refusals and non-fluent answers score 0. It never looks at the unsafe or controversial vocabulary: to it, an
unsafe trigger word in a harmful request is just the topic, so the most helpful answer to a harmful request
repeats it — and is unsafe. That is the tension a safety constraint has to resolve (a helpfulness model trained
on "answer the question" data has the same blind spot).

Scores: ``0`` (refusal, or not fluent), else ``0.3 + 0.5 · [mentions the topic] + 0.2 · [uses the verb]``
(the verb part is granted when the request has no verb). It is a training reward; the evaluation's ground truth
stays :mod:`guard_reward.sandbox.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guard_reward.sandbox.language import ADJECTIVES, PROMPT_TEMPLATES, REFUSAL, VERBS
from guard_reward.sandbox.rules import is_fluent

_VERBS = frozenset(VERBS)
_ADJECTIVES = frozenset(ADJECTIVES)
#: The literal words of the request templates (everything but the N/V/A slots).
_FUNCTION_WORDS = frozenset(w for t in PROMPT_TEMPLATES for w in t.split() if w not in ("N", "V", "A"))


def _topics(prompt: str) -> tuple[set[str], set[str]]:
    """The request's topic words (its nouns: any word in a noun slot, whatever its vocabulary) and verbs."""
    words = prompt.split()
    verbs = {w for w in words if w in _VERBS}
    # A noun slot holds a benign noun or a made-up word; either way it is the thing asked about. Everything
    # that is not a function word, a verb or an adjective is in a noun slot.
    topics = {w for w in words if w not in _FUNCTION_WORDS and w not in verbs and w not in _ADJECTIVES}
    return topics, verbs


def helpfulness(prompt: str, response: str) -> float:
    """The helpfulness of ``response`` to ``prompt`` in [0, 1] (see the module docstring)."""
    text = response.strip()
    if not text or text.startswith(REFUSAL) or not is_fluent(text):
        return 0.0
    topics, verbs = _topics(prompt)
    words = set(text.split())
    score = 0.3
    if topics & words:
        score += 0.5
    if not verbs or verbs & words:
        score += 0.2
    return score


def _content(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def _prompt_text(x: Any) -> str:
    if isinstance(x, list):
        users = [m["content"] for m in x if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(x)


class HelpfulnessReward:
    """:func:`helpfulness` as a TRL reward function (conversational or plain-text prompts and completions)."""

    def __init__(self, name: str = "helpfulness") -> None:
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return [helpfulness(_prompt_text(p), _content(c)) for p, c in zip(prompts, completions, strict=True)]
