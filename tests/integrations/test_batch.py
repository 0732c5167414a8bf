"""The generation-batch plumbing every trainer shares, without a model: reward arguments, dense scoring, the token
grid, this process's rows, the policy's tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from guard_reward.integrations.trl import batch
from guard_reward.types import DenseRewards


class Fixed:
    """A dense reward returning given rewards and mask, recording the keyword arguments it got."""

    def __init__(self, name, rewards, mask):
        self.__name__, self.rewards, self.mask = name, torch.tensor(rewards), torch.tensor(mask)
        self.kwargs = None

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.kwargs = kwargs
        return DenseRewards(self.rewards, self.mask)


def fake_trainer(process_index=0):
    return SimpleNamespace(
        state="state",
        _log_completion_extra="log_extra",
        _log_metric="log_metric",
        accelerator=SimpleNamespace(process_index=process_index),
        processing_class=SimpleNamespace(tokenizer="the tokenizer"),
    )


IDS = [[1, 2, 3], [4]]  # two completions: T = 3


def test_reward_kwargs_are_the_dataset_columns_and_trl_callbacks():
    inputs = [{"prompt": "p", "completion": "c", "completion_ids": [1], "topic": "a", "harmful": True},
              {"prompt": "q", "completion": "d", "completion_ids": [2], "topic": "b", "harmful": False}]  # fmt: skip
    got = batch.reward_kwargs(fake_trainer(), inputs)
    assert got == {"topic": ["a", "b"], "harmful": [True, False], "trainer_state": "state",
                   "log_extra": "log_extra", "log_metric": "log_metric"}  # fmt: skip


def test_score_dense_sums_rewards_where_their_masks_are_true():
    nan = float("nan")
    first = Fixed("first", [[1.0, 2.0, nan], [0.5, nan, nan]], [[True, True, False], [True, False, False]])
    second = Fixed("second", [[0.0, 10.0, 20.0], [7.0, 7.0, 7.0]], [[False, True, True], [False] * 3])
    out = batch.score_dense([first, second], ["p", "q"], ["c", "d"], IDS, {"log_metric": print})
    assert out.rewards.tolist() == [[1.0, 12.0, 20.0], [0.5, 0.0, 0.0]]
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]
    assert out.rewards.dtype == torch.float32 and first.kwargs == {"log_metric": print}


def test_score_dense_names_the_reward_that_broke_its_contract():
    bad_value = Fixed("ramp", [[1.0, float("inf"), 0.0], [0.0] * 3], [[True] * 3, [True] * 3])
    with pytest.raises(ValueError, match=r"dense reward 'ramp' returned non-finite.*rows \[0\]"):
        batch.score_dense([bad_value], ["p", "q"], ["c", "d"], IDS, {})
    too_narrow = Fixed("narrow", [[0.0, 0.0], [0.0, 0.0]], [[True] * 2] * 2)
    with pytest.raises(ValueError, match=r"'narrow' returned rewards \(2, 2\).*expected \(2, 3\)"):
        batch.score_dense([too_narrow], ["p", "q"], ["c", "d"], IDS, {})

    def scalar(prompts, completions, completion_ids, **kwargs):
        return [0.0, 0.0]

    with pytest.raises(TypeError, match="'scalar' must return DenseRewards"):
        batch.score_dense([scalar], ["p", "q"], ["c", "d"], IDS, {})


def test_on_completion_grid_pads_and_refuses_wider():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert batch.on_completion_grid(x, 3, "cpu").tolist() == [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]
    m = batch.on_completion_grid(torch.tensor([[True], [False]]), 2, "cpu")
    assert m.dtype == torch.bool and m.tolist() == [[True, False], [False, False]]
    with pytest.raises(ValueError, match="dense costs cover 2 tokens, the completions only 1"):
        batch.on_completion_grid(x, 1, "cpu", what="dense costs")


def test_local_rows_and_policy_token_mask():
    gathered = torch.arange(6)
    assert gathered[batch.local_rows(fake_trainer(process_index=1), 3)].tolist() == [3, 4, 5]
    out = {"completion_mask": torch.tensor([[1, 1, 1, 0]])}
    assert batch.policy_token_mask(out).tolist() == [[True, True, True, False]]
    out["tool_mask"] = torch.tensor([[1, 0, 1, 1]])  # a tool result is not the policy's token
    assert batch.policy_token_mask(out).tolist() == [[True, False, True, False]]


def test_construction_checks_and_tokenizer_binding():
    with pytest.raises(ValueError, match="distinct names"):
        batch.check_distinct_names(["safety", "safety"])
    batch.check_distinct_names(["safety", "length"])
    with pytest.raises(ValueError, match="distinct __name__s"):
        batch.check_dense_rewards([Fixed("a", [], []), Fixed("a", [], [])])
    assert batch.check_dense_rewards(None) == []

    class Binds:
        tokenizer = None

        def bind_tokenizer(self, tokenizer):
            self.tokenizer = tokenizer

    one, two = Binds(), Binds()
    batch.bind_policy_tokenizer(fake_trainer(), [one, None, print, two])
    assert one.tokenizer == two.tokenizer == "the tokenizer"
