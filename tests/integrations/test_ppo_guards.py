"""GuardPPOTrainer end to end with the real rewards: ``SafetyReward`` on a tiny Qwen3Guard-Gen stand-in as the
terminal score and ``TokenSafetyPenalty`` on a tiny Qwen3Guard-Stream stand-in as the dense reward."""

from __future__ import annotations

import pytest
import torch

from guard_reward.integrations.trl import GuardPPOTrainer
from tests.integrations.ppo_tiny import build_tiny_policy, dataset, policy_tokenizer, ppo_config


@pytest.mark.slow
def test_ppo_with_gen_score_and_stream_penalty_trains_policy_and_critic(tiny_gen_path, tmp_path):
    from guard_reward.rewards import SafetyReward, TokenSafetyPenalty
    from guard_reward.tiny.stream import build_tiny_stream

    stream_path = build_tiny_stream(tmp_path / "stream", seed=0)
    policy_path = build_tiny_policy(tmp_path / "policy")
    safety = SafetyReward(str(tiny_gen_path), mode="soft", refusal=False)
    penalty = TokenSafetyPenalty(str(stream_path), shaping="prob", coef=1.0)
    trainer = GuardPPOTrainer(
        model=policy_path,
        reward_funcs=safety,
        dense_rewards=penalty,
        args=ppo_config(tmp_path / "out", max_steps=2),
        train_dataset=dataset(),
        processing_class=policy_tokenizer(),
    )
    policy_before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    critic_before = {k: v.clone() for k, v in trainer.value_model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(v, policy_before[k]) for k, v in trainer.model.named_parameters())
    assert any(not torch.equal(v, critic_before[k]) for k, v in trainer.value_model.named_parameters())
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    # both guards reported through TRL's log_metric, next to the PPO metrics
    guard_keys = sorted(k for k in last if k.startswith("guard/"))
    assert "guard/unsafe_rate" in guard_keys and len(guard_keys) > 2, guard_keys
    assert last["dense/sum_mean"] < 0  # Stream's per-token risk reached the rewards as penalties
    assert -1.0 <= last["rewards/guard_safety/mean"] <= 1.0
    for key in ("ppo/value_loss", "ppo/explained_variance", "ppo/kl", "ppo/returns_mean"):
        assert key in last
