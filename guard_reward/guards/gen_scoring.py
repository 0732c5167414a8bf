"""Exact label probabilities for Qwen3Guard-Gen in one forward pass per conversation.

The official usage generates the verdict and parses a string. Here the verdict's first line is forced to
``Safety:`` and every label's full token sequence is scored by teacher forcing: ``log P(label) = Σ_k log
P(label_k | prompt, "Safety:", label_<k)``, renormalised over the three labels. ``" Controversial"`` is
several tokens in the Qwen vocabulary, so scoring only first sub-tokens (a common shortcut) is not exact.

All label continuations are scored in the *same* pass: the label tokens that condition a later label token are
appended after the prefix as a token tree (a trie over the label sequences), each node attending only to the
prompt, the prefix and its own ancestors through a custom 4D mask, with the position ids it would have in a
linear sequence. The language-model head runs only on the prefix end and those nodes (``1 + N`` positions,
never the full vocabulary at every position).

Rows are **left**-padded so every prompt ends at the same column; ``decode=True`` then crops the KV cache of
this pass to the prompts and continues with ``generate``, so the prompt is encoded once for both the
probabilities and the greedy verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabelTree:
    """Token trie over the labels' token sequences after the forced prefix.

    Attributes:
        labels: the label names, in the order of ``label_steps`` (and of the scores' last dimension).
        prefix_ids: the forced prefix (``Safety:``) token ids, ``F`` of them.
        node_ids: ``(N,)`` token id of each appended tree node.
        node_depth: ``(N,)`` depth of each node (0 = first label token).
        node_ancestors: ``(N, N)`` bool, ``[i, j]`` True when node ``j`` is node ``i`` or one of its ancestors.
        label_steps: per label, the ``(scoring position, token id)`` pairs whose log-probabilities add up to the
            label's; scoring position 0 is the prefix end, ``1 + i`` is node ``i``.
    """

    labels: tuple[str, ...]
    prefix_ids: tuple[int, ...]
    node_ids: torch.Tensor
    node_depth: torch.Tensor
    node_ancestors: torch.Tensor
    label_steps: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def n_extra(self) -> int:
        """Tokens appended after each prompt: the prefix plus the tree nodes."""
        return len(self.prefix_ids) + int(self.node_ids.numel())


def build_label_tree(prefix_ids: Sequence[int], label_ids: dict[str, Sequence[int]]) -> LabelTree:
    """Build the trie for ``label_ids`` (label name -> token ids after the prefix)."""
    if not prefix_ids:
        raise ValueError("the forced prefix tokenized to nothing")
    for label, ids in label_ids.items():
        if not ids:
            raise ValueError(f"label {label!r} tokenized to nothing")
    node_of: dict[tuple[int, ...], int] = {}
    tokens: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    steps: list[tuple[tuple[int, int], ...]] = []
    for ids in label_ids.values():
        label_steps = []
        for k, tok in enumerate(ids):
            scoring_pos = 0 if k == 0 else 1 + node_of[tuple(ids[:k])]
            label_steps.append((scoring_pos, int(tok)))
            if k < len(ids) - 1 and tuple(ids[: k + 1]) not in node_of:
                node_of[tuple(ids[: k + 1])] = len(tokens)
                tokens.append(int(tok))
                depth.append(k)
                parent.append(node_of[tuple(ids[:k])] if k else -1)
        steps.append(tuple(label_steps))
    n = len(tokens)
    ancestors = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j != -1:
            ancestors[i, j] = True
            j = parent[j]
    return LabelTree(
        labels=tuple(label_ids),
        prefix_ids=tuple(int(t) for t in prefix_ids),
        node_ids=torch.tensor(tokens, dtype=torch.long),
        node_depth=torch.tensor(depth, dtype=torch.long),
        node_ancestors=ancestors,
        label_steps=tuple(steps),
    )


@dataclass
class ScoringBatch:
    """A left-padded batch of ``prompt + prefix + tree`` rows.

    Attributes:
        input_ids: ``(B, W)`` with ``W = P + F + N`` (``P`` = longest prompt).
        prompt_mask: ``(B, P)`` long, 1 on real prompt tokens (the 2D mask ``generate`` continues with).
        attention_mask: ``(B, 1, W, W)`` bool, True where a query may attend a key.
        position_ids: ``(B, W)`` long.
    """

    input_ids: torch.Tensor
    prompt_mask: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def prompt_width(self) -> int:
        return int(self.prompt_mask.shape[1])


def make_scoring_batch(prompts: Sequence[Sequence[int]], tree: LabelTree, pad_id: int) -> ScoringBatch:
    """Lay out ``prompts`` (token ids, each already rendered by the chat template) for one scoring pass."""
    bsz, width_p = len(prompts), max(len(p) for p in prompts)
    n_pre, n_nodes = len(tree.prefix_ids), int(tree.node_ids.numel())
    width = width_p + n_pre + n_nodes
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(bsz, width_p, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in prompts])
    for i, ids in enumerate(prompts):
        input_ids[i, width_p - len(ids) : width_p] = torch.as_tensor(ids, dtype=torch.long)
        prompt_mask[i, width_p - len(ids) :] = 1
    input_ids[:, width_p : width_p + n_pre] = torch.tensor(tree.prefix_ids)
    input_ids[:, width_p + n_pre :] = tree.node_ids

    linear = width_p + n_pre  # columns laid out as an ordinary causal sequence
    key_real = torch.ones(bsz, width, dtype=torch.bool)
    key_real[:, :width_p] = prompt_mask.bool()
    mask = torch.tril(torch.ones(width, width, dtype=torch.bool)).expand(bsz, width, width).clone()
    mask[:, linear:, linear:] = tree.node_ancestors  # a node sees only itself and its ancestors among nodes
    mask &= key_real[:, None, :]
    # Padding queries attend to themselves only, so no softmax row is empty (NaN-free); their outputs are
    # unused.
    pad_rows = ~key_real
    mask[pad_rows] = False
    diag = torch.arange(width)
    mask[:, diag, diag] |= pad_rows

    positions = torch.empty(bsz, width, dtype=torch.long)
    positions[:, :width_p] = (torch.cumsum(prompt_mask, dim=1) - 1).clamp(min=0)
    positions[:, width_p:linear] = lengths[:, None] + torch.arange(n_pre)
    positions[:, linear:] = lengths[:, None] + n_pre + tree.node_depth
    return ScoringBatch(input_ids, prompt_mask, mask[:, None], positions)


def label_log_probs(step_logits: torch.Tensor, tree: LabelTree) -> torch.Tensor:
    """Sum each label's token log-probabilities.

    Args:
        step_logits: ``(B, 1 + N, V)`` logits at the prefix end and at each tree node.

    Returns:
        ``(B, L)`` float32 log-probabilities of the ``L`` labels (not yet renormalised).
    """
    logp = torch.log_softmax(step_logits.float(), dim=-1)
    out = torch.zeros(logp.shape[0], len(tree.labels), dtype=torch.float32, device=logp.device)
    for j, steps in enumerate(tree.label_steps):
        for pos, tok in steps:
            out[:, j] += logp[:, pos, tok]
    return out
