"""verl's ``reward_extra_info`` carries each judged turn's own value when asked (``turn_values``), in the
order of the turns, equal to what ``TurnSafetyReward`` places; off by default (verl averages every key)."""

from __future__ import annotations

import math

import pytest

from guard_reward.integrations.verl.scoring import GuardScorer
from tests.rewards.test_agent_trajectories import HARMFUL, WordGuard
from tests.rewards.test_turn_level import completion


def test_turn_values_are_opt_in_and_in_turn_order():
    plain = GuardScorer(WordGuard(), {"refusal": False}, None)
    score, extra = plain.score(HARMFUL, completion())
    assert score == -1.0 and "turn_values" not in extra and extra["turns"] == 3.0
    scorer = GuardScorer(WordGuard(), {"refusal": False, "guard_turn_values": True}, None)
    score, extra = scorer.score(HARMFUL, completion())
    assert score == -1.0 and extra["turn_values"] == [1.0, -1.0, 1.0]
    last = GuardScorer(WordGuard(), {"refusal": False, "turns": "last", "turn_values": True}, None)
    assert last.score(HARMFUL, completion())[1]["turn_values"] == [1.0]


def test_a_turn_without_a_value_is_nan():
    scorer = GuardScorer(WordGuard(), {"refusal": False, "turn_values": True}, None)
    score, extra = scorer.score(HARMFUL, [{"role": "narrator", "content": "?"}])  # cannot be split into turns
    assert score == 0.0  # failure_value
    assert len(extra["turn_values"]) == 1 and math.isnan(extra["turn_values"][0])


def test_turn_values_setting_must_be_a_bool():
    with pytest.raises(ValueError, match="turn_values must be true or false"):
        GuardScorer(WordGuard(), {"turn_values": "yes"}, None)
