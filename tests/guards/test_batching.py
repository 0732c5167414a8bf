"""Micro-batch planning shared by both guards: hand-computed batches for length-sorted and ordered cutting, and
the order prefix sharing asks for against plain length order."""

import pytest

from guard_reward.guards.batching import micro_batches, ordered_budget_batches, token_budget_batches

H = [1, 2, 3, 4, 5]  # a header every row starts with
PA = list(range(100, 120))  # two prompts of 20 tokens
PB = list(range(200, 220))


def test_length_sorted_batches_by_hand():
    # longest first: 10, 7 (2 x 10 = 20 fits), then 5 (3 x 10 > 20: a new batch), 3
    assert token_budget_batches([3, 10, 5, 7], token_budget=20, max_batch_size=4) == [[1, 3], [2, 0]]
    assert token_budget_batches([1] * 5, token_budget=100, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    # an item over the budget gets a batch of its own
    assert token_budget_batches([50, 2, 2], token_budget=10, max_batch_size=8) == [[0], [1, 2]]
    assert token_budget_batches([], token_budget=10, max_batch_size=8) == []


def test_ordered_batches_keep_the_order_and_count_the_longest_so_far():
    # 2 then 6: 2 x 6 = 12 fits; the next item would make 3 x 6 > 12
    assert ordered_budget_batches([0, 1, 2, 3], [2, 6, 1, 1], token_budget=12, max_batch_size=8) == [
        [0, 1],
        [2, 3],
    ]
    assert token_budget_batches([2, 6, 1, 1], token_budget=12, max_batch_size=8) == [[1, 0], [2, 3]]


@pytest.mark.parametrize("bad", [(0, 4), (10, 0)])
def test_bounds_must_be_positive(bad):
    with pytest.raises(ValueError, match="token_budget and max_batch_size"):
        token_budget_batches([1, 2], *bad)
    with pytest.raises(ValueError, match="token_budget and max_batch_size"):
        micro_batches([[1], [2]], [1, 2], *bad, share_prefix=True)


def test_sharing_keeps_each_prompt_group_in_one_batch_where_length_order_mixes_them():
    rows = [
        H + PA + [1],
        H + PB + [1, 2, 3],
        H + PA + [1, 2],
        H + PB + [1],
        H + PA + [1, 2, 3],
        H + PB + [1, 2],
    ]
    lengths = [len(r) for r in rows]  # A: 26, 28, 27 at 0, 2, 4 ... B: 28, 26, 27 at 1, 3, 5
    # length order (28, 28, 27, 27, 26, 26) puts both prompts in every batch
    assert micro_batches(rows, lengths, 1000, 3, share_prefix=False) == [[1, 4, 2], [5, 0, 3]]
    # sharing order: each prompt's rows together, longest first inside a group
    assert micro_batches(rows, lengths, 1000, 3, share_prefix=True) == [[4, 2, 0], [1, 5, 3]]
    # the token budget still bounds every batch: 2 x 28 fits 60, 3 x 28 does not
    assert micro_batches(rows, lengths, 60, 3, share_prefix=True) == [[4, 2], [0, 1], [5, 3]]
