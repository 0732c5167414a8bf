"""GuardPPOTrainer on a tiny CPU policy: dense rewards reach the advantages, the reward assembly is exact,
and a few steps train both the policy and the critic."""

from __future__ import annotations

import copy

import pytest
import torch

from guard_reward.integrations.trl import GuardPPOConfig, GuardPPOTrainer
from tests.integrations.ppo_tiny import (
    TWO_PROMPTS,
    LengthScore,
    TokenPenalty,
    ZeroDense,
    build_tiny_policy,
    dataset,
    policy_tokenizer,
    ppo_config,
    prompt_rows,
)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("ppo_policy"))


@pytest.fixture(scope="module")
def tok():
    return policy_tokenizer()


@pytest.fixture
def make_trainer(policy_path, tok, tmp_path):
    def make(policy=None, reward=None, dense=None, **config):
        return GuardPPOTrainer(
            model=policy_path if policy is None else policy,
            reward_funcs=reward or LengthScore(),
            dense_rewards=dense,
            args=ppo_config(tmp_path / "out", **config),
            train_dataset=dataset(),
            processing_class=tok,
        )

    return make


def _rollout(trainer, rows, seed=123):
    trainer.model.train()
    torch.manual_seed(seed)
    return trainer._generate_and_score_completions(copy.deepcopy(rows))


