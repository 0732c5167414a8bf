"""SafetyEvalCallback in a real GRPOTrainer run on the sandbox's tiny policy, guards and held-out judge."""

from __future__ import annotations

import pytest
import torch

from guard_reward.evaluation.answering import GenerationSettings

pytestmark = pytest.mark.slow


def length_reward(completions, **kwargs):
    """A reward that differs between the answers of a group, so that every step moves the weights."""
    return [float(len(c[-1]["content"])) for c in completions]  # characters: every answer has 12 tokens


def _trainer(world, out, steps=2):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from guard_reward.rewards import SafetyReward

    model = AutoModelForCausalLM.from_pretrained(world.policy_path, dtype="float32")
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "harmful": h} for p, h in world.train[:8]]
    )
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=12, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, learning_rate=1e-3,
    )  # fmt: skip
    reward = SafetyReward(world.gen, name="guard_safety")
    return GRPOTrainer(
        model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=world.tokenizer
    )


def test_logs_held_out_rates_through_the_trainer(eval_world, sandbox_prompts, second_judge_path, tmp_path):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.integrations.trl import SafetyCurvesCallback
    from guard_reward.integrations.trl.eval_callback import SafetyEvalCallback

    trainer = _trainer(eval_world, tmp_path)
    curves = SafetyCurvesCallback(tmp_path)
    trainer.add_callback(curves)
    judge = GenGuard.from_pretrained(second_judge_path)
    cb = SafetyEvalCallback(
        sandbox_prompts, judge, train_guard=eval_world.gen, eval_every=1,
        generation=GenerationSettings(samples=2, max_new_tokens=12),
    ).attach(trainer)  # fmt: skip
    trainer.train()
    rows = [r for r in trainer.state.log_history if "eval_safety/unsafe_rate" in r]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["eval_safety/answers"] == 2 * len(sandbox_prompts) for r in rows)
    # the training rows still carry the training metrics: the evaluation's log did not swallow them
    train_rows = [r for r in trainer.state.log_history if "reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and all("guard/unsafe_rate" in r for r in train_rows)
    last = cb.last_rows
    harmful = [r for r in last if r["harmful"]]
    assert rows[-1]["eval_safety/unsafe_rate_harmful"] == pytest.approx(
        sum(r["judge"]["level"] == "Unsafe" for r in harmful) / len(harmful)
    )
    assert rows[0]["eval_safety/length_ratio"] == 1.0 and rows[0]["eval_safety/ref_perplexity_ratio"] == 1.0
    assert "eval_safety/alarm/length_drift" in rows[-1]
    # the curves CSV (and so `guard-reward plot`) gets the evaluation too
    assert any("eval_safety/unsafe_rate" in r for r in curves.rows)


def test_refuses_to_run_unattached(eval_world, sandbox_prompts, tmp_path):
    from guard_reward.integrations.trl.eval_callback import SafetyEvalCallback

    trainer = _trainer(eval_world, tmp_path, steps=1)
    trainer.add_callback(SafetyEvalCallback(sandbox_prompts, eval_world.gen))
    with pytest.raises(RuntimeError, match="attach"):
        trainer.train()


def test_evaluating_does_not_change_what_the_policy_learns(
    eval_world, sandbox_prompts, second_judge_path, tmp_path
):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.integrations.trl.eval_callback import SafetyEvalCallback

    plain = _trainer(eval_world, tmp_path / "plain")
    plain.train()
    watched = _trainer(eval_world, tmp_path / "watched")
    SafetyEvalCallback(sandbox_prompts, GenGuard.from_pretrained(second_judge_path), train_guard=eval_world.gen,
                       eval_every=1, generation=GenerationSettings(samples=2, max_new_tokens=12)).attach(watched)  # fmt: skip
    watched.train()
    a, b = plain.model.state_dict(), watched.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the training samples themselves are the same: evaluating did not move the training random stream
    keys = ("reward", "num_tokens", "completions/mean_length", "rewards/guard_safety/mean")

    def steps(t):
        return [
            {k: r[k] for k in keys} for r in t.state.log_history if "reward" in r and "train_runtime" not in r
        ]

    assert steps(plain) == steps(watched) and len(steps(plain)) == 2
