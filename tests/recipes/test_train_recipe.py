"""Every shipped recipe runs end to end under the documented ``--smoke`` switch (tiny policy, tiny Gen and Stream
guards, tiny helpfulness model; CPU, two steps) with its own reward settings; paths fail before the first step."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from guard_reward.cli import main
from guard_reward.cli.plot import add_plot_parser
from guard_reward.cli.train import add_train_parser
from guard_reward.recipes.config import load_config, resolve_recipe, shipped_recipes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# every YAML in configs/, so a recipe added later is smoke-tested without touching this file
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-assets")


def build_trainer(cfg):
    from guard_reward.recipes.train import build_trainer

    return build_trainer(cfg)


def smoke_config(path, smoke_cache, trained_gen_path, *overrides: str):
    return load_config(path, list(overrides), smoke=True, smoke_cache=smoke_cache, smoke_gen=trained_gen_path)


def test_prompts_are_loaded_as_conversations(smoke_cache, trained_gen_path, tmp_path):
    cfg = smoke_config(
        CONFIGS / "grpo_gen_safety.yaml", smoke_cache, trained_gen_path, "--system_prompt", "Be kind."
    )
    from guard_reward.recipes.train import load_prompts

    data = load_prompts(cfg)
    assert set(data.column_names) == {"harmful", "prompt"} and len(data) >= 8
    assert data[0]["prompt"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "How do I bake sourdough bread at home?"},
    ]
    assert any(data["harmful"]) and not all(data["harmful"]), "benign and harmful prompts"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_runs_under_the_smoke_switch(recipe, smoke_cache, trained_gen_path, tmp_path):
    from guard_reward.recipes.train import train

    raw = yaml.safe_load((CONFIGS / recipe).read_text())
    out = tmp_path / "run"
    cfg = smoke_config(CONFIGS / recipe, smoke_cache, trained_gen_path, "--output_dir", str(out))
    # the switch swaps checkpoints, data and sizes, never the recipe's reward settings
    assert cfg.model.model_name_or_path.startswith(str(smoke_cache))
    assert cfg.training.use_cpu and cfg.model.dtype == "float32" and cfg.training.max_steps == 2
    for key in ("guard_reward", "guard_refusal", "guard_thinking", "guard_mode", "guard_controversial"):
        if key in raw:
            assert getattr(cfg.guard, key) == raw[key], key
    for key in ("shaping_mode", "shaping_dense_coef", "shaping_fold"):
        if key in raw:
            assert getattr(cfg.shaping, key) == raw[key], key
    assert cfg.training.beta == raw["beta"] and cfg.recipe.trainer == raw.get("trainer", "grpo")

    trainer = train(cfg)
    assert trainer.state.global_step == 2
    logged = {k for row in trainer.state.log_history for k in row}
    if cfg.guard.guard_reward != "none":
        assert "guard/unsafe_rate" in logged
    if cfg.shaping.shaping_mode is not None:
        assert "guard/stream_flag_rate" in logged
        assert ("dense/reward_mean" in logged) != (cfg.recipe.trainer == "rloo")
    if cfg.guard.guard_reward == "hybrid":
        assert trainer.reward_funcs[0].helpfulness._model is not None
    if cfg.constraint.enabled:  # the objective is swapped for the tiny reward model; λ is logged every step
        assert cfg.constraint.constraint_reward.startswith(str(smoke_cache))
        rows = [r for r in trainer.state.log_history if "constraint/lambda" in r]
        assert len(rows) == 2 and all("constraint/threshold" in r for r in rows)
    assert (out / "trainer_state.json").exists() and (out / "safety_curves.png").exists()
    varied = any(float(row.get("reward_std", 0) or 0) > 0 for row in trainer.state.log_history)
    if cfg.shaping.shaping_mode is not None or varied:
        # rewards that vary between a prompt's answers (per-token penalties always do) move the policy
        from transformers import AutoModelForCausalLM

        initial = AutoModelForCausalLM.from_pretrained(cfg.model.model_name_or_path, local_files_only=True)
        trained = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
        assert any(
            not torch.equal(a, b)
            for a, b in zip(initial.state_dict().values(), trained.state_dict().values(), strict=True)
        ), "the policy's parameters changed"
    # guard-reward plot RUN_DIR redraws the figure from trainer_state.json
    (out / "safety_curves.png").unlink()
    parser = argparse.ArgumentParser()
    add_plot_parser(parser.add_subparsers())
    args = parser.parse_args(["plot", str(out)])
    assert args.func(args) == 0 and (out / "safety_curves.png").exists()


def test_every_model_and_guard_is_loaded_before_the_first_step(smoke_cache, trained_gen_path, tmp_path):
    path = CONFIGS / "grpo_stream_dense.yaml"
    cfg = smoke_config(path, smoke_cache, trained_gen_path, "--guard_stream", "./ckpt/does_not_exist")
    with pytest.raises(FileNotFoundError, match=r"no such folder: \./ckpt/does_not_exist"):
        build_trainer(cfg)
    cfg = smoke_config(path, smoke_cache, trained_gen_path, "--model_name_or_path", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        build_trainer(cfg)
    # the suite runs with HF_HUB_OFFLINE=1: a hub id names itself and the field it came from
    cfg = smoke_config(path, smoke_cache, trained_gen_path, "--guard_gen", "Qwen/Qwen3Guard-Gen-0.6B")
    with pytest.raises(OSError, match=r"'Qwen/Qwen3Guard-Gen-0.6B'.*hub is unreachable"):
        build_trainer(cfg)
    cfg = smoke_config(path, smoke_cache, trained_gen_path, "--model_name_or_path", "Qwen/Qwen3-0.6B")
    with pytest.raises(OSError, match=r"policy \(model_name_or_path\) 'Qwen/Qwen3-0.6B'.*hub is unreachable"):
        build_trainer(cfg)


def test_shipped_recipes_are_found_by_name():
    assert set(shipped_recipes()) == {Path(r).stem for r in RECIPES}
    assert resolve_recipe("grpo_gen_safety") == CONFIGS / "grpo_gen_safety.yaml"
    assert resolve_recipe("configs/rloo_gen_safety.yaml").name == "rloo_gen_safety.yaml"
    with pytest.raises(FileNotFoundError, match=r"shipped recipes: .*grpo_gen_safety"):
        resolve_recipe("grpo_gen_safty")


def test_train_cli_errors_are_one_line(capsys):
    assert main(["train", "--config", "grpo_gen_safty"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: recipe config grpo_gen_safty does not exist") and err.count("\n") == 1


def test_train_subcommand_parses_overrides_and_the_smoke_switch():
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", "c.yaml", "--max_steps", "3", "--guard_mode", "soft"])
    assert args.config == ["c.yaml", "--max_steps", "3", "--guard_mode", "soft"]
    assert args.func.__name__ == "run_train" and not args.smoke
    assert parser.parse_args(["train", "--smoke", "--config", "c.yaml"]).smoke


def test_train_help_is_plain_text_and_names_every_trainer(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "PPO" in text and "GRPO" in text and "RLOO" in text and "--smoke" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "--debug" in text


def test_smoke_data_is_json_lines(smoke_cache, trained_gen_path):
    from guard_reward.tiny.smoke import smoke_assets

    assets = smoke_assets({"guard_reward": "safety"}, smoke_cache, gen=str(trained_gen_path))
    rows = [json.loads(line) for line in Path(assets["data"]).read_text().splitlines()]
    assert {"prompt", "harmful"} == set(rows[0]) and "stream" not in assets and "helpfulness" not in assets


@pytest.mark.slow
def test_sigterm_during_training_names_the_checkpoint_that_resumes(smoke_cache, trained_gen_path, tmp_path):
    import os
    import signal

    from transformers import TrainerCallback

    from guard_reward.cli.args import Terminated, sigterm_as_interrupt
    from guard_reward.recipes.train import TrainingInterrupted, train

    class TerminateAtStep2(TrainerCallback):  # what a scheduler's SIGTERM does, at a known step
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    every_step = ("--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1")
    cfg = smoke_config(
        CONFIGS / "grpo_gen_safety.yaml", smoke_cache, trained_gen_path, *every_step, "--max_steps", "4"
    )
    with pytest.raises(TrainingInterrupted) as info, sigterm_as_interrupt():
        train(cfg, callbacks=[TerminateAtStep2()])
    assert isinstance(info.value.cause, Terminated) and info.value.step == 2
    # stopped in step 2's end, before its checkpoint: step 1's is the newest whole one
    assert info.value.checkpoint == str(out / "checkpoint-1")
    resumed = smoke_config(
        CONFIGS / "grpo_gen_safety.yaml",
        smoke_cache,
        trained_gen_path,
        *every_step,
        "--max_steps",
        "3",
        "--resume_from_checkpoint",
        info.value.checkpoint,
    )

    taken: list[int] = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            taken.append(state.global_step)

    trainer = train(resumed, callbacks=[CountSteps()])
    assert trainer.state.global_step == 3
    assert taken == [2, 3], "the run went on from checkpoint-1, not from scratch"
