"""Every shipped recipe in configs/ loads, validates and follows the recipe rules; bad options are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guard_reward.recipes.config import GuardArguments, RecipeArguments, ShapingArguments, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# GRPOConfig defaults to bf16, which transformers refuses on a machine without a GPU unless use_cpu is set.
CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def test_there_are_recipes_for_each_trainer():
    names = {p.name for p in CONFIGS}
    assert {"grpo_gen_safety.yaml", "grpo_stream_dense.yaml", "rloo_gen_safety.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_follows_the_recipe_rules(path):
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# "), "a recipe opens with a comment saying what it is for"
    assert any(f"guard-reward train --config configs/{path.name}" in line for line in header)
    top = "\n".join(header[:12])
    assert "# Hardware:" in top and "# Downloads:" in top, "a recipe says what it needs before anything else"
    assert f"guard-reward train --config {path.stem} --smoke" in top
    cfg = load_config(path, CPU)
    assert cfg.training.beta > 0, "shipped recipes keep a KL term"
    if cfg.guard.guard_reward == "safety":
        assert cfg.guard.guard_refusal
        assert cfg.guard.guard_benign_refusal_value < cfg.guard.guard_safe_value, "over-refusal is penalised"
    if cfg.shaping.shaping_mode is not None:
        assert cfg.guard.guard_stream
    if cfg.recipe.trainer == "rloo":
        assert type(cfg.training).__name__ == "RLOOConfig"
        assert cfg.shaping.shaping_mode is None or cfg.shaping.shaping_fold
    elif cfg.recipe.trainer == "ppo":
        assert type(cfg.training).__name__ == "GuardPPOConfig"
    else:
        assert type(cfg.training).__name__ == "GRPOConfig"


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return path


BASE = "model_name_or_path: p\ndataset_name: d\nguard_gen: g\noutput_dir: out\nreport_to: none\n"


def test_overrides_and_types(tmp_path):
    path = _write(tmp_path, BASE + "guard_controversial: 0.25\nguard_category_weights: {Violent: 2.0}\n")
    cfg = load_config(path, [*CPU, "--guard_mode", "soft", "--shaping_controversial", "0.5"])
    assert cfg.guard.guard_controversial == 0.25
    assert cfg.guard.guard_category_weights == {"Violent": 2.0}
    assert cfg.guard.guard_mode == "soft"
    assert cfg.shaping.shaping_controversial == 0.5
    cfg = load_config(path, [*CPU, "--guard_category_weights", '{"PII": 3}'])
    assert cfg.guard.scalar_shaping().category_weights == {"PII": 3}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("guard_mode: binary\n", "guard_mode='binary' is not accepted; use one of hard, soft"),
        ("guard_thinking: both\n", "answer, separate, whole"),
        ("guard_category_weights: {Violence: 2}\n", "unknown category 'Violence'"),
        ("guard_controversial: lenient\n", "strict"),
        ("guard_reward: hybrid\n", "guard_helpfulness"),
        ("shaping_mode: cumulative\n", "first_violation, prob, threshold"),
        ("shaping_mode: prob\n", "guard_stream"),
        ("shaping_dense_advantage: gae\n", "token, return_to_go, process_supervision"),
        ("guard_stream: s\nshaping_mode: prob\nloss_type: luspo\n", "cannot take per-token advantages"),
        ("guard_stream: s\nshaping_mode: prob\nimportance_sampling_level: sequence\n", "GSPO"),
        ("guard_reward: none\n", "no scalar reward"),
        ("trainer: dpo\n", "grpo, rloo, ppo"),
        ("guard_rewrd: safety\n", "guard_rewrd"),
    ],
)
def test_bad_configs_are_named(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, BASE + extra), CPU)


def test_rloo_folds_dense_penalty(tmp_path):
    path = _write(tmp_path, BASE + "trainer: rloo\nguard_stream: s\nshaping_mode: first_violation\n")
    assert load_config(path, CPU).shaping.shaping_fold


def test_dataclasses_validate_on_their_own():
    with pytest.raises(ValueError, match="guard_gen"):
        GuardArguments()
    assert GuardArguments(guard_reward="none").guard_gen is None
    with pytest.raises(ValueError, match="shaping_hard"):
        ShapingArguments(shaping_mode="prob", shaping_hard=True)
    with pytest.raises(ValueError, match="dataset_max_samples"):
        RecipeArguments(dataset_max_samples=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("nope.yaml")


def test_the_gradient_checkpointing_future_warning_is_silenced(recwarn):
    load_config(CONFIGS[0], CPU)
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)]


def test_documented_recipe_commands_and_sidecar_match_the_code():
    import json
    import re

    from guard_reward.evaluation.annotate import run_meta, run_settings
    from guard_reward.recipes.config import resolve_recipe, shipped_recipes

    root = Path(__file__).resolve().parents[2]
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    names = set(re.findall(r"guard-reward train --config ([^\s`]+)", readme)) - {"my_recipe.yaml", "X"}
    assert names and all(resolve_recipe(n) for n in names)
    assert set(shipped_recipes()) <= {Path(n).stem for n in names}, "every shipped recipe is shown"
    assert "--smoke" in readme and "--debug" in readme
    block = re.search(r"```json\n(.*?)```", readme[readme.index("Labelling a dataset") :], re.S).group(1)
    documented = json.loads(block.replace("…", ""))
    settings = {"guard": "g", "thinking": "answer", "dtype": None, "token_budget": 16384}
    actual = run_meta(root / "README.md", run_settings(settings, decode=True, chunk_size=64))
    assert documented.keys() == actual.keys() and documented["input"].keys() == actual["input"].keys()
    assert documented["settings"].keys() == actual["settings"].keys()
