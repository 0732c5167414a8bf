"""The shipped recipes run end to end: tiny policy, tiny Gen and Stream guards, a few steps on CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from guard_reward.cli_train import add_plot_parser, add_train_parser
from guard_reward.config import load_config
from guard_reward.integrations.trl.train import load_prompts, train
from tests.tiny_policy import PROMPTS, save_tiny_policy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_gen_path):
    from guard_reward.tiny.stream import build_tiny_stream

    root = tmp_path_factory.mktemp("recipe")
    data = root / "prompts.jsonl"
    rows = [{"question": p, "harmful": i >= 2} for i, p in enumerate(PROMPTS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "policy": save_tiny_policy(root / "policy"),
        "stream": build_tiny_stream(root / "stream", seed=3),
        "gen": tiny_gen_path,
        "data": data,
    }


def overrides(assets, out: Path, **extra) -> list[str]:
    """Point a shipped recipe at the tiny assets and shrink it to two CPU steps."""
    values = {
        "model_name_or_path": assets["policy"],
        "dtype": "float32",
        "guard_gen": assets["gen"],
        "guard_stream": assets["stream"],
        "dataset_name": assets["data"],
        "dataset_prompt_column": "question",
        # the random-weight Gen stand-in writes no parseable Refusal line: use its label probabilities
        "guard_refusal": "false",
        "guard_mode": "soft",
        "output_dir": out,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_generations": 2,
        "max_completion_length": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": "true",
        "bf16": "false",
        "gradient_checkpointing": "false",
        "log_completions": "false",
        **extra,
    }
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def test_prompts_are_loaded_as_conversations(assets, tmp_path):
    cfg = load_config(CONFIGS / "grpo_gen_safety.yaml", overrides(assets, tmp_path, system_prompt="Be kind."))
    data = load_prompts(cfg)
    assert data.column_names == ["harmful", "prompt"]
    assert data[0]["prompt"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": PROMPTS[0]},
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grpo_stream_dense.yaml", "rloo_gen_safety.yaml"])
def test_recipe_trains_and_logs_safety_metrics(assets, tmp_path, recipe):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    cfg = load_config(CONFIGS / recipe, overrides(assets, out))
    trainer = train(cfg)
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"guard/unsafe_rate", "guard/p_unsafe_mean", "guard/stream_flag_rate"} <= logged
    if recipe.startswith("grpo"):
        assert "dense/reward_mean" in logged
    else:
        assert "rewards/guard_tokens_sum/mean" in logged
    initial = AutoModelForCausalLM.from_pretrained(assets["policy"], local_files_only=True)
    trained = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(initial.state_dict().values(), trained.state_dict().values(), strict=True)
    ), "the policy's parameters changed"
    assert (out / "trainer_state.json").exists() and (out / "safety_curves.png").exists()

    # guard-reward plot RUN_DIR redraws the figure from trainer_state.json
    (out / "safety_curves.png").unlink()
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_plot_parser(sub)
    add_train_parser(sub)
    args = parser.parse_args(["plot", str(out)])
    assert args.func(args) == 0 and (out / "safety_curves.png").exists()


def test_train_subcommand_parses_overrides():
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", "c.yaml", "--max_steps", "3", "--guard_mode", "soft"])
    assert args.config == ["c.yaml", "--max_steps", "3", "--guard_mode", "soft"]
    assert args.func.__name__ == "run_train"
