"""Scalar shaping: hand-computed values for every rule."""

from __future__ import annotations

import pytest

from guard_reward.shaping.scalar import ScalarShaping, hybrid_value, is_unsafe, prompt_harm, scalar_reward
from guard_reward.types import Verdict


def v(level, probs=None, categories=(), refusal=False, p_refusal=None, moderation="response"):
    probs = probs or {"Safe": 0.0, "Controversial": 0.0, "Unsafe": 0.0, **({level: 1.0} if level else {})}
    return Verdict(
        level=level,
        probs=probs,
        moderation=moderation,
        categories=tuple(categories),
        refusal=refusal,
        p_refusal=p_refusal,
    )


def test_hard_values_and_controversial_policies():
    strict = ScalarShaping()
    assert scalar_reward(v("Safe"), strict) == 1.0
    assert scalar_reward(v("Unsafe"), strict) == -1.0
    assert scalar_reward(v("Controversial"), strict) == -1.0
    assert scalar_reward(v("Controversial"), ScalarShaping(controversial="loose")) == 1.0
    assert scalar_reward(v("Controversial"), ScalarShaping(controversial=0.25)) == 0.25


def test_category_weights_scale_unsafe_value():
    cfg = ScalarShaping(unsafe_value=-2.0, category_weights={"Violent": 3.0, "PII": 0.5})
    assert scalar_reward(v("Unsafe", categories=["Violent"]), cfg) == -6.0
    assert scalar_reward(v("Unsafe", categories=["PII"]), cfg) == -1.0
    assert scalar_reward(v("Unsafe", categories=["PII", "Violent"]), cfg) == -6.0  # the largest weight
    assert scalar_reward(v("Unsafe", categories=["Jailbreak"]), cfg) == -2.0  # unlisted -> 1
    assert scalar_reward(v("Safe", categories=[]), cfg) == 1.0


def test_refusal_depends_on_prompt_harm():
    cfg = ScalarShaping(benign_refusal_value=-0.5, harmful_refusal_value=0.8)
    assert scalar_reward(v("Safe", refusal=True), cfg, harmful=0.0) == -0.5
    assert scalar_reward(v("Safe", refusal=True), cfg, harmful=1.0) == 0.8
    assert scalar_reward(v("Safe", refusal=False), cfg, harmful=None) == 1.0
    assert scalar_reward(v("Safe", refusal=True), cfg, harmful=None) is None  # cannot tell over-refusal
    assert scalar_reward(v("Unsafe", refusal=True), cfg, harmful=0.0) == -1.0  # unsafe has priority
    off = ScalarShaping(refusal=False)
    assert scalar_reward(v("Safe", refusal=True), off, harmful=0.0) == 1.0


def test_refusal_needs_refusal_information():
    verdict = Verdict(level="Safe", probs={"Safe": 1.0}, moderation="response")
    assert scalar_reward(verdict, ScalarShaping()) is None
    assert scalar_reward(verdict, ScalarShaping(refusal=False)) == 1.0
    only_p = Verdict(level="Safe", probs={"Safe": 1.0}, moderation="response", p_refusal=0.7)
    assert scalar_reward(only_p, ScalarShaping(benign_refusal_value=-0.5), harmful=0.0) == -0.5


def test_soft_mode_is_the_expectation():
    probs = {"Safe": 0.5, "Controversial": 0.2, "Unsafe": 0.3}
    cfg = ScalarShaping(mode="soft", refusal=False, unsafe_value=-2.0)
    # strict: 0.5*1 + 0.2*(-2) + 0.3*(-2)
    assert scalar_reward(v("Safe", probs), cfg) == pytest.approx(0.5 - 0.4 - 0.6)
    loose = ScalarShaping(mode="soft", refusal=False, unsafe_value=-2.0, controversial="loose")
    assert scalar_reward(v("Safe", probs), loose) == pytest.approx(0.5 + 0.2 - 0.6)
    own = ScalarShaping(mode="soft", refusal=False, unsafe_value=-2.0, controversial=0.5)
    assert scalar_reward(v("Safe", probs), own) == pytest.approx(0.5 + 0.1 - 0.6)


def test_soft_mode_mixes_refusal_and_harm_probabilities():
    probs = {"Safe": 0.8, "Controversial": 0.0, "Unsafe": 0.2}
    cfg = ScalarShaping(mode="soft", benign_refusal_value=-1.0, harmful_refusal_value=2.0, unsafe_value=-3.0)
    # safe side = 0.6*1 + 0.4*(0.25*2 + 0.75*(-1)) = 0.6 - 0.1 = 0.5 ; total = 0.8*0.5 + 0.2*(-3)
    got = scalar_reward(v("Safe", probs, refusal=False, p_refusal=0.4), cfg, harmful=0.25)
    assert got == pytest.approx(0.8 * 0.5 - 0.6)


def test_failures_return_none():
    assert (
        scalar_reward(Verdict(level=None, probs={}, moderation="response", error="x"), ScalarShaping())
        is None
    )


def test_prompt_harm():
    hard, soft = ScalarShaping(), ScalarShaping(mode="soft")
    probs = {"Safe": 0.6, "Controversial": 0.3, "Unsafe": 0.1}
    assert prompt_harm(v("Controversial", probs, moderation="prompt"), hard) == 1.0
    assert prompt_harm(v("Controversial", probs), ScalarShaping(controversial="loose")) == 0.0
    assert prompt_harm(v("Safe", probs), soft) == pytest.approx(0.4)
    assert prompt_harm(v("Safe", probs), ScalarShaping(mode="soft", controversial="loose")) == pytest.approx(
        0.1
    )
    assert prompt_harm(Verdict(level=None, probs={}, moderation="prompt"), hard) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "binary"}, "hard, soft"),
        ({"controversial": "lenient"}, "strict"),
        ({"safe_value": float("nan")}, "safe_value"),
        ({"category_weights": {"Violence": 2.0}}, "unknown category 'Violence'"),
        ({"category_weights": {"Violent": -1.0}}, ">= 0"),
        ({"refusal": "yes"}, "refusal"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ScalarShaping(**kwargs)


def test_hybrid_rule_matches_the_report():
    assert hybrid_value(True, False, 3.0) == -10.0
    assert hybrid_value(False, True, 3.0) == -5.0
    assert hybrid_value(False, False, 3.0) == 3.0
    assert hybrid_value(True, True, -12.0) == -12.0
    assert hybrid_value(False, True, -7.0) == -7.0
    assert hybrid_value(True, False, None) == -10.0
    assert hybrid_value(False, False, None) is None
    assert hybrid_value(True, False, 0.0, unsafe_cap=-2.0) == -2.0


def test_is_unsafe():
    assert is_unsafe(v("Unsafe")) and is_unsafe(v("Controversial"))
    assert not is_unsafe(v("Controversial"), "loose") and not is_unsafe(v("Safe"))
