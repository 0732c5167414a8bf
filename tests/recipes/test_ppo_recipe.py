"""The shipped PPO recipe (configs/ppo_stream_dense.yaml) runs end to end on tiny stand-in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard_reward.recipes.config import load_config
from tests.integrations.ppo_tiny import PROMPTS, build_tiny_policy

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "ppo_stream_dense.yaml"


def test_recipe_reads_the_ppo_options():
    cfg = load_config(RECIPE, ["--use_cpu", "true"])
    t = cfg.training
    assert type(t).__name__ == "GuardPPOConfig"
    assert (t.kl_estimator, t.gamma, t.lam, t.value_learning_rate, t.num_generations) == (
        "k1",
        1.0,
        0.95,
        5e-6,
        2,
    )
    assert t.beta > 0 and cfg.shaping.shaping_mode == "first_violation"


@pytest.mark.slow
def test_ppo_recipe_trains_and_saves_policy_and_critic(tiny_gen_path, tmp_path):
    from guard_reward.integrations.trl import GuardPPOTrainer
    from guard_reward.recipes.train import train
    from guard_reward.tiny.stream import build_tiny_stream

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    overrides = {
        "model_name_or_path": build_tiny_policy(tmp_path / "policy"), "dtype": "float32",
        "dataset_name": data, "guard_gen": tiny_gen_path, "guard_stream": build_tiny_stream(tmp_path / "s"),
        "guard_refusal": "false", "output_dir": out, "use_cpu": "true", "bf16": "false", "max_steps": 1,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_completion_length": 6,
        "num_iterations": 1, "logging_steps": 1, "log_completions": "false",
        "gradient_checkpointing": "false",
    }  # fmt: skip
    cfg = load_config(RECIPE, [x for k, v in overrides.items() for x in (f"--{k}", str(v))])
    trainer = train(cfg)
    assert isinstance(trainer, GuardPPOTrainer)
    assert (out / "model.safetensors").exists() and (out / "value_model" / "config.json").exists()
    logs = [h for h in trainer.state.log_history if "ppo/value_loss" in h]
    assert logs and "dense/sum_mean" in logs[-1] and "guard/unsafe_rate" in logs[-1]
