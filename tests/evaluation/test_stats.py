"""Interval and agreement formulas against published or hand-computed values."""

import math

import pytest

from guard_reward.evaluation.stats import cohen_kappa, newcombe, wilson


def test_wilson_matches_hand_computed_bounds():
    # 5/10: centre (0.5 + 1.9208/10) / 1.38415 = 0.5; half 1.96/1.38415 * sqrt(0.025 + 0.0096) = 0.2634
    r = wilson(5, 10)
    assert r.rate == 0.5
    assert r.low == pytest.approx(0.2366, abs=1e-4) and r.high == pytest.approx(0.7634, abs=1e-4)
    # 0/10: [0, z^2/(n+z^2)] = [0, 3.8415/13.8415]
    zero = wilson(0, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10).high == 1.0 and wilson(10, 10).low == pytest.approx(0.7225, abs=1e-4)


def test_wilson_without_samples_is_undefined_and_bad_counts_are_refused():
    r = wilson(0, 0)
    assert math.isnan(r.rate) and math.isnan(r.low)
    with pytest.raises(ValueError, match="count <= n"):
        wilson(3, 2)


def test_newcombe_reproduces_the_published_example():
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> 0.2000, 95% CI 0.0524 to 0.3339
    d = newcombe(wilson(56, 70), wilson(48, 80))
    assert d.diff == pytest.approx(0.2)
    assert d.low == pytest.approx(0.0524, abs=1e-4) and d.high == pytest.approx(0.3339, abs=1e-4)
    assert d.excludes_zero


def test_newcombe_of_equal_rates_includes_zero_and_undefined_when_empty():
    assert not newcombe(wilson(3, 20), wilson(4, 20)).excludes_zero
    assert not newcombe(wilson(0, 0), wilson(4, 20)).excludes_zero


def test_cohen_kappa_hand_computed():
    # po = 35/50 = 0.7; first 25/50, second 30/50: pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5
    assert cohen_kappa(20, 5, 10, 15) == pytest.approx(0.4)
    assert cohen_kappa(10, 0, 0, 10) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(0, 0, 0, 12))  # one label everywhere: chance agreement is 1
    assert math.isnan(cohen_kappa(0, 0, 0, 0))
