"""Constrained GRPO / PPO on a tiny Qwen3 policy: the combined advantage, the logs, save and resume, 2 ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from guard_reward.integrations.trl.constraint import ConstrainedGRPOTrainer, ConstrainedPPOTrainer
from guard_reward.shaping.constraint import (
    Constraint,
    ConstraintConfig,
    LagrangeController,
    combine_advantages,
)
from tests.integrations.ppo_tiny import TokenPenalty
from tests.shaping.test_constraint import safe_rlhf_lambdas
from tests.tiny_policy import prompt_dataset, save_tiny_policy, tiny_policy

COMMON = dict(
    per_device_train_batch_size=4, num_generations=2, max_completion_length=8, max_steps=2,
    learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, bf16=False, seed=0,
    save_strategy="no", activation_checkpointing=False, disable_tqdm=True,
)  # fmt: skip


def length_reward(prompts, completions, **kwargs):
    return [float(len(c[-1]["content"])) / 10.0 for c in completions]


def long_cost(prompts, completions, **kwargs):
    """A cost that differs within a group: 1 for a completion longer than 12 characters."""
    return [float(len(c[-1]["content"]) > 12) for c in completions]


def table_view(adv: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """What the completions table must show: the advantage, or its mean over the completion's tokens."""
    if adv.dim() == 1:
        return adv.tolist()
    return ((adv * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


class Recorder(ConstrainedGRPOTrainer):
    """Keeps the rewards, costs and advantages of each generation batch, and the completions table's."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        record = {"adv": out["advantages"].clone(), "lam": self.lam, "mask": out["completion_mask"].float()}
        record["table"] = list(self._logs["advantages"])
        self.record = [*getattr(self, "record", []), record]
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.batches = [*getattr(self, "batches", []), (rewards[:, 0].clone(), self._pending_cost.clone())]
        return rewards


class ShowingPPO(ConstrainedPPOTrainer):
    """Keeps the last generation batch's advantages and completion mask."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.shown = (out["advantages"].clone(), out["completion_mask"].float())
        return out


def _norm(x: torch.Tensor, group: int) -> torch.Tensor:
    g = x.view(-1, group)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)


def test_grpo_advantage_is_the_lagrangian_combination(tmp_path):
    model, tok = tiny_policy()
    constraint = Constraint(long_cost, ConstraintConfig(threshold=0.1, lambda_init=0.5, lambda_lr=1.0))
    trainer = Recorder(
        model, [length_reward], args=GRPOConfig(output_dir=str(tmp_path), **COMMON),
        train_dataset=prompt_dataset(), processing_class=tok, constraint=constraint,
    )  # fmt: skip
    trainer.train()
    reference = LagrangeController(constraint.config)
    for (rewards, costs), rec in zip(trainer.batches, trainer.record, strict=True):
        lam = reference.update(costs.tolist()).lam  # λ is updated first, then used (safe-rlhf's order)
        assert rec["lam"] == pytest.approx(lam)
        want = (_norm(rewards, 2) - lam * _norm(costs, 2)) / (1 + lam)
        assert rec["adv"] == pytest.approx(want, abs=1e-5)
        # the completions table shows the combined advantage, not TRL's reward-only one
        assert rec["table"] == pytest.approx(want.tolist(), abs=1e-5)
        assert rec["table"] != pytest.approx(_norm(rewards, 2).tolist(), abs=1e-3)
    rows = [r for r in trainer.state.log_history if "constraint/lambda" in r]
    assert len(rows) == 2
    for key in (
        "constraint/cost",
        "constraint/threshold",
        "constraint/violation",
        "constraint/skipped_updates",
    ):
        assert all(key in r for r in rows), key
    assert rows[-1]["constraint/lambda"] == pytest.approx(reference.lam)


def test_all_none_cost_skips_the_update(tmp_path):
    model, tok = tiny_policy()
    constraint = Constraint(lambda prompts, completions, **kw: [None] * len(completions),
                            ConstraintConfig(threshold=0.1, lambda_lr=1.0))  # fmt: skip
    trainer = ConstrainedGRPOTrainer(
        model, [length_reward], args=GRPOConfig(output_dir=str(tmp_path), **COMMON),
        train_dataset=prompt_dataset(), processing_class=tok, constraint=constraint,
    )  # fmt: skip
    trainer.train()
    assert trainer.lam == 1.0 and constraint.controller.skipped == 2
    rows = [r for r in trainer.state.log_history if "constraint/lambda" in r]
    assert [r["constraint/skipped_updates"] for r in rows] == [1.0, 2.0]
    assert all("constraint/cost" not in r for r in rows)


def test_no_reward_function_is_refused(tmp_path):
    model, tok = tiny_policy()
    constraint = Constraint(long_cost, ConstraintConfig(threshold=0.1))
    with pytest.raises(ValueError, match="at least one reward function"):
        ConstrainedGRPOTrainer(
            model, [], args=GRPOConfig(output_dir=str(tmp_path), **COMMON),
            train_dataset=prompt_dataset(), processing_class=tok, constraint=constraint,
        )  # fmt: skip
    with pytest.raises(TypeError, match="Constraint"):
        ConstrainedGRPOTrainer(
            model, [length_reward], args=GRPOConfig(output_dir=str(tmp_path), **COMMON),
            train_dataset=prompt_dataset(), processing_class=tok, constraint=0.1,
        )  # fmt: skip


@pytest.mark.slow
def test_lambda_saved_in_checkpoints_and_restored(tmp_path):
    policy = save_tiny_policy(tmp_path / "policy")
    from transformers import AutoModelForCausalLM

    def run(max_steps, resume=None):
        model = AutoModelForCausalLM.from_pretrained(policy)
        _, tok = tiny_policy()
        constraint = Constraint(long_cost, ConstraintConfig(threshold=0.1, lambda_lr=2.0))
        args = GRPOConfig(output_dir=str(tmp_path / "run"), **{**COMMON, "max_steps": max_steps,
                          "save_strategy": "steps", "save_steps": 1})  # fmt: skip
        trainer = ConstrainedGRPOTrainer(
            model, [length_reward], args=args, train_dataset=prompt_dataset(), processing_class=tok,
            constraint=constraint,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = run(2)
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "constraint_state.json").read_text())
    assert saved["log_lambda"] == pytest.approx(first.constraint.controller.log_lambda)
    assert saved["offered"] == 2
    one = json.loads((tmp_path / "run" / "checkpoint-1" / "constraint_state.json").read_text())
    resumed = run(2, resume=str(tmp_path / "run" / "checkpoint-1"))
    # resumed from step 1: one more update on top of the saved state
    assert resumed.constraint.controller.offered == one["offered"] + 1
    rows = [r for r in resumed.state.log_history if "constraint/lambda" in r]
    reference = LagrangeController(resumed.constraint.config)
    reference.load_state_dict(one)
    assert rows[-1]["constraint/lambda"] != pytest.approx(1.0)  # not restarted from lambda_init
    assert [len(w) for w in reference.windows] == [len(w) for w in one["windows"]] == [4]


