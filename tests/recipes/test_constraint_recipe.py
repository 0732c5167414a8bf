"""The constraint recipe: configs/grpo_constraint.yaml loads and bad constraint options are named (it trains
under the --smoke switch in test_train_recipe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guard_reward.recipes.config import ConstraintArguments, load_config
from guard_reward.recipes.train import build_constraint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
BASE = "model_name_or_path: p\ndataset_name: d\nguard_gen: g\noutput_dir: out\nreport_to: none\nguard_reward: none\n"


def test_shipped_recipe_sets_the_constraint():
    cfg = load_config(CONFIGS / "grpo_constraint.yaml", CPU)
    c = cfg.constraint
    assert c.enabled and c.constraint_threshold == 0.02 and c.constraint_reward
    knobs = c.controller_config()
    assert (knobs.threshold, knobs.lambda_lr, knobs.lambda_max) == (0.02, 0.5, 10.0)
    assert not ConstraintArguments().enabled


@pytest.mark.parametrize(
    "extra,match",
    [
        ("constraint_threshold: 1.5\nconstraint_reward: m:f\n", "outside the cost's range"),
        ("constraint_threshold: 0.1\nconstraint_reward: m:f\nconstraint_lambda_lr: -1\n", "lambda_lr"),
        ("constraint_threshold: 0.1\nconstraint_reward: m:f\nconstraint_lambda_max: -2\n", "lambda_max"),
        ("constraint_threshold: 0.1\n", "no reward to maximise"),
        ("constraint_threshold: 0.1\nconstraint_reward: m:f\ntrainer: rloo\n", "grpo' or 'ppo"),
        ("constraint_threshold: 0.1\nconstraint_reward: m:f\nconstraint_dense: true\n", "guard_stream"),
        ("constraint_threshold: 0.1\nconstraint_reward: m:f\nconstraint_mode: fuzzy\n", "hard, soft"),
    ],
)
def test_bad_constraint_options_are_named(tmp_path, extra, match):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ValueError, match=match):
        load_config(path, CPU)


def test_category_weights_widen_the_threshold_range(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        BASE
        + "constraint_threshold: 1.5\nconstraint_reward: m:f\nconstraint_category_weights: {Violent: 2.0}\n"
    )
    cfg = load_config(path, CPU)
    constraint = build_constraint(cfg)
    assert constraint.config.max_cost == 2.0 and constraint.config.threshold == 1.5
