"""DenseGRPOTrainer and GuardPPOTrainer on one process: which rows get a dense term, non-finite dense rewards,
the per-token off-policy mask, configurations refused at construction, and a critic head that does not depend
on the process's random state. (Several processes: tests/multiproc.)"""

from __future__ import annotations

import copy

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from guard_reward.integrations.trl import DenseGRPOTrainer, GuardPPOTrainer
from guard_reward.integrations.trl.grpo import per_token_off_policy_mask
from guard_reward.shaping.dense import group_token_normalize, return_to_go
from guard_reward.types import DenseRewards
from tests.integrations.ppo_tiny import (
    TWO_PROMPTS,
    LengthScore,
    build_tiny_policy,
    dataset,
    policy_tokenizer,
    ppo_config,
    prompt_rows,
)
from tests.multiproc.scenarios import state_digest

COEF = 0.5


class RampPenalty:
    """Dense reward ``-(t + 1) / 10`` on every token (distinct per token), the whole row masked out for the
    rows in ``masked`` (a dense reward that could not judge them), and ``fill`` (e.g. NaN) at the masked-out
    positions; ``nan_at`` puts a NaN where the mask is True."""

    __name__ = "ramp_penalty"

    def __init__(self, masked=(), fill=0.0, nan_at=None) -> None:
        self.masked, self.fill, self.nan_at = masked, fill, nan_at

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> DenseRewards:
        width = max(len(ids) for ids in completion_ids)
        rewards = torch.full((len(completion_ids), width), self.fill)
        mask = torch.zeros(len(completion_ids), width, dtype=torch.bool)
        for i, ids in enumerate(completion_ids):
            if i not in self.masked:
                mask[i, : len(ids)] = True
                rewards[i, : len(ids)] = -(torch.arange(len(ids)) + 1.0) / 10
        if self.nan_at is not None:
            rewards[self.nan_at] = float("nan")
        return DenseRewards(rewards, mask)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("dense_signal_policy"))


def grpo(policy_path, tmp_path, reward, dense, mode="token", **config):
    args = dict(per_device_train_batch_size=4, num_generations=2, max_completion_length=8, max_steps=1,
                report_to="none", use_cpu=True, bf16=False, seed=0, save_strategy="no", beta=0.0)  # fmt: skip
    return DenseGRPOTrainer(
        str(policy_path),
        [reward],
        args=GRPOConfig(output_dir=str(tmp_path), **{**args, **config}),
        train_dataset=dataset(),
        processing_class=policy_tokenizer(),
        dense_rewards=dense,
        dense_coef=COEF,
        dense_advantage=mode,
    )


def rollout(trainer, seed=5):
    trainer.model.train()
    torch.manual_seed(seed)
    return trainer._generate_and_score_completions(copy.deepcopy(prompt_rows(2, TWO_PROMPTS)))


@pytest.mark.parametrize("mode", ["return_to_go", "process_supervision"])
def test_rows_without_scalar_or_dense_signal_get_no_dense_term(policy_path, tmp_path, mode):
    # row 0: every scalar reward returned None; row 2: the dense reward masked the whole row out (and left
    # NaN there, which a mask-False position may hold); rows 1 and 3 have both signals
    dense = RampPenalty(masked=(2,), fill=float("nan"))
    trainer = grpo(policy_path, tmp_path, LengthScore(skip=(0,)), dense, mode=mode)
    out = rollout(trainer)
    adv, mask = out["advantages"], out["completion_mask"].bool()
    lengths = mask.sum(1)
    assert lengths[3] > 1 and lengths[2] > 1, "the rollout must give rows 2 and 3 several tokens"
    assert torch.isfinite(adv).all()
    assert (adv[0] == 0).all(), "an unscorable row gets no advantage at all, no dense term either"
    row2 = adv[2][mask[2]]
    assert torch.allclose(row2, row2[0].expand_as(row2)), "a row the dense reward masked keeps A_seq alone"
    # row 3's dense term is computed as if row 2 were not there (process_supervision: its group is rows 2-3)
    d3 = -(torch.arange(int(lengths[3])) + 1.0).unsqueeze(0) / 10
    m3 = torch.ones_like(d3, dtype=torch.bool)
    f3 = return_to_go(group_token_normalize(d3, m3, 1) if mode == "process_supervision" else d3, m3)[0]
    row3 = adv[3][mask[3]]
    torch.testing.assert_close(row3 - row3[0], COEF * (f3 - f3[0]))
    assert trainer._metrics["train"]["dense/no_signal_frac"][-1] == pytest.approx(0.5)