@pytest.mark.slow
def test_ppo_with_constraint_runs_and_logs(tmp_path):
    from guard_reward.integrations.trl.ppo_config import GuardPPOConfig

    policy = save_tiny_policy(tmp_path / "policy")
    _, tok = tiny_policy()
    constraint = Constraint(long_cost, ConstraintConfig(threshold=0.1, lambda_lr=1.0))
    args = GuardPPOConfig(output_dir=str(tmp_path / "ppo"), **{**COMMON, "beta": 0.05})
    trainer = ShowingPPO(
        str(policy), [length_reward], args=args, train_dataset=prompt_dataset(), processing_class=tok,
        constraint=constraint,
    )  # fmt: skip
    trainer.train()
    rows = [r for r in trainer.state.log_history if "constraint/lambda" in r]
    assert len(rows) == 2 and constraint.controller.offered == 2
    # the completions table shows the combined per-token advantages' mean over each completion's tokens
    adv, mask = trainer.shown
    assert list(trainer._logs["advantages"]) == pytest.approx(table_view(adv, mask), abs=1e-6)


@pytest.mark.slow
def test_two_ranks_hold_the_same_lambda(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as s:  # a free port: torchrun's static rendezvous does not take port 0
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(root / "tests" / "integrations" / "constraint_ranks.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0]["lambda"] == ranks[1]["lambda"] and len(ranks[0]["lambda"]) == 3
    assert ranks[0]["costs"] == ranks[1]["costs"]  # both updated from the same gathered costs
    # rank 0 judges all 4 of its samples 1, rank 1 only its first: rank-correlated costs, mean 0.625
    assert ranks[0]["costs"] == [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 3
    per_rank = [[c[:4], c[4:]] for c in ranks[0]["costs"]]
    want = safe_rlhf_lambdas(per_rank, threshold=0.2, init=1.0, lr=0.5, lam_max=5.0, delay=0, window=3)
    assert ranks[0]["lambda"] == pytest.approx(want, rel=1e-9)
    assert ranks[0]["lambda"][0] > 1.0  # the cost is above the threshold: λ rises


def test_dense_cost_lands_on_its_token(tmp_path):
    model, tok = tiny_policy()
    constraint = Constraint(
        long_cost, ConstraintConfig(threshold=0.1, lambda_init=2.0, lambda_lr=0.0),
        dense_cost=TokenPenalty(position=2, value=1.0), dense_coef=0.5, dense_sign=1.0,
    )  # fmt: skip
    trainer = Recorder(
        model, [length_reward], args=GRPOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 1}),
        train_dataset=prompt_dataset(), processing_class=tok, constraint=constraint,
    )  # fmt: skip
    trainer.train()
    adv = trainer.record[0]["adv"]
    assert adv.dim() == 2
    # λ = 2: the token with cost 1 gets -2 * 0.5 / 3 more than its neighbours
    rows = [i for i in range(adv.shape[0]) if bool((adv[i, 3:5] != 0).all())]
    assert rows
    for i in rows:
        assert float(adv[i, 2] - adv[i, 1]) == pytest.approx(-2 * 0.5 / 3, abs=1e-5)
        assert float(adv[i, 3]) == pytest.approx(float(adv[i, 1]), abs=1e-6)
    # the table shows each completion's mean per-token advantage, which the cost token lowers
    record = trainer.record[0]
    assert record["table"] == pytest.approx(table_view(adv, record["mask"]), abs=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_cost_advantages_follow_scale_rewards_like_trl_reward_advantages(tmp_path, monkeypatch, scale):
    """With the cost equal to the reward, the cost advantage must equal TRL's own reward advantage for every
    ``scale_rewards`` (TRL computes the latter; ConstrainedGRPOTrainer the former)."""
    import guard_reward.integrations.trl.constraint as module

    seen = []

    def spy(reward_adv, cost_adv, lam):
        seen.append((reward_adv.clone(), cost_adv.clone()))
        return combine_advantages(reward_adv, cost_adv, lam)

    monkeypatch.setattr(module, "combine_advantages", spy)
    model, tok = tiny_policy()
    constraint = Constraint(length_reward, ConstraintConfig(threshold=0.1, lambda_lr=0.0))
    args = GRPOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 1, "scale_rewards": scale,
                      "per_device_train_batch_size": 6, "num_generations": 3})  # fmt: skip
    trainer = ConstrainedGRPOTrainer(
        model, [length_reward], args=args, train_dataset=prompt_dataset(), processing_class=tok,
        constraint=constraint,
    )  # fmt: skip
    trainer.train()
    ((reward_adv, cost_adv),) = seen
    assert cost_adv.abs().sum() > 0, "the completions differ in length: the test has signal"
    assert cost_adv == pytest.approx(reward_adv, abs=1e-5)


