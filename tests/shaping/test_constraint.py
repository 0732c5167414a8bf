"""The Lagrangian controller, the advantage combination and the guard cost, against independent references."""

from __future__ import annotations

import json
import math
import random
from collections import deque

import pytest
import torch

from guard_reward.shaping.constraint import (
    ConstraintConfig,
    LagrangeController,
    combine_advantages,
    group_advantages,
)


def reference_lambdas(costs_per_batch, threshold, init, lr, lam_max, delay, window):
    """safe-rlhf's rule written as a torch SGD loop on a log-lambda parameter (the reference)."""
    log_lambda = torch.nn.Parameter(torch.tensor(math.log(init), dtype=torch.float64))
    opt = torch.optim.SGD([log_lambda], lr=lr)
    seen: list[float] = []
    out = []
    for step, costs in enumerate(costs_per_batch):
        seen.extend(c for c in costs if c is not None)
        recent = torch.tensor(seen[-window:], dtype=torch.float64)
        if step >= delay and costs and any(c is not None for c in costs):
            opt.zero_grad()
            loss = -(recent.mean() - threshold) * log_lambda.exp()
            loss.backward()
            opt.step()
            if lam_max is not None:
                with torch.no_grad():
                    log_lambda.clamp_(max=math.log(lam_max))
        out.append(float(log_lambda.detach().exp()))
    return out


@pytest.mark.parametrize(
    "threshold,init,lr,lam_max,delay,window",
    [(0.02, 1.0, 0.5, 5.0, 0, 128), (0.3, 0.5, 2.0, 3.0, 3, 20), (0.0, 0.1, 0.1, None, 1, 7)],
)
def test_update_matches_sgd_reference(threshold, init, lr, lam_max, delay, window):
    rng = random.Random(0)
    batches = []
    for step in range(40):
        p = 0.5 if step < 15 else 0.01  # cost above the threshold, then below: λ must rise, then fall
        batches.append([float(rng.random() < p) for _ in range(16)])
    batches[20] = [None] * 16  # a batch the guard could not judge at all
    ctrl = LagrangeController(
        ConstraintConfig(threshold, init, lr, lam_max, update_delay_steps=delay, cost_window=window)
    )
    got = [ctrl.update(b).lam for b in batches]
    want = reference_lambdas(batches, threshold, init, lr, lam_max, delay, window)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert ctrl.skipped == 1 and ctrl.missing == 16
    assert max(got) > init  # the test exercises both directions
    if threshold > 0:
        assert got[-1] < max(got)


def test_lambda_fixed_with_zero_lr_and_delay_holds():
    ctrl = LagrangeController(ConstraintConfig(0.1, lambda_init=2.0, lambda_lr=0.0))
    for _ in range(5):
        step = ctrl.update([1.0, 1.0])
        assert step.lam == 2.0 and not step.updated
        assert step.violation == pytest.approx(0.9)
    delayed = LagrangeController(ConstraintConfig(0.1, lambda_lr=1.0, update_delay_steps=2))
    assert [delayed.update([1.0]).updated for _ in range(3)] == [False, False, True]


def test_all_missing_batch_does_not_move_lambda(caplog):
    ctrl = LagrangeController(ConstraintConfig(0.1, lambda_lr=1.0))
    ctrl.update([1.0, 0.0])
    before = ctrl.lam
    with caplog.at_level("WARNING"):
        step = ctrl.update([None, float("nan")])
    assert ctrl.lam == before and not step.updated and math.isnan(step.cost)
    assert ctrl.skipped == 1 and ctrl.missing == 2
    assert "every cost" in caplog.text


def test_state_dict_round_trip_continues_identically():
    cfg = ConstraintConfig(0.05, lambda_lr=1.0, cost_window=8)
    a = LagrangeController(cfg)
    for c in ([1.0] * 4, [0.0, 1.0, None]):
        a.update(c)
    state = json.loads(json.dumps(a.state_dict()))
    b = LagrangeController(cfg)
    b.load_state_dict(state)
    assert (b.lam, b.state_dict(), b.offered, b.missing) == (a.lam, a.state_dict(), a.offered, a.missing)
    for c in ([0.0] * 5, [1.0, 1.0]):
        assert a.update(c).lam == b.update(c).lam
    with pytest.raises(KeyError, match="log_lambda"):
        b.load_state_dict({"windows": []})
    with pytest.raises(KeyError, match="windows"):
        b.load_state_dict({"log_lambda": 0.0, "offered": 1})


def safe_rlhf_lambdas(rank_batches, threshold, init, lr, lam_max, delay, window):
    """safe-rlhf's PPO-Lag rule on N ranks, as a plain loop: every rank extends its own
    ``deque(maxlen=window)`` with its own episode costs, the ranks' window means are averaged (the all-reduce
    AVG), and log λ takes one SGD step on ``-(mean - threshold) · exp(log λ)``, clamped at log(lambda_max)."""
    windows = [deque(maxlen=window) for _ in rank_batches[0]]
    log_lambda, out = math.log(init), []
    for step, per_rank in enumerate(rank_batches):
        for w, costs in zip(windows, per_rank, strict=True):
            w.extend(costs)
        episode_cost = sum(sum(w) / len(w) for w in windows) / len(windows)
        if step >= delay:
            log_lambda += lr * (episode_cost - threshold) * math.exp(log_lambda)
            if lam_max is not None:
                log_lambda = min(log_lambda, math.log(lam_max))
        out.append(math.exp(log_lambda))
    return out


