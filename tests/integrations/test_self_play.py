"""SelfPlayTrainer on tiny stand-ins (one process): both sides step every round, the defender trains on the
round's attacks mixed with fixed and benign prompts, both sides' curves are logged, and a resumed run continues
both trainers (optimizer step, log history) and the novelty memory from the last completed round."""

from __future__ import annotations

import csv
import json

import pytest

from tests.multiproc.self_play_scenario import BENIGN, FIXED, build_self_play


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tests.integrations.ppo_tiny import build_tiny_policy

    return str(build_tiny_policy(tmp_path_factory.mktemp("self_play") / "policy"))


def test_two_rounds_then_a_resumed_third(policy, trained_gen_path, tmp_path):
    loop = build_self_play(policy, str(trained_gen_path), tmp_path, rounds=3)
    state = loop.train(until=2)  # interrupted after two of three planned rounds
    assert (
        state.rounds_done == 2
        and loop.attacker.state.global_step == 2
        and loop.defender.state.global_step == 2
    )
    attacker_logs = [e for e in loop.attacker.state.log_history if "loss" in e]
    defender_logs = [e for e in loop.defender.state.log_history if "loss" in e]
    assert len(attacker_logs) == 2 and all("attack/p_unsafe_mean" in e for e in attacker_logs)
    # the linear learning-rate schedule spans the planned rounds (a round does not decay it to 0 at its end)
    assert [float(e["learning_rate"]) for e in attacker_logs] == pytest.approx([1e-3, 2e-3 / 3])
    assert "attack/diversity" in attacker_logs[0] and "rewards/attack/mean" in attacker_logs[0]
    assert all("guard/unsafe_rate" in e for e in defender_logs)
    # the defender's mixture: 4 prompts per step, 2 attacks (fixed prompts fill in for missing valid ones),
    # 1 benign, the rest fixed
    rows = loop.last_defender_rows
    assert len(rows) == 4 and sum(r["source"] == "benign" for r in rows) == 1
    assert sum(r["source"] == "attack" for r in rows) <= 2 and sum(r["source"] == "fixed" for r in rows) >= 1
    assert all(r["harmful"] == (r["source"] != "benign") for r in rows)
    harmful = [r["prompt"][0]["content"] for r in rows if r["harmful"]]
    assert all(
        r["source"] == "attack" or h in FIXED for r, h in zip([r for r in rows if r["harmful"]], harmful)
    )
    assert all(r["prompt"][0]["content"] in BENIGN for r in rows if r["source"] == "benign")
    table = list(csv.DictReader((tmp_path / "loop" / "self_play.csv").read_text().splitlines()))
    assert [float(r["round"]) for r in table] == [1.0, 2.0] and "attack_success_rate" in table[0]
    assert float(table[0]["attacks"]) == 8.0  # 1 step x 4 prompts x 2 generations
    memory = json.loads((tmp_path / "loop" / "self_play_state.json").read_text())["memory"]

    resumed = build_self_play(policy, str(trained_gen_path), tmp_path, rounds=3)
    resumed.train(resume=True)
    assert resumed.attacker.state.global_step == 3 and resumed.defender.state.global_step == 3
    # the log history came back from the checkpoints and went on
    logs = [e for e in resumed.attacker.state.log_history if "loss" in e]
    assert len(logs) == 3 and float(logs[-1]["learning_rate"]) == pytest.approx(1e-3 / 3)
    assert resumed.attack_reward.memory.texts[: len(memory["texts"])] == memory["texts"]
    assert [
        float(r["round"])
        for r in csv.DictReader((tmp_path / "loop" / "self_play.csv").read_text().splitlines())
    ] == [
        1.0,
        2.0,
        3.0,
    ]


def test_bad_configurations_are_refused(tmp_path):
    from guard_reward.integrations.trl.self_play import SelfPlayConfig

    with pytest.raises(ValueError, match="rounds"):
        SelfPlayConfig(str(tmp_path), rounds=0)
    with pytest.raises(ValueError, match="sum to <= 1"):
        SelfPlayConfig(str(tmp_path), rounds=1, attack_share=0.8, benign_share=0.5)
