"""Guard tokens <-> policy tokens.

When the policy shares the guard's vocabulary (Qwen3 policies do), ``StreamGuard.score_ids`` scores the
policy's own token ids and its risks are already one per policy token: the alignment is the identity and
nothing here is needed. For any other policy tokenizer the guard reads the decoded text with its own tokens,
and per-token values are carried across by character offsets: **a policy token takes the value at the last
guard token that starts before the end of its text** — the guard token overlapping the policy token's last
character, i.e. the guard's risk after having read that token (it may have read a few characters more when a
guard token straddles the boundary; it never reports a risk from before the token's text was read). Policy
tokens with no text (special tokens) take the risk after everything before them; policy tokens before the
first guard token have no value and are reported as such, never filled in silently.

Offsets for token ids (not text) come from the tokens' bytes: for byte-level BPE tokenizers (Qwen, Llama 3,
GPT-2 families) each id is mapped to its bytes and the character spans are counted over the UTF-8 decoding, in
one pass; a token holding only part of a multi-byte character gets the span of that character (like the fast
tokenizers' offset mapping). Other tokenizers (SentencePiece with byte fallback: Llama 2, Mistral, Gemma) fall
back to decoding growing prefixes, with the same convention: a prefix that ends inside a character decodes to
replacement characters, which are not counted as text until the character is complete. Ids past the
tokenizer (a padded embedding row) have no text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable bytes stand for themselves, the other 68 bytes are
    shifted to code points 256 and up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


def token_bytes(tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = True) -> list[bytes]:
    """The bytes each id stands for in a byte-level BPE tokenizer (special tokens: ``b""`` when skipped)."""
    table = _unicode_to_byte()
    added = tokenizer.added_tokens_decoder
    special = set(tokenizer.all_special_ids)
    out: list[bytes] = []
    for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)), strict=True):
        if piece is None:  # past the tokenizer (a padded embedding row): decode() drops it, no text
            out.append(b"")
        elif i in added:
            out.append(b"" if skip_special_tokens and (added[i].special or i in special) else piece.encode())
        else:
            out.append(bytes(table[c] for c in piece))
    return out


class OffsetTracker:
    """Character spans of byte strings fed one after another (one per token), decoded as UTF-8.

    ``push(pieces) -> (n, 2)`` spans in the text decoded so far; a character is complete once its last byte is
    in. A token that ends inside a character is given that character's span (it will be shared with the token
    that completes it); a token that is entirely inside a character gets the same span. Invalid UTF-8 decodes
    to one replacement character per bad byte, as ``bytes.decode(errors="replace")`` does.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.chars = 0
        self.text_parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @staticmethod
    def _complete_prefix(buf: bytes) -> int:
        """How many leading bytes of ``buf`` form complete characters (a trailing partial sequence is
        kept)."""
        for back in range(1, min(3, len(buf)) + 1):
            lead = buf[-back]
            if lead & 0xC0 == 0x80:
                continue  # continuation byte: look further back for the lead byte
            need = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 1
            return len(buf) - back if need > back else len(buf)
        return len(buf)

    def push(self, pieces: Sequence[bytes]) -> torch.Tensor:
        """Spans ``(n, 2)`` of the next ``n`` tokens' bytes."""
        spans = torch.empty((len(pieces), 2), dtype=torch.long)
        for k, piece in enumerate(pieces):
            # The token's first byte belongs to the character in progress (index ``chars``), whether that
            # character started in an earlier token or starts here.
            spans[k, 0] = self.chars
            buf = self.pending + piece
            cut = self._complete_prefix(buf)
            text = buf[:cut].decode("utf-8", errors="replace")
            self.pending = buf[cut:]
            self.chars += len(text)
            self.text_parts.append(text)
            # Its last byte is in the last completed character, or in the one still in progress.
            spans[k, 1] = self.chars + (1 if piece and self.pending else 0)
        return spans

    def flush(self) -> str:
        """Decode any trailing partial character (replacement characters), as a final decode would."""
        tail = self.pending.decode("utf-8", errors="replace")
        self.pending = b""
        self.chars += len(tail)
        self.text_parts.append(tail)
        return tail


def token_char_offsets(
    tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = True
) -> tuple[str, torch.Tensor]:
    """Decode ``ids`` and give each id its ``[start, end)`` character span in the decoded text.

    Returns ``(text, offsets (T, 2) long)``; ``text == tokenizer.decode(ids, skip_special_tokens=...)``.
    Skipped special tokens get an empty span at their place.
    """
    ids = [int(i) for i in ids]
    expected = tokenizer.decode(
        ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )
    if _is_byte_level(tokenizer):
        tracker = OffsetTracker()
        offsets = tracker.push(token_bytes(tokenizer, ids, skip_special_tokens=skip_special_tokens))
        tracker.flush()
        if tracker.text == expected:
            return expected, offsets
        logger.debug("byte-level offsets disagree with decode(); decoding prefixes instead")
    return expected, _prefix_decode_offsets(tokenizer, ids, skip_special_tokens)


