"""KV-cached streaming sessions for Qwen3Guard-Stream: judge tokens as they are generated.

The official ``stream_moderate_from_ids`` re-runs the whole growing sequence for every new token (its KV cache
is stored but never reused), so each token costs as much as the whole context so far. A session here runs the
prompt once, keeps transformers' key/value cache, and feeds only the new tokens: per-token cost is a forward
over the new tokens against the cache, nearly flat in the context length (attention over the cache is the only
part that grows). Results equal :meth:`StreamGuard.score` on the same tokens (same causal attention, same
positions) up to float rounding.

A session holds one or more rows (one per conversation). Rows are right-padded: each row's prompt, then for
every ``feed_batch`` call a block of columns in which rows with fewer new tokens get masked padding. Padding
never carries a position of its own that a real token sees, and every padded query still attends to its row's
real tokens (a fully masked attention row would produce NaNs in the cache).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicCache

from guard_reward.guards.common import ContextTooLongError, cache_kwarg
from guard_reward.guards.offsets import OffsetTracker, token_bytes
from guard_reward.guards.stream_inputs import Encoded
from guard_reward.types import TokenRisk

if TYPE_CHECKING:
    from guard_reward.guards.stream import StreamGuard

logger = logging.getLogger(__name__)


class StreamSession:
    """Incremental Stream scoring for one or more conversations (module docstring).

    Made by :meth:`StreamGuard.open_stream` (one row) or :meth:`StreamGuard.open_streams`. ``feed`` /
    ``feed_batch`` return the risk of just the fed tokens; their ``offsets`` are spans in the text fed so far
    in that row (decoded with ``skip_special_tokens=True``); ``query_probs`` is the prompt verdict, read once
    when the session opens. Use as a context manager or call :meth:`close`.

    Attributes:
        fed: ``(B,)`` number of tokens fed per row so far.
        query_probs: per row, the prompt verdict ``{"Safe", "Controversial", "Unsafe"}`` (or ``None``).
        truncated: per row, whether earlier turns of the prompt were trimmed to fit.
    """

    def __init__(self, guard: StreamGuard, rows: Sequence[tuple[list[int], int | None, bool]]) -> None:
        if not rows:
            raise ValueError("a stream session needs at least one prompt")
        self.guard = guard
        self.rows = len(rows)
        self.truncated = [t for _, _, t in rows]
        self.closed = False
        self.fed = [0] * self.rows
        self.trackers = [OffsetTracker() for _ in rows]
        self.cache: DynamicCache | None = DynamicCache(config=guard.model.config)
        device = guard.device
        lengths = [len(ids) for ids, _, _ in rows]
        width = max(lengths)
        ids = torch.full((self.rows, width), guard.pad_id, dtype=torch.long)
        self.mask = torch.zeros((self.rows, width), dtype=torch.long, device=device)
        for b, (prefix, _, _) in enumerate(rows):
            ids[b, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            self.mask[b, : len(prefix)] = 1
        self.next_pos = torch.tensor(lengths, dtype=torch.long)
        positions = torch.arange(width).expand(self.rows, -1)
        with torch.inference_mode():
            hidden = guard.model(
                input_ids=ids.to(device),
                attention_mask=self.mask,
                position_ids=positions.to(device),
                **{cache_kwarg(guard.model): self.cache},
                use_cache=True,
            ).last_hidden_state
            items = [Encoded(prefix, [], torch.zeros((0, 2), dtype=torch.long), q) for prefix, q, _ in rows]
            q_rows = [b for b, (_, q, _) in enumerate(rows) if q is not None]
            q_hidden = hidden[
                torch.tensor(q_rows, dtype=torch.long, device=device),
                torch.tensor([rows[b][1] for b in q_rows], dtype=torch.long, device=device),
            ]
            opened = guard.to_token_risks(items, hidden[:, :0].reshape(0, hidden.shape[-1]), q_hidden)
        self.query_probs = [r.query_probs for r in opened]
        self.query_category_probs = [r.query_category_probs for r in opened]

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the KV cache; feeding afterwards is an error."""
        self.cache = None
        self.closed = True

    def feed(self, token_ids: Sequence[int] | torch.Tensor) -> TokenRisk:
        """Judge the next tokens of a one-row session; returns their risk ``(n,)``."""
        if self.rows != 1:
            raise ValueError(
                f"this session has {self.rows} rows; use feed_batch with one list of ids per row"
            )
        return self.feed_batch([token_ids])[0]

    def feed_batch(self, chunks: Sequence[Sequence[int] | torch.Tensor]) -> list[TokenRisk]:
        """Judge the next tokens of every row (an empty list for a row with nothing new), in one forward
        pass."""
        if self.closed or self.cache is None:
            raise RuntimeError("this stream session is closed; open a new one with StreamGuard.open_stream")
        if len(chunks) != self.rows:
            raise ValueError(f"got {len(chunks)} chunks for a session of {self.rows} rows; one per row")
        guard = self.guard
        lists = [self._check(chunk, b) for b, chunk in enumerate(chunks)]
        n = max(len(c) for c in lists)
        device = guard.device
        hidden_size = guard.model.config.hidden_size
        gathered = torch.zeros((0, hidden_size), device=device, dtype=guard.model.dtype)
        if n:
            ids = torch.full((self.rows, n), guard.pad_id, dtype=torch.long)
            new_mask = torch.zeros((self.rows, n), dtype=torch.long, device=device)
            for b, chunk in enumerate(lists):
                if chunk:
                    ids[b, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
                    new_mask[b, : len(chunk)] = 1
            # Padding columns get the next positions too; they are masked as keys, so no real token sees them.
            positions = self.next_pos[:, None] + torch.arange(n)
            self.mask = torch.cat([self.mask, new_mask], dim=1)
            with torch.inference_mode():
                hidden = guard.model(
                    input_ids=ids.to(device),
                    attention_mask=self.mask,
                    position_ids=positions.to(device),
                    **{cache_kwarg(guard.model): self.cache},
                    use_cache=True,
                ).last_hidden_state  # (B, n, H)
                gathered = torch.cat([hidden[b, : len(chunk)] for b, chunk in enumerate(lists)])
            self.next_pos += torch.tensor([len(c) for c in lists], dtype=torch.long)
        items = []
        for b, chunk in enumerate(lists):
            offsets = self.trackers[b].push(token_bytes(guard.tokenizer, chunk))
            self.fed[b] += len(chunk)
            items.append(Encoded(chunk, chunk, offsets, None, truncated=self.truncated[b]))
        with torch.inference_mode():
            risks = guard.to_token_risks(items, gathered, None)
        return [
            replace(r, query_probs=self.query_probs[b], query_category_probs=self.query_category_probs[b])
            for b, r in enumerate(risks)
        ]

    def _check(self, chunk: Sequence[int] | torch.Tensor, row: int) -> list[int]:
        guard = self.guard
        ids = [int(i) for i in (chunk.tolist() if isinstance(chunk, torch.Tensor) else chunk)]
        bad = [i for i in ids if not 0 <= i < len(guard.tokenizer)]
        if bad:
            raise ValueError(
                f"row {row}: ids outside the guard's vocabulary (0..{len(guard.tokenizer) - 1}): {bad[:5]}"
            )
        ends = [i for i in ids if i in guard.trailing_ids]
        if ends:
            raise ValueError(
                f"row {row}: got end-of-turn id(s) {ends[:3]}; feed only content tokens (the closing "
                "<|im_end|> is not judged) and close the session when the response is complete"
            )
        if int(self.next_pos[row]) + len(ids) > guard.max_length:
            raise ContextTooLongError(
                f"row {row}: {int(self.next_pos[row])} tokens in context + {len(ids)} new exceed the guard's "
                f"window of {guard.max_length}; open the stream with max_new_tokens to reserve room"
            )
        return ids
