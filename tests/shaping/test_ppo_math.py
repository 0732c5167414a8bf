"""PPO tensor maths against plain Python loops and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from guard_reward.shaping import ppo_math
from guard_reward.shaping.normalize import masked_mean

LENGTHS = [5, 3, 0, 4]  # one empty row (e.g. a masked truncated completion)
T = 6


def _mask(lengths=LENGTHS, t=T) -> torch.Tensor:
    return torch.tensor([[j < n for j in range(t)] for n in lengths])


def _rand(seed: int) -> torch.Tensor:
    return torch.randn((len(LENGTHS), T), generator=torch.Generator().manual_seed(seed))


def _gae_loop(rewards, values, lengths, gamma, lam):
    adv = [[0.0] * T for _ in lengths]
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_v = float(values[i][t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[i][t]) + gamma * next_v - float(values[i][t])
            running = delta + gamma * lam * running
            adv[i][t] = running
    ret = [
        [adv[i][t] + (float(values[i][t]) if t < n else 0.0) for t in range(T)] for i, n in enumerate(LENGTHS)
    ]
    return torch.tensor(adv), torch.tensor(ret)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_loop(gamma, lam):
    rewards, values, mask = _rand(0), _rand(1), _mask()
    # garbage beyond each row's end must be ignored
    adv, ret = ppo_math.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_loop(rewards, values, LENGTHS, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-5, atol=1e-6)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_gae_lambda_one_gives_monte_carlo_return_minus_value():
    rewards = torch.tensor([[0.0, 0.5, -1.0, 2.0]])
    values = torch.tensor([[0.3, -0.2, 0.1, 0.4]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    adv, ret = ppo_math.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # hand-computed reward-to-go: 1.5, 1.5, 1.0, 2.0
    torch.testing.assert_close(ret, torch.tensor([[1.5, 1.5, 1.0, 2.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.2, 1.7, 0.9, 1.6]]))


def test_penalty_on_one_token_shifts_advantages_up_to_that_token():
    rewards, values, mask = _rand(2), _rand(3), _mask()
    gamma, lam, k, c = 0.9, 0.8, 2, 0.7
    penalised = rewards.clone()
    penalised[0, k] -= c
    base, _ = ppo_math.gae(rewards, values, mask, gamma, lam)
    new, _ = ppo_math.gae(penalised, values, mask, gamma, lam)
    diff = new - base
    expected = torch.zeros_like(diff)
    for j in range(k + 1):
        expected[0, j] = -c * (gamma * lam) ** (k - j)
    torch.testing.assert_close(diff, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_matches_formula(estimator):
    logps, ref, mask = -_rand(4).abs(), -_rand(5).abs(), _mask()
    kl = ppo_math.kl_penalty(logps, ref, mask, estimator)
    for i, n in enumerate(LENGTHS):
        for t in range(T):
            lr = float(ref[i, t]) - float(logps[i, t])
            want = (-lr if estimator == "k1" else math.exp(lr) - lr - 1.0) if t < n else 0.0
            assert float(kl[i, t]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    if estimator == "k3":
        assert torch.all(kl >= 0)


def test_kl_penalty_rejects_unknown_estimator():
    with pytest.raises(ValueError, match=r"k2.*k1, k3"):
        ppo_math.kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), "k2")


def test_last_token_index():
    assert ppo_math.last_token_index(_mask()).tolist() == [4, 2, -1, 3]


def test_token_rewards_matches_loop():
    scores = torch.tensor([1.0, -2.0, 5.0, 0.5])
    kl, dense, mask, beta = _rand(6), _rand(7), _mask(), 0.3
    rewards = ppo_math.token_rewards(scores, kl, mask, beta, dense)
    for i, n in enumerate(LENGTHS):
        for t in range(T):
            want = 0.0
            if t < n:
                want = float(dense[i, t]) - beta * float(kl[i, t]) + (float(scores[i]) if t == n - 1 else 0.0)
            assert float(rewards[i, t]) == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_token_rewards_rejects_mismatched_shapes():
    mask = _mask()
    with pytest.raises(ValueError, match="scores must be"):
        ppo_math.token_rewards(torch.zeros(3), torch.zeros(4, T), mask, 0.1)
    with pytest.raises(ValueError, match="dense rewards"):
        ppo_math.token_rewards(torch.zeros(4), torch.zeros(4, T), mask, 0.1, torch.zeros(4, T + 1))


def test_explained_variance():
    returns, mask = _rand(10), _mask()
    assert ppo_math.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    constant = torch.full_like(returns, float(masked_mean(returns, mask)))
    assert ppo_math.explained_variance(constant, returns, mask) == pytest.approx(0.0, abs=1e-5)
    values = _rand(11)
    vals = [(float(returns[i, t]), float(values[i, t])) for i, n in enumerate(LENGTHS) for t in range(n)]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((v - m) ** 2 for v in xs) / len(xs)

    want = 1 - var([r - v for r, v in vals]) / var([r for r, _ in vals])
    assert ppo_math.explained_variance(values, returns, mask) == pytest.approx(want, rel=1e-4)
    assert math.isnan(ppo_math.explained_variance(values, torch.ones_like(returns), mask))


def _value_loss(values, old, returns, mask, clip):
    """The trainer's critic loss: the per-token terms averaged over the masked tokens, and the clip fraction."""
    per_token, clipped = ppo_math.value_loss_terms(values, old, returns, clip)
    return masked_mean(per_token, mask), masked_mean(clipped.float(), mask)


