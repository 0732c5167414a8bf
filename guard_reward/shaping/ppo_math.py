"""Pure tensor functions of PPO with per-token rewards: KL estimators, reward assembly, GAE, explained variance,
the clipped value loss.

Everything here works on right-padded ``(B, T)`` completion tensors with a boolean ``mask`` (True on real
completion tokens) and has no model, trainer or process group in it, so each function is tested against a
plain Python loop. The formulas are the textbook ones (Schulman et al. 2016 for GAE; Ziegler et al. 2019 for
the KL-penalised RLHF reward; http://joschu.net/blog/kl-approx.html for k1/k3). Two differences from the usual
RLHF PPO code:

* the per-token reward has a third term: a dense reward (e.g. a guard's per-token safety penalty) is added to
  ``-beta * KL_t`` at every token, and the scalar score still goes to the last token only;
* agent trajectories: the ``mask`` of :func:`gae` may have holes. A completion of a tool loop interleaves the
  policy's turns with tool results; those tokens are the environment's, not decisions of the policy, so the
  running advantage and the next value carry across them and ``gamma`` and ``lambda`` count the policy's tokens
  only (as verl's multi-turn GAE does). Rewards on them are ignored: :func:`token_rewards` puts none there and
  :func:`kl_penalty` charges no KL on text the policy did not write;
* padding is masked explicitly everywhere (values and rewards beyond a row's end are ignored, not assumed to
  be zero), and batch statistics (here the explained variance; the whitening of advantages is
  :func:`~guard_reward.shaping.normalize.masked_whiten`) can be summed across processes through a ``reduce``
  callable.
"""

from __future__ import annotations

import torch

from guard_reward.shaping.normalize import Reducer, check_mask, masked_var, no_reduce

KL_ESTIMATORS = ("k1", "k3")


def kl_penalty(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token KL estimate between the sampling policy and the reference policy.

    Args:
        logps: ``(B, T)`` log-probabilities of the sampled tokens under the policy that sampled them.
        ref_logps: ``(B, T)`` the same tokens under the reference policy.
        mask: ``(B, T)`` True on the tokens the policy wrote (real completion tokens, less tool results).
        estimator: ``"k1"`` (``logp - ref_logp``; unbiased, can be negative per token) or ``"k3"``
            (``exp(ref - logp) - (ref - logp) - 1``; unbiased, never negative, lower variance).

    Returns:
        ``(B, T)`` float, zero where ``mask`` is False.
    """
    mask = check_mask(logps, mask, "logps")
    if ref_logps.shape != logps.shape:
        raise ValueError(f"ref_logps {tuple(ref_logps.shape)} must match logps {tuple(logps.shape)}")
    log_ratio = ref_logps - logps
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k3":
        kl = torch.expm1(log_ratio) - log_ratio
    else:
        raise ValueError(f"kl estimator {estimator!r} is not accepted; use one of {', '.join(KL_ESTIMATORS)}")
    return torch.where(mask, kl, torch.zeros_like(kl))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long: index of the last True of each row of a ``(B, T)`` mask, ``-1`` for an empty row."""
    t = mask.shape[1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards ``r_t = dense_t - beta * KL_t + [t == last] * score``.

    Args:
        scores: ``(B,)`` scalar reward of each completion (already weighted and summed over reward functions);
            placed on the row's last True token of ``mask`` (the policy's last token: a completion cut off
            inside a tool result is scored at the last action it took). A row with an empty mask receives no
            score.
        kl: ``(B, T)`` per-token KL estimate (see :func:`kl_penalty`).
        mask: ``(B, T)`` True on the tokens the policy wrote (real completion tokens, less tool results).
        beta: KL coefficient.
        dense: ``(B, T)`` dense per-token rewards, or ``None``.

    Returns:
        ``(B, T)`` float32, zero where ``mask`` is False.
    """
    mask = check_mask(kl, mask, "kl")
    if scores.shape != (kl.shape[0],):
        raise ValueError(f"scores must be (B,) = ({kl.shape[0]},), got {tuple(scores.shape)}")
    rewards = -beta * kl.float()
    if dense is not None:
        if dense.shape != kl.shape:
            raise ValueError(
                f"dense rewards {tuple(dense.shape)} must match the completion shape {tuple(kl.shape)}"
            )
        rewards = rewards + dense.float()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].float()
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy's tokens of each completion.

    Over the True tokens of a row, in order, ``delta_t = r_t + gamma * V_next - V_t`` and
    ``A_t = delta_t + gamma * lam * A_next``, where ``next`` is the row's next True token, not ``t + 1``, and
    the value after the row's last True token is 0 (the episode ends with the completion, as in RLHF PPO; a
    truncated completion is scored as if it had ended). A False token inside a row is the environment's (a
    tool result in an agent trajectory): it is no decision of the policy, so it is skipped, the running
    advantage and the next value carry across it, and ``gamma`` and ``lam`` are not applied for it. Its
    reward and value are ignored. For a right-padded mask (no holes) this is textbook GAE.

    Args:
        rewards: ``(B, T)`` per-token rewards.
        values: ``(B, T)`` value estimate of the state before each completion token.
        mask: ``(B, T)`` True on the tokens the policy wrote: real completion tokens, less tool results
            (False on padding and on the environment's tokens).
        gamma: discount, in [0, 1].
        lam: GAE lambda, in [0, 1].

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` float32, zero where ``mask`` is False;
        ``returns = advantages + values``.
    """
    mask = check_mask(rewards, mask, "rewards")
    if values.shape != rewards.shape:
        raise ValueError(f"values {tuple(values.shape)} must match rewards {tuple(rewards.shape)}")
    m = mask.float()
    r, v = rewards.float() * m, values.float() * m
    advantages = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        acts = mask[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        # An environment token (or padding) leaves both carries as they were.
        running = torch.where(acts, delta + gamma * lam * running, running)
        next_value = torch.where(acts, v[:, t], next_value)
        advantages[:, t] = running * m[:, t]
    returns = (advantages + v) * m
    return advantages, returns


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reduce: Reducer = no_reduce
) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over the masked tokens (``(B, T)`` each).

    1 is a perfect critic, 0 a critic no better than a constant, negative a harmful one; NaN when the returns
    have no variance.
    """
    var_returns = masked_var(returns, mask, reduce)
    var_residual = masked_var(returns - values, mask, reduce)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - var_residual / var_returns)


def value_loss_terms(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token terms of PPO's clipped value loss: ``0.5 * max((V - R)^2, (V_clip - R)^2)`` and whether the
    clipped term was the larger one.

    ``V_clip = V_old + clamp(V - V_old, -clip, clip)``: the critic may not move its prediction further than
    ``clip`` from the rollout-time value in one update unless that also brings it closer to the return.

    Args:
        values: ``(B, T)`` current value predictions (with grad).
        old_values: ``(B, T)`` predictions made at rollout time.
        returns: ``(B, T)`` GAE returns.
        clip: the clipping range (> 0).

    Returns:
        ``(per_token_loss, clipped)``: ``(B, T)`` float (with grad) and ``(B, T)`` bool, unmasked.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped_sq, clipped_sq), clipped_sq > unclipped_sq