@pytest.mark.parametrize("num_ranks,window", [(2, 3), (2, 12), (3, 5)])
def test_per_rank_windows_match_safe_rlhf_with_rank_correlated_costs(num_ranks, window):
    """Costs differ systematically by rank (the last rank is mostly safe): λ follows safe-rlhf's per-rank
    windows averaged over ranks, not a window over the gathered batch's last samples."""
    rng = random.Random(1)
    p_unsafe = [0.9, 0.05, 0.5][:num_ranks]
    p_unsafe[-1] = 0.05
    rank_batches = [
        [[float(rng.random() < p_unsafe[r]) for _ in range(4)] for r in range(num_ranks)] for _ in range(12)
    ]
    cfg = ConstraintConfig(0.2, lambda_init=1.0, lambda_lr=0.5, lambda_max=5.0, cost_window=window)
    ctrl = LagrangeController(cfg)
    got = [
        ctrl.update([c for rank in step for c in rank], num_processes=num_ranks).lam for step in rank_batches
    ]
    want = safe_rlhf_lambdas(rank_batches, 0.2, 1.0, 0.5, 5.0, 0, window)
    assert got == pytest.approx(want, rel=1e-12)
    assert [len(w) for w in ctrl.windows] == [min(window, 12 * 4)] * num_ranks
    # one window over the gathered batch (the last `window` costs in rank order) sees mostly the safe last rank
    one_window = LagrangeController(cfg)
    flat = [one_window.update([c for rank in step for c in rank]).lam for step in rank_batches]
    if window < 4 * num_ranks:
        assert flat[-1] < got[-1]


def test_windows_validation_and_resume_on_other_process_count(caplog):
    ctrl = LagrangeController(ConstraintConfig(0.1, cost_window=4))
    with pytest.raises(ValueError, match="equal per-process slices"):
        ctrl.update([1.0, 0.0, 1.0], num_processes=2)
    with pytest.raises(ValueError, match="num_processes"):
        ctrl.update([1.0], num_processes=0)
    ctrl.update([1.0, 1.0, 0.0, 0.0], num_processes=2)
    state = ctrl.state_dict()
    assert state["windows"] == [[1.0, 1.0], [0.0, 0.0]]
    resumed = LagrangeController(ctrl.config)
    resumed.load_state_dict(state)
    with caplog.at_level("WARNING"):
        resumed.update([None, None, None, None], num_processes=4)  # resumed on 4 processes: all missing
    assert "redistributed" in caplog.text
    assert resumed.mean_cost == pytest.approx(0.5) and len(resumed.windows) == 4
    legacy = LagrangeController(ctrl.config)  # a state saved with one window over the gathered batch
    legacy.load_state_dict({"log_lambda": 0.0, "offered": 3, "window": [1.0, 0.0, 0.0]})
    assert legacy.mean_cost == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(threshold=1.0), "outside the cost's range"),
        (dict(threshold=-0.1), "outside the cost's range"),
        (dict(threshold=2.5, max_cost=2.0), r"\[0, 2.0\)"),
        (dict(threshold=0.1, lambda_lr=-0.1), "lambda_lr must be >= 0"),
        (dict(threshold=0.1, lambda_max=-1.0), "lambda_max must be > 0"),
        (dict(threshold=0.1, lambda_max=0.5, lambda_init=1.0), "below lambda_init"),
        (dict(threshold=0.1, lambda_init=0.0), "lambda_init must be > 0"),
        (dict(threshold=0.1, cost_window=0), "cost_window must be >= 1"),
        (dict(threshold=0.1, update_delay_steps=-1), "update_delay_steps must be >= 0"),
        (dict(threshold=float("nan")), "finite number"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConstraintConfig(**kwargs)


def test_combine_and_group_advantages():
    r = torch.tensor([1.0, -1.0])
    c = torch.tensor([[0.5, 0.5], [-2.0, 0.0]])
    out = combine_advantages(r, c, 3.0)
    assert out.shape == (2, 2)
    assert out[1, 0].item() == pytest.approx((-1.0 + 6.0) / 4.0)
    assert torch.equal(combine_advantages(r, torch.zeros(2), 0.0), r)
    with pytest.raises(ValueError, match="λ"):
        combine_advantages(r, r, -1.0)
    adv = group_advantages(torch.tensor([1.0, 0.0, float("nan"), 0.0, 0.0, 0.0]), 3)
    assert adv[2] == 0.0 and adv[0] > 0 > adv[1]  # NaN left out of its group, its advantage 0
    assert torch.equal(adv[3:], torch.zeros(3))  # a constant group carries no signal
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, scale="global")


def trl_advantages(rewards: torch.Tensor, group: int, scale: str) -> torch.Tensor:
    """TRL 1.16's ``sum_then_normalize`` advantage (GRPOTrainer._generate_and_score_completions), with TRL's
    own ``nanstd``: centred on the group's nanmean, divided by the group's or the whole batch's std + 1e-4
    unless ``"none"``; NaN -> 0."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, group), dim=1).repeat_interleave(group)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none", True, False])
def test_group_advantages_follow_trl_scale_rewards(scale):
    nan = float("nan")
    # a benign group whose P(Unsafe) differs by noise only, an unsafe/safe split, a group with a missing cost
    costs = torch.tensor([0.010, 0.013, 0.011, 0.012, 0.98, 0.02, 0.97, 0.03, 0.5, nan, 0.1, 0.9])
    mode = {True: "group", False: "none"}.get(scale, scale)
    got = group_advantages(costs, 4, scale=scale)
    assert got == pytest.approx(trl_advantages(costs, 4, mode), abs=1e-5)
    benign, split = got[:4].abs().max(), got[4:8].abs().max()
    if mode == "group":  # per-group scaling: noise gets as large as a real unsafe answer
        assert benign > 0.8 and split < 1.0
    else:  # batch / none: noise stays small next to the unsafe answers
        assert benign < 0.01 * split
