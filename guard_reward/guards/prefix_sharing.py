"""Shared-prefix KV reuse: encode token prefixes common to several rows of a micro-batch once.

Textbook batching pads every row to the longest and runs every token of every row through the model. Guard
inputs repeat a lot: every Qwen3Guard-Gen input opens with the same ~200-270-token instruction header, and a
GRPO batch holds G completions of each prompt (header + prompt shared by G rows). Here a micro-batch is split
into up to three levels:

* level 0 — the prefix common to *all* rows, run once (batch 1);
* level 1 — per group of rows that share more than that (sorted rows whose common prefix beyond level 0 is at
  least ``min_group_tokens``), one row per group;
* final — each row's own tokens, run by the caller on a KV cache expanded to one row per input row.

Every token keeps the position it has in its own row, and padding columns are masked as keys, so the final
hidden states equal those of the unshared pass up to float rounding. The saving is the matmul work of the
shared tokens; attention still reads every row's whole cache. Each row keeps at least one token of its own
for the final level (the caller's logits come from there). Padding may sit in the middle of a row (between
levels); this is fine for a custom 4D mask with explicit position ids, and for ``generate``, which derives
positions from the 2D mask's cumulative sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from guard_reward.guards.common import cache_kwarg

# Rows join a level-1 group when they share at least this many tokens beyond the micro-batch's common prefix;
# a micro-batch is shared only when that cuts its padded token count by this factor (below it, the extra
# forward calls and cache copies eat most of the saving: measured in benchmarks/bench_groups.py), and only when
# the padded row width (KV cache per row, with padding between levels) grows by at most this factor, so the
# token budget keeps bounding memory.
MIN_GROUP_TOKENS = 16
MIN_SHARING_GAIN = 1.2
MAX_WIDTH_GROWTH = 1.25


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


@dataclass(frozen=True)
class SharePlan:
    """How the rows of one micro-batch share prefixes.

    Attributes:
        shared: ``S0``, tokens common to all rows (level 0); ``0`` when level 0 is skipped.
        groups: level-1 rows: ``(representative row, tokens after level 0 shared by the group)``.
        row_group: ``(B,)`` index into ``groups`` per row, ``-1`` for a row in no group.
        cut: ``(B,)`` tokens of each row held in the shared cache; the row's own tokens are ``row[cut:]``.
        tokens_unshared: ``B x longest row``, the padded token count of the plain pass.
        tokens_shared: ``S0 + level-1 rows x widest group segment + B x widest own part``.
        width_shared: columns of each row's KV cache after the shared pass (padding between levels included);
            ``width_unshared`` is the longest row.
    """

    shared: int
    groups: tuple[tuple[int, int], ...]
    row_group: tuple[int, ...]
    cut: tuple[int, ...]
    tokens_unshared: int
    tokens_shared: int
    width_shared: int
    width_unshared: int

    @property
    def gain(self) -> float:
        """Predicted speed-up in padded tokens run through the model (attention not counted)."""
        return self.tokens_unshared / max(1, self.tokens_shared)


def plan_sharing(
    rows: Sequence[Sequence[int]],
    min_group_tokens: int = MIN_GROUP_TOKENS,
    min_gain: float = MIN_SHARING_GAIN,
    max_width_growth: float = MAX_WIDTH_GROWTH,
) -> SharePlan | None:
    """Split ``rows`` (token ids) into shared levels (module docstring).

    ``None`` when sharing does not pay: nothing shared, padded tokens cut by less than ``min_gain``, or the
    padded row width (shared levels + own part) above ``max_width_growth x`` the longest row.
    """
    if min_group_tokens < 1:
        raise ValueError(f"min_group_tokens must be >= 1, got {min_group_tokens}")
    bsz = len(rows)
    if bsz < 2:
        return None
    lengths = [len(r) for r in rows]
    if min(lengths) < 1:
        raise ValueError("every row needs at least one token")
    shared = min(min(common_prefix_len(rows[0], r) for r in rows[1:]), min(lengths) - 1)
    order = sorted(range(bsz), key=lambda i: tuple(rows[i][shared:]))
    runs = _runs(rows, order, shared, min_group_tokens)
    groups: list[tuple[int, int]] = []
    row_group = [-1] * bsz
    cut = [shared] * bsz
    for members, common in runs:
        if len(members) < 2:
            continue
        for i in members:
            row_group[i] = len(groups)
            cut[i] = shared + common
        groups.append((members[0], common))
    if shared == 0 and not groups:
        return None
    n_level1 = len(groups) + (1 if groups and -1 in row_group else 0)
    width1 = max((n for _, n in groups), default=0)
    own = max(length - c for length, c in zip(lengths, cut))
    plan = SharePlan(
        shared=shared,
        groups=tuple(groups),
        row_group=tuple(row_group),
        cut=tuple(cut),
        tokens_unshared=bsz * max(lengths),
        tokens_shared=shared + n_level1 * width1 + bsz * own,
        width_shared=shared + width1 + own,
        width_unshared=max(lengths),
    )
    if plan.gain < min_gain or plan.width_shared > max_width_growth * plan.width_unshared:
        return None
    return plan


@dataclass
class SharedPast:
    """The shared levels of a micro-batch, encoded and expanded to one cache row per input row.

    Attributes:
        cache: a ``DynamicCache`` of ``C`` columns and ``B`` rows.
        key_mask: ``(B, C)`` bool, True on the columns that are real tokens of that row.
        ids: ``(B, C)`` long token ids of those columns (padding elsewhere).
        length: ``(B,)`` long, real tokens per row in the cache (the position of the row's next token).
        hidden: per level run, ``(rows of that level, width, H)`` last hidden states, when kept.
        where: ``(B, C, 2)`` long, ``(level run, row in it)`` per column, when hidden states are kept.
    """

    cache: DynamicCache
    key_mask: torch.Tensor
    ids: torch.Tensor
    length: torch.Tensor
    hidden: list[torch.Tensor]
    where: torch.Tensor | None = None

    def gather(
        self, cut: Sequence[int], own_hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states at ``(row, position in that row)`` pairs, wherever the position was run.

        Args:
            cut: ``(B,)`` tokens of each row held in the shared cache (:attr:`SharePlan.cut`).
            own_hidden: ``(B, W, H)`` hidden states of the rows' own tokens, right-padded (column 0 is
                position ``cut[b]``).
            rows, positions: ``(N,)`` long each.

        Returns:
            ``(N, H)``; positions below ``cut[row]`` come from the shared levels (``keep_hidden=True``).
        """
        bsz, width, size = own_hidden.shape
        cut_t = torch.as_tensor(list(cut), dtype=torch.long)
        rows, positions = rows.cpu(), positions.cpu()
        own = positions >= cut_t[rows]
        index = rows * width + (positions - cut_t[rows]).clamp(min=0)
        pieces = [own_hidden.reshape(-1, size)]
        if not bool(own.all()):
            if self.where is None:
                raise ValueError("hidden states were not kept; encode with keep_hidden=True")
            offsets, starts, total, start = [], [], bsz * width, 0
            for h in self.hidden:
                offsets.append(total)
                starts.append(start)
                total += h.shape[0] * h.shape[1]
                start += h.shape[1]
                pieces.append(h.reshape(-1, size))
            # column of the k-th real cached token of each row
            real_cols = [self.key_mask[b].nonzero().flatten() for b in range(bsz)]
            shared = ~own
            cols = torch.stack([real_cols[int(r)][int(p)] for r, p in zip(rows[shared], positions[shared])])
            level, level_row = self.where[rows[shared], cols].unbind(-1)
            widths = torch.tensor([h.shape[1] for h in self.hidden], dtype=torch.long)
            index[shared] = (
                torch.tensor(offsets)[level] + level_row * widths[level] + cols - torch.tensor(starts)[level]
            )
        flat = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        return flat[index.to(flat.device)]


def attention_bias(mask: torch.Tensor, model: Any) -> torch.Tensor:
    """A ``(B, 1, Q, K)`` bool mask in the form the model's attention takes: bool for sdpa, additive for eager."""
    if model.config._attn_implementation == "eager":
        dtype = model.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return mask


def block_mask(past_key_mask: torch.Tensor, query_real: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Attention mask of a block of ``W`` new columns run after ``C`` cached ones.

    Args:
        past_key_mask: ``(B, C)`` bool, real cached columns.
        query_real: ``(B, W)`` bool, real new columns (a padding query sees only itself).
        inner: ``(B, W, W)`` bool, which new column each new column may attend (causal or a custom tree).

    Returns:
        ``(B, 1, W, C + W)`` bool.
    """
    past = past_key_mask[:, None, :] & query_real[:, :, None]
    return torch.cat([past, inner], dim=-1)[:, None]


def run_rows(
    backbone: Any,
    cache: DynamicCache,
    segments: Sequence[Sequence[int]],
    past_key_mask: torch.Tensor,
    past_length: torch.Tensor,
    pad_id: int,
) -> torch.Tensor:
    """Run right-padded, causal ``segments`` after the cached columns (one cache row per segment).

    Args:
        past_key_mask: ``(R, C)`` bool, real cached columns of each row.
        past_length: ``(R,)`` long, real cached tokens per row (the position of each segment's first token).

    Returns:
        ``(R, W, H)`` last hidden states; column ``k`` of row ``r`` is ``segments[r][k]``.
    """
    device = next(backbone.parameters()).device
    rows, width = len(segments), max(1, max(len(s) for s in segments))
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    real = torch.zeros(rows, width, dtype=torch.bool)
    for r, seg in enumerate(segments):
        ids[r, : len(seg)] = torch.as_tensor(list(seg), dtype=torch.long)
        real[r, : len(seg)] = True
    inner = torch.tril(torch.ones(width, width, dtype=torch.bool)) & real[:, None, :]
    diag = torch.arange(width)
    inner[:, diag, diag] |= ~real  # padding queries see themselves only: no empty softmax row
    mask = block_mask(past_key_mask.cpu(), real, inner)
    positions = past_length.cpu()[:, None] + torch.arange(width)
    out = backbone(
        input_ids=ids.to(device),
        attention_mask=attention_bias(mask.to(device), backbone),
        position_ids=positions.to(device),
        **{cache_kwarg(backbone): cache},
        use_cache=True,
    )
    return out.last_hidden_state


def encode_shared(
    backbone: Any,
    rows: Sequence[Sequence[int]],
    plan: SharePlan,
    pad_id: int,
    *,
    keep_hidden: bool = False,
) -> SharedPast:
    """Run the shared levels of ``plan`` through ``backbone`` (a decoder returning ``last_hidden_state``) and
    expand the KV cache to one row per input row (in input order)."""
    device = next(backbone.parameters()).device
    bsz = len(rows)
    cache = DynamicCache(config=backbone.config)
    none = torch.zeros(1, 0, dtype=torch.bool)
    hidden: list[torch.Tensor] = []
    columns_ids: list[torch.Tensor] = []
    columns_real: list[torch.Tensor] = []
    where: list[torch.Tensor] = []
    if plan.shared:
        h = run_rows(
            backbone, cache, [rows[0][: plan.shared]], none, torch.zeros(1, dtype=torch.long), pad_id
        )
        hidden.append(h)
        columns_ids.append(torch.as_tensor(list(rows[0][: plan.shared]), dtype=torch.long).expand(bsz, -1))
        columns_real.append(torch.ones(bsz, plan.shared, dtype=torch.bool))
        where.append(torch.zeros(bsz, plan.shared, 2, dtype=torch.long))
    if plan.groups:
        segments = [rows[rep][plan.shared : plan.shared + n] for rep, n in plan.groups]
        empty = len(segments)
        if -1 in plan.row_group:
            segments.append([])  # the level-1 row that rows in no group continue from
        cache.batch_repeat_interleave(len(segments))
        n1 = len(segments)
        past_len = torch.full((n1,), plan.shared, dtype=torch.long)
        h = run_rows(
            backbone, cache, segments, torch.ones(n1, plan.shared, dtype=torch.bool), past_len, pad_id
        )
        hidden.append(h)
        pick = torch.tensor([g if g >= 0 else empty for g in plan.row_group], dtype=torch.long)
        width = h.shape[1]
        ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
        real = torch.zeros(len(segments), width, dtype=torch.bool)
        for r, seg in enumerate(segments):
            ids[r, : len(seg)] = torch.as_tensor(list(seg), dtype=torch.long)
            real[r, : len(seg)] = True
        columns_ids.append(ids[pick])
        columns_real.append(real[pick])
        level = torch.full((bsz, width), len(hidden) - 1, dtype=torch.long)
        where.append(torch.stack([level, pick[:, None].expand(bsz, width)], dim=-1))
        cache.reorder_cache(pick.to(device))
    else:
        cache.batch_repeat_interleave(bsz)
    key_mask = torch.cat(columns_real, dim=1)
    return SharedPast(
        cache=cache,
        key_mask=key_mask,
        ids=torch.cat(columns_ids, dim=1),
        length=key_mask.sum(dim=1),
        hidden=hidden if keep_hidden else [],
        where=torch.cat(where, dim=1) if keep_hidden else None,
    )


def sharing_order(rows: Sequence[Sequence[int]], min_group_tokens: int = MIN_GROUP_TOKENS) -> list[int]:
    """An order of ``rows`` that keeps rows sharing a prefix next to each other, longest groups first.

    Rows are grouped as in :func:`plan_sharing` (over all rows at once); groups are ordered by their longest
    row, so micro-batches cut in this order keep both the shared prefixes and similar lengths together.
    """
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i]))
    header = common_prefix_len(rows[order[0]], rows[order[-1]])  # sorted: the ends share least
    runs = [members for members, _ in _runs(rows, order, header, min_group_tokens)]
    for run in runs:
        run.sort(key=lambda i: -len(rows[i]))
    runs.sort(key=lambda run: -len(rows[run[0]]))
    return [i for run in runs for i in run]


def _runs(
    rows: Sequence[Sequence[int]], order: Sequence[int], start: int, min_group_tokens: int
) -> list[tuple[list[int], int]]:
    """Groups of rows (``order`` is sorted by tokens) sharing tokens after ``start``: ``(members, shared)``.

    A row joins the current run when that does not lower the run's total saving (``members x shared``) and
    leaves at least ``min_group_tokens`` shared; each member keeps one token of its own.
    """
    runs: list[tuple[list[int], int]] = []
    for i in order:
        if runs:
            members, common = runs[-1]
            prev = rows[members[-1]]
            n = min(common_prefix_len(prev[start:], rows[i][start:]), len(rows[i]) - 1 - start, common)
            if n >= min_group_tokens and len(members) * n >= (len(members) - 1) * common:
                members.append(i)
                runs[-1] = (members, n)
                continue
        runs.append(([i], len(rows[i]) - 1 - start))
    return runs
