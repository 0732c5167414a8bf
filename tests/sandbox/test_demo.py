"""The demo pipeline end to end at a seconds size, its report, and the CLI options."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from guard_reward.cli.demo import add_demo_parser, config_from_args
from guard_reward.sandbox.evaluate import EvalResult, EvalSample
from guard_reward.sandbox.report import _targets
from guard_reward.sandbox.rules import judge


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from guard_reward.sandbox.demo import DemoConfig, run_demo

    return run_demo(DemoConfig.small(tmp_path_factory.mktemp("demo"), arms=("scalar", "dense", "guard_only")))


def test_demo_writes_report_curves_and_csvs(small_demo):
    out = small_demo.report_path.parent
    report = small_demo.report_path.read_text()
    for heading in ("## Before and after", "## Steps to reach 5% and 2%", "## Guard accuracy", "## What can go wrong",
                    "## Samples", "## Time"):  # fmt: skip
        assert heading in report
    for png in ("comparison.png", "guard_only.png", "scalar/safety_curves.png", "dense/safety_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    steps = small_demo.world.config.arm.steps
    for arm in ("scalar", "dense", "guard_only"):
        assert [int(float(r["step"])) for r in rows if r["arm"] == arm] == list(range(steps + 1))
    with open(out / "guard_accuracy.csv") as f:
        assert [r["set"] for r in csv.DictReader(f)] == list(small_demo.accuracy)
    lines = (out / "scalar" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == len(small_demo.initial.samples)
    assert {"prompt", "response", "level", "fluent"} <= set(json.loads(lines[0]))


def test_every_arm_starts_from_the_same_evaluation(small_demo):
    firsts = [arm.history[0] for arm in small_demo.arms.values()]
    assert all(f is small_demo.initial for f in firsts)
    # the numbers in the report table are the evaluations' own
    report = small_demo.report_path.read_text()
    assert f"| unsafe rate, all prompts | {100 * small_demo.initial.unsafe_rate:.1f}% |" in report


def test_dense_arm_logs_its_token_penalty(small_demo):
    assert any("dense/reward_mean" in e for e in small_demo.arms["dense"].log_history)
    assert not any("dense/reward_mean" in e for e in small_demo.arms["scalar"].log_history)
    assert all("kl" not in e or e["kl"] == 0 for e in small_demo.arms["guard_only"].log_history)


def _result(unsafe: int, refusal_benign: int, fluent: int, n: int = 100) -> EvalResult:
    samples = []
    for i in range(n):
        harmful = i % 2 == 0
        if i < unsafe:
            text = "we fold the zorbak in the warm lamp ."
        elif not harmful and i < unsafe + 2 * refusal_benign:
            text = "sorry i cannot help with that ."
        else:
            text = "we fold the kite in the warm lamp ."
        if i >= fluent:
            text += " the"
        samples.append(EvalSample("p", harmful, text, judge(text)))
    return EvalResult(0, tuple(samples))


def test_targets_are_checked_not_asserted():
    before = _result(unsafe=30, refusal_benign=5, fluent=100)
    good = _targets(before, _result(unsafe=2, refusal_benign=5, fluent=95))
    assert all(line.startswith("- met") for line in good)
    bad = _targets(before, _result(unsafe=6, refusal_benign=10, fluent=80))
    assert all(line.startswith("- MISSED") for line in bad)


def test_cli_options_map_onto_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["demo", "--out", str(tmp_path), "--steps", "7", "--no-hacking", "--guard", "g", "--seed", "3"]
    )
    config = config_from_args(args)
    assert config.arm.steps == 7 and config.seed == 3
    assert config.arms == ("scalar", "dense", "helpful", "lagrangian")
    assert config.gen_guard == "g" and config.stream_guard is None and config.output_dir == str(tmp_path)
    quick = config_from_args(parser.parse_args(["demo", "--quick", "--out", str(tmp_path)]))
    assert quick.arm.steps < 10 and quick.heldout_prompts < 128
    more = config_from_args(
        parser.parse_args(["demo", "--fixed-lambda", "--no-constraint", "--workers", "1"])
    )
    assert more.arms == ("scalar", "dense", "guard_only", "fixed_low", "fixed_high") and more.workers == 1


@pytest.fixture(scope="module")
def constraint_demo(tmp_path_factory):
    from guard_reward.sandbox.demo import DemoConfig, run_demo

    config = DemoConfig.small(tmp_path_factory.mktemp("cdemo"), arms=("helpful", "lagrangian"), workers=2)
    return run_demo(config)


def test_constraint_arms_in_parallel_log_lambda_and_report_it(constraint_demo):
    lag = constraint_demo.arms["lagrangian"]
    lam = [e["constraint/lambda"] for e in lag.log_history if "constraint/lambda" in e]
    assert len(lam) == constraint_demo.world.config.arm.steps
    assert not any("constraint/lambda" in e for e in constraint_demo.arms["helpful"].log_history)
    report = constraint_demo.report_path.read_text()
    assert "## Safety as a constraint" in report and "| step | λ |" in report
    assert f"| 1 | {lam[0]:.2f} |" in report
    out = constraint_demo.report_path.parent
    assert (out / "constraint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "curves.csv") as f:
        assert "helpfulness_benign" in next(csv.reader(f))
    cpu = constraint_demo.world.cpu_seconds
    assert {"policy", "guards", "arm helpful", "arm lagrangian", "total"} <= set(cpu)
    assert "| stage | wall s | CPU s |" in report


def test_parallel_arms_match_serial_arms(constraint_demo):
    from dataclasses import replace

    from guard_reward.sandbox.demo import _run_arms

    world = constraint_demo.world
    serial = replace(world, config=replace(world.config, workers=1), seconds={}, cpu_seconds={})
    again, _, _ = _run_arms(serial, constraint_demo.initial)
    for name, arm in constraint_demo.arms.items():
        assert [r.row() for r in again[name].history] == [r.row() for r in arm.history], name


def test_every_arm_is_also_evaluated_by_the_heldout_judge(small_demo):
    config = small_demo.world.config
    assert small_demo.world.judge is not None and small_demo.world.judge is not small_demo.world.gen
    section = small_demo.report_path.read_text().split("## Held-out judge and reward-hacking alarms")[1]
    for name, arm in small_demo.arms.items():
        assert [int(r["step"]) for r in arm.safety_eval] == list(range(config.arm.steps + 1))
        last = arm.safety_eval[-1]
        assert last["eval_safety/answers"] == config.heldout_judge_prompts * config.heldout_judge_samples
        assert 0.0 <= last["eval_safety/truth/fluent_rate"] <= 1.0  # the truth on the callback's own answers
        assert any("eval_safety/unsafe_rate" in row for row in arm.log_history)  # logged through the trainer
        assert f"\n| {name} | {100 * last['eval_safety/truth/unsafe_rate']:.1f}% | " in section


def test_demo_heldout_judge_options():
    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers())
    off = config_from_args(parser.parse_args(["demo", "--no-heldout-judge"]))
    assert off.heldout_judge_prompts == 0
    given = config_from_args(parser.parse_args(["demo", "--heldout-judge", "some/judge"]))
    assert given.heldout_judge == "some/judge" and given.heldout_judge_prompts > 0
