"""GuardPPOTrainer on agent trajectories: tool results inside a completion are the environment's tokens.

TRL's tool loop is slow on CPU (see the multi-process tier for a run through it); here a ``tool_mask`` is put
into an ordinary generation batch (tokens 2-4 of every completion are "tool results"), which is all the PPO
maths reads of a tool loop. Checked: no KL and no dense reward on tool tokens, the score on the policy's last
token, GAE over the policy's tokens only (a plain loop), the critic's targets and the KL metric on the policy's
tokens only.
"""

from __future__ import annotations

import copy

import pytest
import torch
from trl import GRPOTrainer

from guard_reward.integrations.trl import GuardPPOTrainer
from tests.integrations.ppo_tiny import (
    TWO_PROMPTS,
    LengthScore,
    TokenPenalty,
    build_tiny_policy,
    dataset,
    policy_tokenizer,
    ppo_config,
    prompt_rows,
)

#: One rollout of a tiny policy over Qwen's 151k vocabulary plus a critic: about 25 s on a 2-core CPU.
pytestmark = pytest.mark.slow

TOOL = slice(2, 5)


class FakeTools(GRPOTrainer):
    """Below GuardPPOTrainer in the MRO: TRL's batch gains a ``tool_mask`` with tokens 2-4 as a tool result."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        tool_mask = torch.ones_like(out["completion_mask"])
        tool_mask[:, TOOL] = 0
        out["tool_mask"] = tool_mask
        return out


class AgentPPO(GuardPPOTrainer, FakeTools):
    pass


def _returns_loop(rewards, values, keep, gamma, lam):
    steps = [j for j in range(len(keep)) if keep[j]]
    out, running, next_v = [0.0] * len(keep), 0.0, 0.0
    for j in reversed(steps):
        running = rewards[j] + gamma * next_v - values[j] + gamma * lam * running
        next_v = values[j]
        out[j] = running + values[j]
    return out


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = build_tiny_policy(tmp_path_factory.mktemp("agent_policy"))
    policy = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():  # away from the reference, so that the KL is not zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    reward = LengthScore()
    trainer = AgentPPO(
        model=policy,
        reward_funcs=reward,
        dense_rewards=TokenPenalty(position=3, value=-1.0),  # inside the tool result: must not land
        args=ppo_config(tmp_path_factory.mktemp("out"), beta=0.2, whiten_advantages=False),
        train_dataset=dataset(),
        processing_class=policy_tokenizer(),
        value_model=str(path),
    )
    trainer.model.train()
    torch.manual_seed(5)
    out = trainer._generate_and_score_completions(copy.deepcopy(prompt_rows(2, TWO_PROMPTS)))
    return trainer, out, torch.tensor(reward.returned[-1])


def test_tool_tokens_get_no_reward_no_advantage_and_no_value_target(rollout):
    _, out, _ = rollout
    mask = out["completion_mask"].bool()
    keep = mask & out["tool_mask"].bool()
    tool = mask & ~keep
    assert tool.any() and keep[:, TOOL.stop :].any()
    for key in ("ppo_rewards", "ppo_returns", "advantages", "ppo_values"):
        assert torch.count_nonzero(out[key][tool]) == 0, key
    assert torch.equal(out["ppo_value_mask"], keep)
    assert float(out["ppo_rewards"][keep].abs().sum()) > 0  # the KL is charged on the policy's tokens


def test_returns_are_gae_over_the_policy_tokens_alone(rollout):
    trainer, out, _ = rollout
    keep = out["completion_mask"].bool() & out["tool_mask"].bool()
    for i in range(keep.shape[0]):
        want = _returns_loop(
            out["ppo_rewards"][i].tolist(),
            out["ppo_values"][i].tolist(),
            keep[i].tolist(),
            trainer.args.gamma,
            trainer.args.lam,
        )
        torch.testing.assert_close(out["ppo_returns"][i], torch.tensor(want), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            out["advantages"][i],
            (out["ppo_returns"][i] - out["ppo_values"][i]) * keep[i],
            rtol=1e-5,
            atol=1e-5,
        )


def test_kl_metric_counts_policy_tokens_only(rollout):
    """``ppo/kl`` is the KL the reward charged: the rewards less the score, which sits on each row's last policy
    token (for a row cut off inside the tool result, token 1), over the policy's tokens."""
    trainer, out, scores = rollout
    keep = out["completion_mask"].bool() & out["tool_mask"].bool()
    rows = torch.arange(len(scores))
    last = torch.stack([torch.nonzero(r).max() for r in keep])
    kl_reward = out["ppo_rewards"].clone()
    kl_reward[rows, last] -= scores
    kl_reward = kl_reward - torch.where(keep, torch.zeros_like(kl_reward), kl_reward)
    expected = float((-kl_reward / trainer.beta).sum(1).mean())
    assert trainer._metrics["train"]["ppo/kl"][-1] == pytest.approx(expected, rel=1e-4, abs=1e-6)