REPLACEMENT = "\ufffd"


def _settled(prefix_text: str, final: str) -> tuple[int, bool]:
    """How many leading characters of ``final`` a decoded prefix has settled, and whether it ends inside a
    character (trailing replacement characters where ``final`` has something else).

    A prefix ending inside a multi-byte character (byte fallback) decodes its partial bytes to ``U+FFFD``;
    those are not text yet. Some decoders also change the prefix's last characters (a trailing space they
    strip, a merge across the boundary), so only the part that agrees with the final text counts.
    """
    n = 0
    limit = min(len(prefix_text), len(final))
    while n < limit and prefix_text[n] == final[n]:
        n += 1
    rest = prefix_text[n:]
    partial = bool(rest) and rest.strip(REPLACEMENT) == "" and n < len(final)
    return n, partial


def _prefix_decode_offsets(tokenizer: Any, ids: list[int], skip_special_tokens: bool) -> torch.Tensor:
    """Offsets by decoding growing prefixes: ``O(T^2)`` characters, for tokenizers that are not byte-level.

    Same convention as :class:`OffsetTracker`: a token starts at the character in progress after the tokens
    before it and ends after the last character it completes, or on the character it leaves unfinished.
    Returns ``(T, 2)`` long spans into ``decode(ids)``.
    """
    kw = {"skip_special_tokens": skip_special_tokens, "clean_up_tokenization_spaces": False}
    final = tokenizer.decode(ids, **kw)
    offsets = torch.empty((len(ids), 2), dtype=torch.long)
    settled = 0
    for k in range(len(ids)):
        n, partial = _settled(tokenizer.decode(ids[: k + 1], **kw), final)
        n = max(n, settled)  # a decoder that rewrites the tail never takes text back from earlier tokens
        offsets[k, 0] = settled
        offsets[k, 1] = n + int(partial)
        settled = n
    return offsets


def _check_offsets(name: str, offsets: torch.Tensor) -> torch.Tensor:
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"{name} must have shape (T, 2) [start, end) spans, got {tuple(offsets.shape)}")
    return offsets.to(dtype=torch.long, device="cpu")


def guard_index_for_policy(guard_offsets: torch.Tensor, policy_offsets: torch.Tensor) -> torch.Tensor:
    """For each policy token, the index of the guard token whose value it takes (module rule), or -1.

    Args:
        guard_offsets: ``(T_g, 2)`` guard token spans, starts non-decreasing (as tokenizers produce them).
        policy_offsets: ``(T_p, 2)`` policy token spans in the same text.

    Returns:
        ``(T_p,)`` long: the last guard token starting before the end of the policy token's text; -1 when no
        guard token starts before it.
    """
    guard_offsets = _check_offsets("guard_offsets", guard_offsets)
    policy_offsets = _check_offsets("policy_offsets", policy_offsets)
    starts = guard_offsets[:, 0].contiguous()
    if starts.numel() > 1 and bool((starts[1:] < starts[:-1]).any()):
        raise ValueError("guard_offsets starts must be non-decreasing (token spans in reading order)")
    # searchsorted(..., right=False) counts the guard starts strictly before each policy end.
    return torch.searchsorted(starts, policy_offsets[:, 1].contiguous(), right=False) - 1


def align_values(
    values: torch.Tensor,
    guard_offsets: torch.Tensor,
    policy_offsets: torch.Tensor,
    *,
    fill: float = float("nan"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry per-guard-token values onto policy tokens by character offsets (module rule).

    Args:
        values: ``(T_g, ...)`` one value (or row) per guard token.
        guard_offsets: ``(T_g, 2)`` their character spans.
        policy_offsets: ``(T_p, 2)`` the policy tokens' spans in the same text.
        fill: value for policy tokens no guard token has read yet (``valid`` is False there).

    Returns:
        ``(aligned (T_p, ...), valid (T_p,) bool)``.
    """
    if values.shape[0] != guard_offsets.shape[0]:
        raise ValueError(
            f"values has {values.shape[0]} rows but guard_offsets has {guard_offsets.shape[0]}; "
            "one value per guard token is expected"
        )
    index = guard_index_for_policy(guard_offsets, policy_offsets).to(values.device)
    valid = index >= 0
    aligned = (
        values[index.clamp(min=0)]
        if values.shape[0]
        else values.new_empty((index.shape[0], *values.shape[1:]))
    )
    if not bool(valid.all()):
        aligned = aligned.clone()
        aligned[~valid] = fill
    return aligned, valid
