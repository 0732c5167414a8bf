"""SelfPlayTrainer with each defender-side trainer and reward beside TRL's GRPOTrainer + SafetyReward (covered by
test_self_play.py): DenseGRPOTrainer with TokenSafetyPenalty next to a scalar SafetyReward, TRL's GRPOTrainer with
HybridSafetyReward, and ConstrainedGRPOTrainer with a SafetyCost constraint, on the tiny stand-ins.

One round each (attacker 1 step, defender 1 step; the constrained case two rounds): the defender stepped, its log
carries that reward's own metrics, the mixture's ``harmful`` column reached the reward row by row, and the
constrained trainer's multiplier state crosses the round boundary through the checkpoint alone.
"""

from __future__ import annotations

import csv
import math
from typing import Any

import pytest

from tests.multiproc.self_play_scenario import BENIGN, build_self_play

KINDS = ("dense", "hybrid", "constrained")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tests.integrations.ppo_tiny import build_tiny_policy

    return str(build_tiny_policy(tmp_path_factory.mktemp("self_play_defenders") / "policy"))


@pytest.fixture(scope="module")
def gen(trained_gen_path):
    """The trained Gen stand-in, loaded once for every reward of every case."""
    from guard_reward.guards.gen_spec import load_gen_guard

    return load_gen_guard(str(trained_gen_path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from guard_reward.guards.stream import StreamGuard
    from guard_reward.tiny.stream import build_tiny_stream

    path = build_tiny_stream(tmp_path_factory.mktemp("tiny_stream"), seed=3)
    return StreamGuard.from_pretrained(str(path), device="cpu", dtype="float32")


def _reading_safety(gen: Any, seen: list[tuple[str, float]]):
    """SafetyReward valuing refusals by the ``harmful`` column, recording the (prompt text, harm) it valued
    each completion with."""
    from guard_reward.rewards import SafetyReward

    class ReadingSafety(SafetyReward):
        def _contexts(self, samples, prompts, completions, call):
            contexts = super()._contexts(samples, prompts, completions, call)
            seen.extend((p[-1]["content"], c.harm) for p, c in zip(prompts, contexts, strict=True))
            return contexts

    return ReadingSafety(gen, harmful_column="harmful", name="safety")


def _defender_factory(kind: str, gen: Any, stream: Any, seen: list[tuple[str, float]]):
    """``make_defender`` for ``build_self_play``: the defender trainer of ``kind``; ``seen`` collects what its
    rewards read from the ``harmful`` column."""

    def make(policy, args, train_dataset, processing_class):
        common = dict(args=args, train_dataset=train_dataset, processing_class=processing_class)
        if kind == "dense":
            from guard_reward.integrations.trl.grpo import DenseGRPOTrainer
            from guard_reward.rewards import TokenSafetyPenalty

            penalty = TokenSafetyPenalty(stream)
            return DenseGRPOTrainer(
                policy, [_reading_safety(gen, seen)], dense_rewards=[penalty], dense_coef=0.5, **common
            )
        if kind == "hybrid":
            from trl import GRPOTrainer

            from guard_reward.rewards import HybridSafetyReward

            def helpfulness(prompts, completions, harmful, **_):
                # HybridSafetyReward itself values every refusal alike; the column reaches its helpfulness term
                seen.extend((p[-1]["content"], float(h)) for p, h in zip(prompts, harmful, strict=True))
                return [0.1 * len(c[-1]["content"]) for c in completions]

            return GRPOTrainer(policy, [HybridSafetyReward(gen, helpfulness)], **common)
        from guard_reward.integrations.trl.constraint import ConstrainedGRPOTrainer
        from guard_reward.rewards.cost import SafetyCost
        from guard_reward.shaping.constraint import Constraint, ConstraintConfig

        # soft cost: P(Unsafe) is never exactly the threshold, so λ moves every step
        cost = SafetyCost(gen, mode="soft", metric_prefix="cost")
        constraint = Constraint(cost, ConstraintConfig(0.5, lambda_init=1.0, lambda_lr=1.0, lambda_max=None))
        return ConstrainedGRPOTrainer(policy, [_reading_safety(gen, seen)], constraint=constraint, **common)

    return make


@pytest.mark.parametrize("kind", KINDS)
def test_defender_kind_in_the_loop(kind, policy, gen, stream, tmp_path):
    seen: list[tuple[str, float]] = []
    rounds = 2 if kind == "constrained" else 1
    make = _defender_factory(kind, gen, stream, seen)
    loop = build_self_play(policy, gen, tmp_path, rounds=rounds, make_defender=make)
    loop.train(until=1)
    assert loop.attacker.state.global_step == 1 and loop.defender.state.global_step == 1
    logs = [e for e in loop.defender.state.log_history if "loss" in e]
    assert len(logs) == 1
    log = logs[0]
    own = {
        "dense": (
            "dense/reward_mean",
            "dense/no_signal_frac",
            "guard/stream_flag_rate",
            "rewards/safety/mean",
        ),
        "hybrid": ("rewards/guard_hybrid/mean", "guard/refusal_rate", "guard/unsafe_rate"),
        "constrained": (
            "constraint/lambda",
            "constraint/threshold",
            "constraint/batch_cost",
            "cost/unsafe_rate",
        ),
    }[kind]
    missing = [k for k in own if k not in log]
    assert not missing, f"{kind}: {missing} not in the defender's log {sorted(log)}"
    if kind == "dense":
        assert log["dense/no_signal_frac"] < 1.0  # the Stream penalty scored some completions
    # the per-round table carries the defender's own curve next to the guard's
    table = _table(tmp_path)
    own_columns = {"dense": ["defender:dense/reward_mean"], "hybrid": [],
                   "constrained": ["defender:constraint/lambda", "defender:constraint/cost"]}[kind]  # fmt: skip
    assert [c for c in table[0] if c.startswith(("defender:dense", "defender:constraint"))] == own_columns
    assert all(math.isfinite(float(table[0][c])) for c in own_columns)

    # The mixture's harmful column reached the reward, row by row: every prompt the defender trained on, read
    # with its own label (8 completions = 4 prompts x 2 generations), harmful and benign ones both present.
    rows = loop.last_defender_rows
    label = {r["prompt"][0]["content"]: float(r["harmful"]) for r in rows}
    assert all(label[t] == (0.0 if t in BENIGN else 1.0) for t in label)
    assert len(seen) == 8 and {t for t, _ in seen} == set(label)
    assert all(h == label[t] for t, h in seen), seen
    assert {h for _, h in seen} == {0.0, 1.0}

    if kind != "constrained":
        return
    # λ, the cost window and the counters come back from the checkpoint at the round boundary: wipe the
    # in-memory controller, so that only checkpoint-1's constraint_state.json can bring round 1 back.
    from guard_reward.shaping.constraint import LagrangeController

    constraint = loop.defender.constraint
    after_1 = constraint.controller.state_dict()
    assert after_1["offered"] == 1 and after_1["log_lambda"] != 0.0
    constraint.controller = LagrangeController(constraint.controller.config)
    loop.train(until=2)
    after_2 = constraint.controller.state_dict()
    assert loop.defender.state.global_step == 2 and after_2["offered"] == 2
    window = after_2["windows"][0]
    assert window[: len(after_1["windows"][0])] == after_1["windows"][0] and len(window) == 16
    # λ took one step from round 1's λ on the pooled window (not from lambda_init = 1, log λ = 0)
    lam_1 = math.exp(after_1["log_lambda"])
    expected = after_1["log_lambda"] + 1.0 * (sum(window) / len(window) - 0.5) * lam_1
    assert after_2["log_lambda"] == pytest.approx(expected)
    lams = [e["constraint/lambda"] for e in loop.defender.state.log_history if "loss" in e]
    assert lams == pytest.approx([lam_1, math.exp(expected)])
    assert [float(r["defender:constraint/lambda"]) for r in _table(tmp_path)] == pytest.approx(lams)


def _table(out) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "loop" / "self_play.csv").read_text().splitlines()))
