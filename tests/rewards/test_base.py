"""What the rewards share: the number check of their options."""

from __future__ import annotations

import math

import pytest

from guard_reward import HybridSafetyReward, SafetyReward, TokenSafetyPenalty
from guard_reward.shaping.scalar import FiniteNumberError, finite_number


@pytest.mark.parametrize("bad", ["1", True, math.nan, math.inf, -math.inf, [1.0]])
def test_finite_number_refuses_what_is_not_a_finite_number(bad):
    for optional in (False, True):
        with pytest.raises(FiniteNumberError, match="x must be a finite number") as info:
            finite_number("x", bad, optional=optional)
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert finite_number("x", 2) == 2.0 and isinstance(finite_number("x", 2), float)
    assert finite_number("x", None, optional=True) is None
    with pytest.raises(FiniteNumberError, match="got None"):
        finite_number("x", None)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: SafetyReward("unused", failure_value=v), "failure_value"),
        (lambda v: SafetyReward("unused", truncated_value=v), "truncated_value"),
        (lambda v: HybridSafetyReward("unused", len, unsafe_value=v), "unsafe_value"),
        (lambda v: TokenSafetyPenalty("unused", coef=v), "coef"),
        (lambda v: TokenSafetyPenalty("unused", clip=v), "clip"),
    ],
)
def test_reward_options_share_the_number_check(build, name):
    with pytest.raises(FiniteNumberError, match=name):
        build(math.nan)
