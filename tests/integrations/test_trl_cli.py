"""The TRL command-line route (docs/trainers.md, "TRL's own command line"): a module-level reward named in
``trl grpo --reward_funcs``, configured from the environment or a YAML file, built lazily.

The page's ``trl grpo`` block is run here, as written, through TRL's real entry point (``.venv/bin/trl``), on
the stand-ins behind the real hub ids (the documentation tests skip it: it is marked ``run-by`` this file)."""

from __future__ import annotations

import os
import re

import pytest

from guard_reward.integrations.trl import cli_rewards
from guard_reward.integrations.trl.cli_rewards import EnvironmentReward, build_reward, read_settings
from tests.docs.snippets import ROOT, blocks, run_shell, stand_in_env


def test_settings_come_from_the_yaml_file_and_the_variables_win(tmp_path):
    config = tmp_path / "reward.yaml"
    config.write_text("gen: some/guard\nmode: soft\ncategory_weights: {Violent: 2.0}\n")
    env = {"GUARD_REWARD_CONFIG": str(config), "GUARD_REWARD_MODE": "hard", "GUARD_REWARD_REFUSAL": "false"}
    env |= {"GUARD_REWARD_URL": "http://elsewhere", "OTHER": "x"}  # the served guard's variable is not ours
    assert read_settings(env) == {
        "gen": "some/guard",
        "mode": "hard",
        "category_weights": {"Violent": 2.0},
        "refusal": False,
    }


def test_bad_settings_are_named_with_what_is_accepted(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown guard reward setting 'mdoe' \(from \$GUARD_REWARD_MDOE\).*mode"
    ):
        read_settings({"GUARD_REWARD_MDOE": "soft"})
    (tmp_path / "list.yaml").write_text("- gen\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_settings({"GUARD_REWARD_CONFIG": str(tmp_path / "list.yaml")})
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_settings({"GUARD_REWARD_CONFIG": str(tmp_path / "missing.yaml")})
    with pytest.raises(ValueError, match="no guard: set \\$GUARD_REWARD_GEN"):
        build_reward({"mode": "soft"})
    with pytest.raises(ValueError, match="mode"):  # SafetyReward's own check of the value
        build_reward({"gen": "some/guard", "mode": "binary"})


def test_importing_and_configuring_load_no_model(monkeypatch):
    """The module imports without any configuration, and a configured reward loads its guard at the first call
    only: a guard that does not exist fails there, not before."""
    assert cli_rewards.safety.__name__ == "guard_safety"
    monkeypatch.setenv("GUARD_REWARD_GEN", str(ROOT / "no-such-guard"))
    monkeypatch.setenv("GUARD_REWARD_NAME", "my_safety")
    monkeypatch.setenv("GUARD_REWARD_DEVICE", "cpu")
    reward = EnvironmentReward("guard_safety")  # what importing the module does with the variables set
    assert reward.__name__ == "my_safety"
    assert reward.reward.guard._guard is None  # built, not loaded
    with pytest.raises(FileNotFoundError, match="no-such-guard"):
        reward([[{"role": "user", "content": "Hi"}]], [[{"role": "assistant", "content": "Hello"}]])


@pytest.mark.slow
def test_trl_grpo_runs_the_documented_command(tmp_path):
    """About a minute of CPU: TRL's launcher, the stand-in policy and Gen guard, two GRPO steps."""
    page = ROOT / "docs" / "trainers.md"
    (block,) = [b for b in blocks(page) if b.kind == "run-by" and "cli_rewards.safety" in b.code]
    env = {**os.environ, **stand_in_env(tmp_path)}
    env = {k: v for k, v in env.items() if not k.startswith("GUARD_REWARD_")}
    done = run_shell(block.code, tmp_path, env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    logged = re.findall(r"'rewards/guard_safety/mean': '?(-?[0-9.e-]+)", output)
    assert len(logged) >= 2, output[-6000:]  # one row a step (logging_steps 1)
    assert "'guard/p_unsafe_mean'" in output, output[-3000:]
    assert (tmp_path / "runs" / "trl-cli" / "model.safetensors").exists()