def test_non_finite_dense_reward_is_an_error_naming_the_reward(policy_path, tmp_path):
    trainer = grpo(policy_path, tmp_path, LengthScore(), RampPenalty(nan_at=(1, 0)))
    with pytest.raises(ValueError, match=r"dense reward 'ramp_penalty' returned non-finite.*rows \[1\]"):
        rollout(trainer)


def test_ppo_row_masked_by_the_dense_reward_keeps_score_and_kl_only(policy_path, tmp_path):
    trainer = GuardPPOTrainer(
        model=str(policy_path),
        reward_funcs=LengthScore(),
        dense_rewards=RampPenalty(masked=(1,), fill=float("nan")),
        args=ppo_config(tmp_path, beta=0.0, whiten_advantages=False),
        train_dataset=dataset(),
        processing_class=policy_tokenizer(),
    )
    out = rollout(trainer)
    rewards, mask = out["ppo_rewards"], out["completion_mask"].bool()
    n = int(mask[1].sum())
    expected = torch.zeros(n)
    expected[-1] = 0.1 * n  # LengthScore at the last token, no dense term
    torch.testing.assert_close(rewards[1][:n], expected)
    assert rewards[0][0] == pytest.approx(-0.1), "an unmasked row has its dense term"


def test_off_policy_mask_is_per_token_with_per_token_advantages():
    adv = torch.tensor([[0.5, -0.2, 0.1], [-0.3, -0.3, 0.4]])
    mask = torch.ones(2, 3)
    logps = torch.zeros(2, 3)
    sampling = torch.tensor([[1.0, 1.0, 1.0], [0.01, 0.01, 0.01]])  # row 0 drifted (mean KL 1), row 1 did not
    keep = per_token_off_policy_mask(adv, logps, sampling, mask, off_policy_threshold=0.1)
    assert keep.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]  # only row 0's negatively credited token goes
    # one advantage per sequence: exactly TRL's sequence mask
    seq = torch.tensor([[-1.0], [-1.0]])
    expected = GRPOTrainer.get_off_policy_mask(seq, logps, sampling, mask, 0.1).expand(2, 3)
    assert torch.equal(per_token_off_policy_mask(seq, logps, sampling, mask, 0.1), expected)
    assert DenseGRPOTrainer.get_off_policy_mask is per_token_off_policy_mask
    assert GuardPPOTrainer.get_off_policy_mask is per_token_off_policy_mask


def test_off_policy_mask_threshold_trains_with_per_token_advantages(policy_path, tmp_path):
    trainer = grpo(policy_path, tmp_path, LengthScore(), RampPenalty(), off_policy_mask_threshold=0.5)
    out = rollout(trainer)
    # log pi_sampling = 0 is far above the random policy's log-probabilities: every sequence drifted
    out["sampling_per_token_logps"] = torch.zeros_like(out["advantages"])
    assert (out["advantages"][out["completion_mask"].bool()] < 0).any()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    masked = trainer._compute_loss(trainer.model, out)
    trainer.off_policy_mask_threshold = None
    unmasked = trainer._compute_loss(trainer.model, out)
    assert torch.isfinite(masked) and not torch.allclose(masked, unmasked), "negative tokens were dropped"


def test_configurations_that_cannot_work_are_refused_at_construction(policy_path, tmp_path):
    def no_ids(prompts, completions):
        return DenseRewards(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))

    async def not_sync(prompts, completions, completion_ids, **kwargs):
        return None

    for dense, match in [(no_ids, "'no_ids' does not take completion_ids"), (not_sync, "async")]:
        with pytest.raises(TypeError, match=match):
            grpo(policy_path, tmp_path, LengthScore(), dense)
        with pytest.raises(TypeError, match=match):
            GuardPPOTrainer(model=str(policy_path), reward_funcs=LengthScore(), dense_rewards=dense,
                            args=ppo_config(tmp_path), train_dataset=dataset())  # fmt: skip
    for config, match in [({"loss_type": "luspo"}, "loss_type='luspo'.*grpo, bnpo, dr_grpo, dapo, cispo, sapo"),
                          ({"importance_sampling_level": "sequence"}, "importance_sampling_level='token'")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            grpo(policy_path, tmp_path, LengthScore(), RampPenalty(), **config)


def test_critic_head_does_not_depend_on_the_process_random_state(policy_path, tmp_path):
    trainer = GuardPPOTrainer(model=str(policy_path), reward_funcs=LengthScore(), args=ppo_config(tmp_path),
                              train_dataset=dataset(), processing_class=policy_tokenizer())  # fmt: skip
    first = state_digest(trainer.value_model)
    torch.manual_seed(12345)  # what TRL's per-process reseeding does to a second process
    rng = torch.get_rng_state()
    again = trainer._build_value_model(str(policy_path), None)
    assert state_digest(again) == first
    assert torch.equal(torch.get_rng_state(), rng), "the processes' own random streams are left alone"
