"""Safety metrics: hand-counted rates, left-out empty rates, per-sample columns, token metrics."""

from __future__ import annotations

import pytest
import torch

from guard_reward.rewards import metrics
from guard_reward.types import Verdict


def v(level, *, refusal=None, categories=(), p_unsafe=0.0):
    probs = {"Safe": 1.0 - p_unsafe, "Controversial": 0.0, "Unsafe": p_unsafe}
    return Verdict(level=level, probs=probs if level else {}, moderation="response", refusal=refusal,
                   categories=tuple(categories))  # fmt: skip


def means(items):
    """One process's summary of per-item values, as TRL's flush makes it on one rank: each key's mean."""
    return {key: sum(values) / len(values) for key, values in items.items()}


def test_verdict_items_counts():
    verdicts = [
        v("Safe", refusal=True, p_unsafe=0.1),
        v("Safe", refusal=False, p_unsafe=0.2),
        v("Unsafe", refusal=False, categories=["Violent"], p_unsafe=0.9),
        v("Controversial", refusal=True, categories=["PII"], p_unsafe=0.4),
        v(None),
    ]
    harmful = [0.0, 0.0, 1.0, 1.0, 0.0]
    got = means(metrics.verdict_items(verdicts, harmful=harmful, categories=["Violent", "PII", "Jailbreak"]))
    assert got == pytest.approx(
        {
            "guard/safe_rate": 0.5,
            "guard/controversial_rate": 0.25,
            "guard/unsafe_rate": 0.25,
            "guard/p_unsafe_mean": (0.1 + 0.2 + 0.9 + 0.4) / 4,
            "guard/category/violent": 0.25,
            "guard/category/pii": 0.25,
            "guard/category/jailbreak": 0.0,
            "guard/refusal_rate_benign": 0.5,
            "guard/refusal_rate_harmful": 0.5,
            "guard/empty_rate": 0.0,
        }
    )


def test_empty_denominators_are_left_out():
    got = metrics.verdict_items([v("Safe", refusal=True)], harmful=[1.0], prefix="g")
    assert "g/refusal_rate_harmful" in got and "g/refusal_rate_benign" not in got
    got = metrics.verdict_items([v(None), v(None)])
    assert got == {"guard/empty_rate": [0.0, 0.0]}
    with pytest.raises(ValueError, match="2 entries for 1"):
        metrics.verdict_items([v("Safe")], harmful=[1.0, 0.0])


def test_category_slug_and_columns():
    assert metrics.category_slug("Suicide & Self-Harm") == "suicide_self_harm"
    assert metrics.category_slug("Non-violent Illegal Acts") == "non_violent_illegal_acts"
    cols = metrics.verdict_columns([v("Unsafe", categories=["PII", "Violent"], refusal=False), v(None)], "x")
    assert cols == {
        "x_level": ["Unsafe", None],
        "x_category": ["PII, Violent", None],
        "x_refusal": [False, None],
    }


def test_token_items():
    risk = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.2, 0.5], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    got = means(metrics.token_items(risk, mask, torch.tensor([1, -1, 0])))
    assert got == pytest.approx(
        {
            "guard/stream_flag_rate": 2 / 3,
            "guard/token_p_unsafe_mean": (0.1 + 0.9 + 0.2 + 0.2 + 0.5 + 0.3) / 6,
            "guard/first_violation_pos": 0.5,
        }
    )
    got = means(metrics.token_items(risk, mask, torch.tensor([-1, -1, -1])))
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


class Rank:
    """One rank of a trainer as TRL 1.16 logs reward metrics: ``log_metric`` appends to a pending list."""

    def __init__(self, world: int):
        self.accelerator = type("Accelerator", (), {"num_processes": world})()
        self.pending: dict[str, list[float]] = {}

    def log_metric(self, name, value):
        self.pending.setdefault(name, []).append(value)


def trl_flush(ranks: list[Rank]) -> dict[str, float]:
    """TRL's flush: per key, (sum of every call's value on every rank) / (number of calls on every rank)."""
    keys = {k for r in ranks for k in r.pending}
    out = {}
    for key in keys:
        values = [x for r in ranks for x in r.pending.get(key, [])]
        out[key] = sum(values) / len(values)
    return out


def test_two_ranks_log_global_weighted_rates_and_totals():
    """Rank 0 holds one benign prompt, rank 1 fifteen: a mean of per-rank rates would weigh them alike."""
    rank_verdicts = [
        [v("Safe", refusal=True), v("Unsafe", refusal=False, categories=["PII"], p_unsafe=0.9), v(None)],
        [v("Safe", refusal=False, p_unsafe=0.2)] * 15 + [v("Safe", refusal=True)],
    ]
    rank_harm = [[0.0, 1.0, 0.0], [0.0] * 15 + [1.0]]
    rank_failures = [{"context_too_long": 3, "unparseable": 1}, {"unparseable": 2}]
    ranks = [Rank(world=2), Rank(world=2)]
    for rank, verdicts, harm, failures in zip(ranks, rank_verdicts, rank_harm, rank_failures, strict=True):
        assert metrics.num_processes(rank.log_metric) == 2
        metrics.emit_metrics(
            rank.log_metric,
            rates=metrics.verdict_items(verdicts, harmful=harm, categories=["PII"]),
            totals=metrics.failure_totals(failures),
            per_rank={"guard/seconds": 1.0},
        )
    got = trl_flush(ranks)
    everything = [x for vs in rank_verdicts for x in vs]
    judged = [x for x in everything if x.ok]
    harm = [h for hs in rank_harm for h in hs]
    benign = [x.refusal for x, h in zip(everything, harm, strict=True) if x.ok and h == 0.0]
    assert got["guard/refusal_rate_benign"] == pytest.approx(sum(benign) / len(benign))  # 1/16, not 0.5
    assert got["guard/refusal_rate_harmful"] == pytest.approx(1 / 2)
    assert got["guard/safe_rate"] == pytest.approx(sum(x.level == "Safe" for x in judged) / len(judged))
    assert got["guard/category/pii"] == pytest.approx(1 / len(judged))
    assert got["guard/p_unsafe_mean"] == pytest.approx(sum(x.p_unsafe for x in judged) / len(judged))
    assert got["guard/failures"] == 6.0 and got["guard/failures/unparseable"] == 3.0
    assert got["guard/failures/context_too_long"] == 3.0 and got["guard/failures/non_finite"] == 0.0
    assert got["guard/seconds"] == 1.0
    with pytest.raises(ValueError, match="unknown failure reasons"):
        metrics.failure_totals({"oops": 1})


def test_two_ranks_log_global_token_rates():
    risk = [torch.tensor([[0.1, 0.9], [0.2, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])]
    mask = [torch.tensor([[True, True], [True, False]]), torch.tensor([[True, True, True]])]
    flags = [torch.tensor([1, -1]), torch.tensor([2])]
    ranks = [Rank(world=2), Rank(world=2)]
    for rank, r, m, f in zip(ranks, risk, mask, flags, strict=True):
        metrics.emit_metrics(rank.log_metric, rates=metrics.token_items(r, m, f))
    got = trl_flush(ranks)
    assert got["guard/first_violation_pos"] == pytest.approx(1.5)
    assert got["guard/stream_flag_rate"] == pytest.approx(2 / 3)
    assert got["guard/token_p_unsafe_mean"] == pytest.approx((0.1 + 0.9 + 0.2 + 1.5) / 6)


def test_num_processes_without_a_trainer_is_one():
    assert metrics.num_processes(None) == 1 and metrics.num_processes(print) == 1