def test_dense_cost_narrower_than_completions_is_padded_and_wider_is_refused():
    dense = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    placed = ConstrainedGRPOTrainer._dense_on_tokens(dense, 2, 4, torch.device("cpu"))
    assert torch.equal(placed, torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="dense costs cover 2 tokens, the completions only 1"):
        ConstrainedPPOTrainer._dense_on_tokens(dense, 2, 1, torch.device("cpu"))


def test_dense_cost_is_read_as_dense_rewards_are():
    """A NaN where the dense cost's mask is False is never read; one where it is True is an error naming it."""
    from types import SimpleNamespace

    from guard_reward.integrations.trl.constraint import _ConstraintMixin
    from guard_reward.types import DenseRewards

    nan = float("nan")

    def token_cost(prompts, completions, completion_ids, **kwargs):
        return DenseRewards(
            torch.tensor([[1.0, nan], [nan, 2.0]]), torch.tensor([[True, False], [False, True]])
        )

    token_cost.__name__ = "token_cost"
    constraint = Constraint(long_cost, ConstraintConfig(threshold=0.1), dense_cost=token_cost, dense_sign=1.0)
    fake = SimpleNamespace(constraint=constraint, state=None, _log_completion_extra=None, _log_metric=None)
    completions = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b" * 20}]]
    _ConstraintMixin._score_costs(fake, [{"prompt": "p"}] * 2, ["p", "p"], completions, [[1, 2], [3, 4]])
    assert fake._pending_cost.tolist() == [0.0, 1.0]
    assert fake._pending_dense_cost.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    constraint.dense_cost = lambda **kw: DenseRewards(
        torch.full((2, 2), nan), torch.ones(2, 2, dtype=torch.bool)
    )
    with pytest.raises(ValueError, match="returned non-finite values"):
        _ConstraintMixin._score_costs(fake, [{"prompt": "p"}] * 2, ["p", "p"], completions, [[1, 2], [3, 4]])
