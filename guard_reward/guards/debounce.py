"""Response-level verdict from Qwen3Guard-Stream's per-token levels: the official "debounce" rule.

A single risky token is not enough to flag a response. The official evaluation scans for the first two
consecutive ``Unsafe`` tokens; if there are none, for the first two consecutive ``Controversial`` tokens; else
the response is ``Safe``. The flag index is the second token of the pair. A mixed ``Unsafe, Controversial``
pair does not trigger in that code, although the technical report's wording ("both unsafe/controversial")
suggests it should; ``mixed_pairs=True`` follows the report instead.

``mode`` applies Qwen3Guard's strict/loose policies: ``"strict"`` is the official rule as above (a
Controversial pair flags the response, labelled ``"Controversial"``); ``"loose"`` reads Controversial as Safe,
so only an Unsafe pair flags.

Online use: stopping a stream at the first index where :func:`debounce` of the levels seen so far flags (what
:class:`Debouncer` does) gives exactly the verdict :func:`debounce` returns for the cut-short response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from guard_reward.types import TokenRisk

DebounceMode = Literal["strict", "loose"]
#: Head order of Stream's risk levels, used to break probability ties as ``argmax`` over the logits does.
HEAD_ORDER = ("Safe", "Unsafe", "Controversial")


def _check_mode(mode: str) -> None:
    if mode not in ("strict", "loose"):
        raise ValueError(f"mode={mode!r} is not accepted; use 'strict' or 'loose'")


def token_levels(risk: TokenRisk) -> list[str]:
    """Most probable level of each token, ties broken in head order (Safe, Unsafe, Controversial)."""
    if len(risk) == 0:
        return []
    probs = torch.stack([risk.p_safe, risk.p_unsafe, risk.p_controversial], dim=-1)  # (T, 3)
    return [HEAD_ORDER[i] for i in probs.argmax(dim=-1).tolist()]


def _normalise(levels: Sequence[str], mode: str) -> list[str]:
    out = []
    for t, level in enumerate(levels):
        if level not in HEAD_ORDER:
            raise ValueError(f"level {level!r} at token {t} is not one of {HEAD_ORDER}")
        out.append("Safe" if mode == "loose" and level == "Controversial" else level)
    return out


def debounce(
    levels: Sequence[str] | TokenRisk, mode: DebounceMode = "strict", *, mixed_pairs: bool = False
) -> tuple[int | None, str]:
    """Apply the response-level rule (module docstring) to per-token levels.

    Args:
        levels: per-token level names ``(T,)``, or a :class:`TokenRisk` (its most probable level per token).
        mode: ``"strict"`` (official rule) or ``"loose"`` (Controversial counts as Safe).
        mixed_pairs: flag any two consecutive non-Safe tokens; the label is then ``"Unsafe"`` if either
            token of the first such pair is Unsafe, else ``"Controversial"``.

    Returns:
        ``(index, label)``: the index of the second token of the flagging pair and ``"Unsafe"`` or
        ``"Controversial"``; ``(None, "Safe")`` when nothing flags.
    """
    _check_mode(mode)
    names = _normalise(token_levels(levels) if isinstance(levels, TokenRisk) else levels, mode)
    if mixed_pairs:
        for t in range(1, len(names)):
            pair = (names[t - 1], names[t])
            if "Safe" not in pair:
                return t, "Unsafe" if "Unsafe" in pair else "Controversial"
        return None, "Safe"
    for label in ("Unsafe", "Controversial"):
        for t in range(1, len(names)):
            if names[t - 1] == label and names[t] == label:
                return t, label
    return None, "Safe"


class Debouncer:
    """The rule applied online, one token at a time: :meth:`push` returns True at the token that flags.

    It flags at the first pair that makes :func:`debounce` of the tokens seen so far flag: an Unsafe pair, or
    (in strict mode) a Controversial pair — an earlier Controversial pair wins online because a later Unsafe
    pair cannot be known yet; the cut-short response then has exactly that verdict.
    """

    def __init__(self, mode: DebounceMode = "strict", *, mixed_pairs: bool = False) -> None:
        _check_mode(mode)
        self.mode = mode
        self.mixed_pairs = mixed_pairs
        self.count = 0
        self.previous: str | None = None
        self.flag: tuple[int, str] | None = None

    def push(self, level: str) -> bool:
        """Read the next token's level; True if the response is flagged at this token (only once)."""
        (current,) = _normalise([level], self.mode)
        index, self.count = self.count, self.count + 1
        previous, self.previous = self.previous, current
        if self.flag is not None or previous is None or "Safe" in (previous, current):
            return False
        if self.mixed_pairs:
            self.flag = (index, "Unsafe" if "Unsafe" in (previous, current) else "Controversial")
        elif previous == current:
            self.flag = (index, current)
        return self.flag is not None

    @property
    def result(self) -> tuple[int | None, str]:
        """``(index, label)`` of the flag, or ``(None, "Safe")``."""
        return self.flag if self.flag is not None else (None, "Safe")