@pytest.mark.slow
def test_penalty_on_one_token_moves_that_tokens_advantage(make_trainer):
    k, lam = 2, 0.95
    trainer = make_trainer(dense=TokenPenalty(position=k, value=-1.0), lam=lam, whiten_advantages=False)
    rows = prompt_rows(trainer.num_generations, TWO_PROMPTS)
    trainer.dense_coef = 0.0
    base = _rollout(trainer, rows)
    trainer.dense_coef = 0.5
    pen = _rollout(trainer, rows)
    assert torch.equal(base["completion_ids"], pen["completion_ids"])  # same samples, only the reward differs
    mask = base["completion_mask"].bool()
    assert bool((mask.sum(1) > k).all())
    diff = pen["advantages"] - base["advantages"]
    # gamma = 1: delta_k drops by 0.5, so A_j drops by 0.5 * lam^(k-j) for j <= k and is unchanged after k.
    expected = torch.zeros_like(diff)
    for j in range(k + 1):
        expected[:, j] = -0.5 * lam ** (k - j)
    torch.testing.assert_close(diff * mask, expected * mask, rtol=1e-4, atol=1e-5)
    # Every completion has the same length, hence the same scalar score: GRPO's group advantage would be 0 for
    # all of them; the critic's baseline still gives non-zero advantages.
    assert torch.count_nonzero(base["advantages"]) > 0

    # With whitening (the default) the loss gets the same advantages, standardised over the batch.
    trainer.args.whiten_advantages = True
    whitened = _rollout(trainer, rows)["advantages"]
    raw = pen["advantages"][mask]
    expected = (raw - raw.mean()) / raw.std(unbiased=False)
    torch.testing.assert_close(whitened[mask], expected, rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(whitened[~mask]) == 0


@pytest.mark.slow
def test_with_zero_dense_rewards_per_token_rewards_are_kl_plus_terminal_score(make_trainer, policy_path):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    with (
        torch.no_grad()
    ):  # move the policy away from the checkpoint, which GRPOTrainer loads as the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reward = LengthScore()
    beta = 0.2
    trainer = make_trainer(policy, reward=reward, dense=ZeroDense(), beta=beta, kl_estimator="k1")
    out = _rollout(trainer, prompt_rows(2, TWO_PROMPTS))
    mask = out["completion_mask"].bool()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    width = out["completion_ids"].shape[1]
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, width)
    ref_logps = out["ref_per_token_logps"]
    scores = torch.tensor(reward.returned[-1])
    last = mask.sum(1) - 1
    expected = torch.where(mask, -beta * (logps - ref_logps), torch.zeros_like(logps))
    expected[torch.arange(len(scores)), last] += scores
    assert torch.equal(out["ppo_rewards"], expected)
    assert float((logps - ref_logps)[mask].abs().max()) > 1e-3  # the KL term is really there

    # The same check with log-probabilities computed here, by plain forwards of the policy and the checkpoint.
    reference = AutoModelForCausalLM.from_pretrained(policy_path)
    with torch.no_grad():
        p = out["prompt_ids"].shape[1]

        def token_logps(model):
            logits = model(input_ids=ids, attention_mask=attn).logits[:, p - 1 : -1].float()
            return torch.log_softmax(logits, -1).gather(-1, out["completion_ids"].unsqueeze(-1))[..., 0]

        plain = -beta * (token_logps(policy) - token_logps(reference))
    plain[torch.arange(len(scores)), last] += scores
    torch.testing.assert_close(out["ppo_rewards"][mask], plain[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_few_steps_change_policy_and_critic_and_log_ppo_metrics(make_trainer):
    trainer = make_trainer(dense=TokenPenalty(), max_steps=2)
    policy_before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    critic_before = {k: v.clone() for k, v in trainer.value_model.named_parameters()}
    trainer.train()
    policy_moved = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, policy_before[k])]
    critic_moved = [
        k for k, v in trainer.value_model.named_parameters() if not torch.equal(v, critic_before[k])
    ]
    assert policy_moved and critic_moved
    assert "score.weight" in critic_moved  # the value head itself is trained
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    expected_keys = [
        *("ppo/value_loss", "ppo/explained_variance", "ppo/kl", "ppo/returns_mean", "ppo/value_grad_norm"),
        *("guard/penalised_tokens", "dense/sum_mean", "rewards/length_score/mean"),
    ]
    assert [k for k in expected_keys if k not in logs[-1]] == []
    assert logs[-1]["dense/sum_mean"] == pytest.approx(-1.0)  # one -1 token per completion, dense_coef 1
    assert logs[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert logs[-1]["ppo/kl"] != 0.0


def test_more_generations_per_prompt(make_trainer):
    trainer = make_trainer(num_generations=4, max_completion_length=6)
    out = _rollout(trainer, prompt_rows(4, TWO_PROMPTS[:1]))
    assert out["advantages"].shape == out["completion_ids"].shape == (4, 6)
    mask = out["completion_mask"].bool()
    assert float(out["advantages"][mask].mean()) == pytest.approx(0.0, abs=1e-5)  # whitened
    assert float(out["advantages"][mask].std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)


def test_unscorable_completions_are_left_out_and_counted(make_trainer):
    trainer = make_trainer(reward=LengthScore(skip=(0, 3)), max_completion_length=6)
    out = _rollout(trainer, prompt_rows(2, TWO_PROMPTS))
    for row in (0, 3):
        assert torch.count_nonzero(out["advantages"][row]) == 0
        assert not out["ppo_value_mask"][row].any()
    assert torch.count_nonzero(out["advantages"][1]) > 0
    assert trainer._metrics["train"]["ppo/unscorable_frac"][-1] == pytest.approx(2 / 4)


def test_dense_reward_of_wrong_shape_is_rejected(make_trainer):
    class Short(TokenPenalty):
        __name__ = "short"

        def __call__(self, prompts, completions, completion_ids, **kwargs):
            r = super().__call__(prompts, completions, completion_ids)
            return type(r)(r.rewards[:, :-1], r.mask[:, :-1])

    trainer = make_trainer(dense=Short(), max_completion_length=4)
    with pytest.raises(ValueError, match="short"):
        _rollout(trainer, prompt_rows(2, TWO_PROMPTS))


def test_critic_is_saved_and_restored(make_trainer, tmp_path):
    from guard_reward.integrations.trl.value import load_value_state

    trainer = make_trainer()
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "value_model" / "config.json").exists()
    saved = {k: v.clone() for k, v in trainer.value_model.state_dict().items()}
    with torch.no_grad():
        trainer.value_model.score.weight.add_(1.0)
    assert load_value_state(trainer.value_model, None, str(tmp_path / "saved"))
    for k, v in trainer.value_model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_constructor_and_config_errors(policy_path, tmp_path):
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo_config(tmp_path, kl_estimator="k2")
    with pytest.raises(ValueError, match="lam"):
        ppo_config(tmp_path, lam=1.5)
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        ppo_config(tmp_path, multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="fp16"):
        ppo_config(tmp_path, fp16=True)
    with pytest.raises(ValueError, match="loss_type"):
        GuardPPOTrainer(
            model=str(policy_path), reward_funcs=LengthScore(), args=ppo_config(tmp_path, loss_type="vespo")
        )
    with pytest.raises(ValueError, match="at least one scalar reward"):
        GuardPPOTrainer(model=str(policy_path), reward_funcs=[], args=ppo_config(tmp_path))
    with pytest.raises(TypeError, match="GuardPPOConfig"):
        from trl import GRPOConfig

        GuardPPOTrainer(model=str(policy_path), reward_funcs=LengthScore(), args=GRPOConfig(output_dir="x",
                        use_cpu=True, bf16=False))  # fmt: skip
    with pytest.raises(ValueError, match="distinct"):
        GuardPPOTrainer(model=str(policy_path), reward_funcs=LengthScore(), args=ppo_config(tmp_path),
                        dense_rewards=[TokenPenalty(), TokenPenalty()])  # fmt: skip
    assert isinstance(ppo_config(tmp_path), GuardPPOConfig)
