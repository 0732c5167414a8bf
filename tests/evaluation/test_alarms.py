"""The reward-hacking alarms against hand-made evaluation values."""

import logging
import math

import pytest

from guard_reward.evaluation.alarms import AlarmConfig, Alarms

BASE = dict(unsafe_rate=0.3, guard_unsafe_rate=0.29, mean_tokens=14.0, entropy=1.2, benign_refusal_rate=0.02,
            ref_nll=1.0)  # fmt: skip


def test_a_healthy_run_raises_nothing():
    alarms = Alarms()
    alarms.check(0, BASE)
    out = alarms.check(10, {**BASE, "mean_tokens": 16.0, "entropy": 0.6, "ref_nll": 1.3, "unsafe_rate": 0.05,
                            "guard_unsafe_rate": 0.04})  # fmt: skip
    assert out["alarms"] == 0.0 and not alarms.fired
    assert out["length_ratio"] == pytest.approx(16 / 14)
    assert out["ref_perplexity_ratio"] == pytest.approx(math.exp(0.3))


def test_a_gamed_guard_fires_each_alarm_once(caplog):
    alarms = Alarms()
    alarms.check(0, BASE)
    hacked = dict(unsafe_rate=0.25, guard_unsafe_rate=0.01, mean_tokens=3.0, entropy=0.2,
                  benign_refusal_rate=0.4, ref_nll=2.5)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        out = alarms.check(20, hacked)
        again = alarms.check(24, hacked)
    assert out["alarms"] == 5.0 and again["alarms"] == 5.0
    assert alarms.fired == dict.fromkeys(
        ("guard_judge_gap", "length_drift", "entropy_drift", "benign_refusal_rise", "fluency_collapse"), 20
    )
    assert out["guard_judge_gap"] == pytest.approx(0.24)
    assert len([r for r in caplog.records if "reward-hacking alarm" in r.message]) == 5


def test_undefined_values_raise_no_alarm_and_disabled_alarms_stay_off():
    alarms = Alarms(AlarmConfig(enabled=("length_drift",)))
    alarms.check(0, {"mean_tokens": 10.0, "benign_refusal_rate": float("nan")})
    out = alarms.check(5, {"mean_tokens": 30.0, "benign_refusal_rate": 0.9, "ref_nll": 9.0})
    assert out["alarm/length_drift"] == 1.0
    assert "alarm/benign_refusal_rise" not in out and "alarm/fluency_collapse" not in out


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="length_ratio"):
        AlarmConfig(length_ratio=0.5)
    with pytest.raises(ValueError, match="unknown"):
        AlarmConfig(enabled=("vibes",))
