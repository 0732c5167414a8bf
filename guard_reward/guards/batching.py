"""Token-budget micro-batches: which inputs both guards run together, and in what order.

A micro-batch holds at most ``max_batch_size`` inputs and at most ``token_budget`` padded tokens (``batch size x
longest input``); an input longer than the budget gets a batch of its own. Textbook bucketing sorts by length
alone, and so do the guards without prefix sharing (longest first, so padding stays small). With prefix sharing
the inputs are taken in :func:`~guard_reward.guards.prefix_sharing.sharing_order` instead, so inputs that share a
prefix (the Gen instruction header, a GRPO group's prompt) land in the same micro-batch, where
:func:`~guard_reward.guards.prefix_sharing.plan_sharing` can run the shared part once.
"""

from __future__ import annotations

from collections.abc import Sequence

from guard_reward.guards.prefix_sharing import sharing_order


def micro_batches(
    rows: Sequence[Sequence[int]],
    lengths: Sequence[int],
    token_budget: int,
    max_batch_size: int,
    share_prefix: bool,
) -> list[list[int]]:
    """The micro-batches a guard runs, in the order it runs them: lists of indices into ``rows``.

    Args:
        rows: ``(N,)`` token ids of each input; their shared prefixes decide the order when ``share_prefix``.
        lengths: ``(N,)`` padded tokens each input counts for (Gen adds its label tree and decoding room to the
            row's own length).
        token_budget, max_batch_size: the bounds of one micro-batch (module docstring).
        share_prefix: keep inputs sharing a prefix together (else longest first).
    """
    if share_prefix:
        return ordered_budget_batches(sharing_order(rows), lengths, token_budget, max_batch_size)
    return token_budget_batches(lengths, token_budget, max_batch_size)


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Group item indices into micro-batches, longest first, so that ``batch_size * longest <= token_budget``.

    Sorting by length keeps padding small; an item longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return ordered_budget_batches(order, lengths, token_budget, max_batch_size)


def ordered_budget_batches(
    order: Sequence[int], lengths: Sequence[int], token_budget: int, max_batch_size: int
) -> list[list[int]]:
    """Cut ``order`` into consecutive micro-batches with ``batch size x longest <= token_budget`` (an item
    longer than the budget gets a batch of its own), keeping the given order."""
    if token_budget < 1 or max_batch_size < 1:
        raise ValueError(
            f"token_budget and max_batch_size must be >= 1, got {token_budget}, {max_batch_size}"
        )
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        wider = max(longest, lengths[i])
        if current and ((len(current) + 1) * wider > token_budget or len(current) >= max_batch_size):
            batches.append(current)
            current, wider = [], lengths[i]
        current.append(i)
        longest = wider
    if current:
        batches.append(current)
    return batches
