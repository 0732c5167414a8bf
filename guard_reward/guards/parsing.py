"""Parsing Qwen3Guard-Gen's verdict text (pure functions).

Differs from the official README parser on purpose, following the pitfalls collected in the reference:
- a stray ``<think>…</think>`` block is removed first;
- the ``Safety:`` label is matched case-insensitively (``safety: unsafe`` happens) and normalised;
- categories are read **only from the** ``Categories:`` **line**, case-sensitively, longest name first, so
  ``Non-violent Illegal Acts`` never also yields ``Violent`` and ``None`` is not a category;
- the ``Refusal:`` line is optional (prompt moderation has two lines, response moderation three);
- no ``Safety:`` line means the verdict cannot be parsed (``level=None``): it fails closed, never "Safe".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guard_reward.types import Level

#: Prompt-moderation categories in the Gen template's order (9; ``Jailbreak`` only applies to prompts).
PROMPT_CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
#: Response-moderation categories (8): the same without ``Jailbreak``.
RESPONSE_CATEGORIES: tuple[str, ...] = PROMPT_CATEGORIES[:-1]

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SAFETY = re.compile(r"safety\s*:\s*(safe|unsafe|controversial)\b", re.IGNORECASE)
_CATEGORIES_LINE = re.compile(r"^\s*categories\s*:(.*)$", re.IGNORECASE | re.MULTILINE)
_REFUSAL = re.compile(r"refusal\s*:\s*(yes|no)\b", re.IGNORECASE)
_LEVELS: dict[str, Level] = {"safe": "Safe", "unsafe": "Unsafe", "controversial": "Controversial"}


@dataclass(frozen=True)
class ParsedVerdict:
    """What could be read from a verdict text. ``level`` is ``None`` when there is no ``Safety:`` line."""

    level: Level | None
    categories: tuple[str, ...]
    refusal: bool | None
    error: str | None = None


def parse_verdict(text: str, categories: tuple[str, ...] = PROMPT_CATEGORIES) -> ParsedVerdict:
    """Parse the 2- or 3-line verdict ``Safety: …`` / ``Categories: …`` / ``Refusal: …``.

    Args:
        text: the guard's decoded output.
        categories: the accepted category names (``PROMPT_CATEGORIES`` or ``RESPONSE_CATEGORIES``); names
            outside this list are ignored, matched case-sensitively on the ``Categories:`` line only.
    """
    body = _THINK_BLOCK.sub("", text)
    if "<think>" in body:  # an unterminated think block: keep what follows it
        body = body.split("<think>")[-1]
    safety = _SAFETY.search(body)
    refusal_match = _REFUSAL.search(body)
    refusal = None if refusal_match is None else refusal_match.group(1).lower() == "yes"
    line = _CATEGORIES_LINE.search(body)
    found = _find_categories(line.group(1), categories) if line else ()
    if safety is None:
        return ParsedVerdict(None, found, refusal, error=f"no 'Safety:' line in guard output {text!r:.200}")
    return ParsedVerdict(_LEVELS[safety.group(1).lower()], found, refusal)


def _find_categories(line: str, categories: tuple[str, ...]) -> tuple[str, ...]:
    """Category names on one line, in order of appearance; longest names are matched first so that a name
    contained in another (``Violent`` in ``Non-violent …``) is not double-counted."""
    taken = [False] * len(line)
    hits: list[tuple[int, str]] = []
    for name in sorted(categories, key=len, reverse=True):
        for match in re.finditer(re.escape(name), line):
            span = range(match.start(), match.end())
            before = line[match.start() - 1] if match.start() else " "
            after = line[match.end()] if match.end() < len(line) else " "
            if any(taken[i] for i in span) or before.isalnum() or after.isalnum() or before == "-":
                continue
            for i in span:
                taken[i] = True
            hits.append((match.start(), name))
    return tuple(name for _, name in sorted(hits))