def test_value_loss_terms_match_loop():
    values, old, returns, mask, clip = _rand(12), _rand(13), _rand(14), _mask(), 0.2
    loss, frac = _value_loss(values, old, returns, mask, clip)
    terms, clipped = [], 0
    for i, n in enumerate(LENGTHS):
        for t in range(n):
            v, o, r = float(values[i, t]), float(old[i, t]), float(returns[i, t])
            vc = o + max(-clip, min(clip, v - o))
            a, b = (v - r) ** 2, (vc - r) ** 2
            terms.append(0.5 * max(a, b))
            clipped += b > a
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert float(frac) == pytest.approx(clipped / len(terms), rel=1e-6)


def test_value_loss_gradient_stops_outside_clip_range():
    old = torch.zeros(1, 1)
    returns = torch.full((1, 1), 1.0)
    values = torch.full((1, 1), 0.5, requires_grad=True)  # moved 0.5 > clip towards the return: clipped wins
    loss, frac = _value_loss(values, old, returns, torch.ones(1, 1, dtype=torch.bool), 0.2)
    loss.backward()
    assert float(frac) == 1.0 and float(values.grad) == 0.0


# -- agent trajectories: tool results inside a completion are the environment's tokens


def _agent_gae_loop(rewards, values, keep, gamma, lam):
    """GAE over each row's policy tokens only (the True entries of ``keep``), written as a plain loop."""
    b, t = len(keep), len(keep[0])
    adv = [[0.0] * t for _ in range(b)]
    for i in range(b):
        steps = [j for j in range(t) if keep[i][j]]
        running, next_v = 0.0, 0.0
        for j in reversed(steps):
            delta = float(rewards[i][j]) + gamma * next_v - float(values[i][j])
            running = delta + gamma * lam * running
            adv[i][j] = running
            next_v = float(values[i][j])
    ret = [[adv[i][j] + (float(values[i][j]) if keep[i][j] else 0.0) for j in range(t)] for i in range(b)]
    return torch.tensor(adv), torch.tensor(ret)


# policy turn, tool result, policy turn, padding; a row ending inside a tool result; a row without tools
AGENT_KEEP = [
    [1, 1, 0, 0, 0, 1, 1, 1, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [1, 0, 1, 0, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0)])
def test_gae_skips_environment_tokens_like_a_loop_over_policy_tokens(gamma, lam):
    keep = torch.tensor(AGENT_KEEP, dtype=torch.bool)
    g = torch.Generator().manual_seed(20)
    rewards, values = torch.randn(keep.shape, generator=g), torch.randn(keep.shape, generator=g)
    adv, ret = ppo_math.gae(rewards, values, keep, gamma, lam)
    ref_adv, ref_ret = _agent_gae_loop(rewards, values, AGENT_KEEP, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-5, atol=1e-6)
    assert torch.all(adv[~keep] == 0) and torch.all(ret[~keep] == 0)


def _first_turn_advantage(mask: torch.Tensor) -> float:
    """The issue's example: two 10-token policy turns around a 200-token tool result, a final score of 1 on the
    last token, a zero critic, gamma 1, lambda 0.95; the mean advantage of the first turn."""
    keep = torch.tensor([[True] * 10 + [False] * 200 + [True] * 10])
    rewards = torch.zeros(1, 220)
    rewards[0, -1] = 1.0
    adv, _ = ppo_math.gae(rewards, torch.zeros(1, 220), mask, gamma=1.0, lam=0.95)
    assert torch.all(adv[~keep] == 0) or bool(mask.all())
    return float(adv[0, :10].mean())


def test_tool_result_does_not_decay_the_first_turns_advantage():
    """Before: GAE over the completion mask (tool tokens as the policy's steps) gives the first turn
    lambda^200-scale credit; over the policy's tokens it gets the credit of a 20-step episode."""
    keep = torch.tensor([[True] * 10 + [False] * 200 + [True] * 10])
    through_tools = _first_turn_advantage(torch.ones(1, 220, dtype=torch.bool))
    policy_only = _first_turn_advantage(keep)
    # hand-computed: the mean of 0.95**k over the first turn's distances to the score
    assert through_tools == pytest.approx(sum(0.95**k for k in range(210, 220)) / 10, rel=1e-4)
    assert through_tools == pytest.approx(1.7e-5, rel=0.05)
    assert policy_only == pytest.approx(sum(0.95**k for k in range(10, 20)) / 10, rel=1e-5)
    assert policy_only == pytest.approx(0.48, abs=0.005)


def test_token_rewards_put_the_score_on_the_last_policy_token():
    keep = torch.tensor(AGENT_KEEP, dtype=torch.bool)
    kl = torch.ones(keep.shape)
    rewards = ppo_math.token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), kl, keep, beta=0.5)
    # row 1 was cut off inside its tool result: the score goes to the policy's last token (2), not to token 7
    assert rewards[1].tolist() == [-0.5, -0.5, 1.5] + [0.0] * 7
    assert float(rewards[0, 7]) == pytest.approx(0.5) and torch.all(rewards[~keep] == 0)


def test_kl_penalty_charges_no_tool_token():
    keep = torch.tensor(AGENT_KEEP, dtype=torch.bool)
    kl = ppo_math.kl_penalty(-torch.rand(keep.shape), -torch.rand(keep.shape) - 1, keep, "k3")
    assert torch.all(kl[~keep] == 0) and torch.all(kl[keep] > 0)
