"""Safety metrics: hand-counted rates, left-out empty rates, per-sample columns, token metrics."""

from __future__ import annotations

import pytest
import torch

from guard_reward import metrics
from guard_reward.types import Verdict


def v(level, *, refusal=None, categories=(), p_unsafe=0.0):
    probs = {"Safe": 1.0 - p_unsafe, "Controversial": 0.0, "Unsafe": p_unsafe}
    return Verdict(level=level, probs=probs if level else {}, moderation="response", refusal=refusal,
                   categories=tuple(categories))  # fmt: skip


def test_verdict_metrics_counts():
    verdicts = [
        v("Safe", refusal=True, p_unsafe=0.1),
        v("Safe", refusal=False, p_unsafe=0.2),
        v("Unsafe", refusal=False, categories=["Violent"], p_unsafe=0.9),
        v("Controversial", refusal=True, categories=["PII"], p_unsafe=0.4),
        v(None),
    ]
    harmful = [0.0, 0.0, 1.0, 1.0, 0.0]
    got = metrics.verdict_metrics(verdicts, harmful=harmful, categories=["Violent", "PII", "Jailbreak"])
    assert got == pytest.approx(
        {
            "guard/failures": 1.0,
            "guard/safe_rate": 0.5,
            "guard/controversial_rate": 0.25,
            "guard/unsafe_rate": 0.25,
            "guard/p_unsafe_mean": (0.1 + 0.2 + 0.9 + 0.4) / 4,
            "guard/category/violent": 0.25,
            "guard/category/pii": 0.25,
            "guard/category/jailbreak": 0.0,
            "guard/refusal_rate_benign": 0.5,
            "guard/refusal_rate_harmful": 0.5,
        }
    )


def test_empty_denominators_are_left_out():
    got = metrics.verdict_metrics([v("Safe", refusal=True)], harmful=[1.0], prefix="g")
    assert "g/refusal_rate_harmful" in got and "g/refusal_rate_benign" not in got
    got = metrics.verdict_metrics([v(None), v(None)])
    assert got == {"guard/failures": 2.0}
    with pytest.raises(ValueError, match="2 entries for 1"):
        metrics.verdict_metrics([v("Safe")], harmful=[1.0, 0.0])


def test_category_slug_and_columns():
    assert metrics.category_slug("Suicide & Self-Harm") == "suicide_self_harm"
    assert metrics.category_slug("Non-violent Illegal Acts") == "non_violent_illegal_acts"
    cols = metrics.verdict_columns([v("Unsafe", categories=["PII", "Violent"], refusal=False), v(None)], "x")
    assert cols == {
        "x_level": ["Unsafe", None],
        "x_category": ["PII, Violent", None],
        "x_refusal": [False, None],
    }


def test_token_metrics():
    risk = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.2, 0.5], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    got = metrics.token_metrics(risk, mask, torch.tensor([1, -1, 0]))
    assert got == pytest.approx(
        {
            "guard/stream_flag_rate": 2 / 3,
            "guard/token_p_unsafe_mean": (0.1 + 0.9 + 0.2 + 0.2 + 0.5 + 0.3) / 6,
            "guard/first_violation_pos": 0.5,
        }
    )
    got = metrics.token_metrics(risk, mask, torch.tensor([-1, -1, -1]))
    assert "guard/first_violation_pos" not in got


def test_curve_keys():
    logs = {"loss": 1.0, "guard/unsafe_rate": 0.1, "reward": 0.3, "rewards/safety/mean": 0.2, "kl": 0.01,
            "eval_guard/unsafe_rate": 0.2, "learning_rate": 1e-5, "completions/mean_length": 9.0}  # fmt: skip
    assert sorted(metrics.curve_keys(logs)) == sorted(
        [
            "guard/unsafe_rate",
            "reward",
            "rewards/safety/mean",
            "kl",
            "eval_guard/unsafe_rate",
            "completions/mean_length",
        ]
    )
