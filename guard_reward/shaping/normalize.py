"""Masked means, variances and the normalisations built on them: the one implementation of every mean, std and
whitening the advantage formulas of :mod:`~guard_reward.shaping.dense`, :mod:`~guard_reward.shaping.constraint`
and :mod:`~guard_reward.shaping.ppo_math` (and the trainers that call them) use.

Tensors are right-padded ``(B, T)`` batches with a boolean ``mask`` (True on real completion tokens), or rows
``(R, K)`` of values with a boolean ``ok`` (True on the values that count). Two families, because their callers
need different things:

* **over a whole batch, across processes** (:func:`masked_moments`, :func:`masked_whiten`): one pass of sums
  (``Σx``, ``Σx²``, count) that a ``reduce`` callable sums across processes, so every process normalises with
  the global batch's statistics, never a mean of per-process means;
* **per row, on one process** (:func:`row_moments`): two passes (the mean, then the centred squares), for the
  groups of GRPO, which a process always holds whole (or gathers first).

Both end in :func:`standardize`, which holds the two epsilon conventions in use: TRL's GRPO divides by
``std + eps``, TRL's former PPO multiplies by ``1 / sqrt(var + eps)``; each caller keeps the one whose numbers
it reproduces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Sums a small tensor of partial statistics across processes (identity on one process).
Reducer = Callable[[torch.Tensor], torch.Tensor]

#: Where ``eps`` goes in :func:`standardize`.
EPS_PLACES = ("std", "var")


def no_reduce(x: torch.Tensor) -> torch.Tensor:
    """The :data:`Reducer` of a single process: its partial sums are the totals."""
    return x


def check_mask(x: torch.Tensor, mask: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``mask`` as bool after checking that ``x`` is ``(B, T)`` and ``mask`` has its shape; a ``ValueError``
    naming ``name`` otherwise."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be a (B, T) tensor, got shape {tuple(x.shape)}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(x.shape)}")
    return mask.to(torch.bool)


def standardize(centred: torch.Tensor, var: torch.Tensor, eps: float, *, eps_on: str = "std") -> torch.Tensor:
    """Divide centred values by their standard deviation.

    Args:
        centred: values minus their mean, any shape.
        var: their variance, broadcastable against ``centred``.
        eps: keeps a zero variance finite.
        eps_on: ``"std"``: ``centred / (sqrt(var) + eps)`` (TRL's GRPO group normalisation); ``"var"``:
            ``centred / sqrt(var + eps)`` (TRL's former PPO whitening).

    Returns:
        ``centred``'s shape.
    """
    if eps_on == "std":
        return centred / (var.sqrt() + eps)
    if eps_on == "var":
        return centred * torch.rsqrt(var + eps)
    raise ValueError(f"eps_on={eps_on!r} is not accepted; use one of {', '.join(EPS_PLACES)}")


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, reduce: Reducer = no_reduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of ``x`` over ``mask`` (``(B, T)`` each), across processes by ``reduce``.

    ``reduce`` receives the partial sums ``[Σx, Σx², count]`` of this process and returns them summed over all
    processes. Both results are 0-dim float32 tensors; an empty mask gives mean 0 and variance 0.
    """
    mask = check_mask(x, mask)
    xf = x.float() * mask
    stats = reduce(torch.stack([xf.sum(), (xf * xf).sum(), mask.sum().float()]))
    n = stats[2].clamp(min=1.0)
    mean = stats[0] / n
    return mean, (stats[1] / n - mean * mean).clamp(min=0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer = no_reduce) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (``(B, T)`` each), summed across processes by ``reduce``; 0 when empty."""
    return masked_moments(x, mask, reduce)[0]


def masked_var(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer = no_reduce) -> torch.Tensor:
    """Population variance of ``x`` over ``mask`` (``(B, T)`` each), across processes by ``reduce``."""
    return masked_moments(x, mask, reduce)[1]


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    reduce: Reducer = no_reduce,
    eps: float = 1e-8,
    *,
    eps_on: str = "var",
) -> torch.Tensor:
    """``x`` whitened over the masked entries of the whole batch: ``(x - mean) / sqrt(var + eps)`` (population
    variance; ``eps_on="std"`` divides by ``sqrt(var) + eps`` instead, see :func:`standardize`).

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool.
        reduce: sums partial statistics across processes, so every process whitens with the global batch.

    Returns:
        ``(B, T)`` float32, exactly 0 where ``mask`` is False.
    """
    mask = check_mask(x, mask)
    mean, var = masked_moments(x, mask, reduce)
    out = standardize(x.float() - mean, var, eps, eps_on=eps_on)
    return torch.where(mask, out, torch.zeros_like(out))


def row_moments(x: torch.Tensor, ok: torch.Tensor, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``x`` ``(R, K)`` centred on its mean over ``ok`` ``(R, K)``, and its variance.

    Values where ``ok`` is False (padding, NaN for a missing value) are left out of both and come out as 0.

    Args:
        x: ``(R, K)`` float.
        ok: ``(R, K)`` bool.
        ddof: 0 for the population variance, 1 for Bessel's correction (the divisor never drops below 1).

    Returns:
        ``(centred (R, K), var (R, 1))``; a row without any value has mean 0 and variance 0.
    """
    n = ok.sum(1, keepdim=True).clamp(min=1)
    mean = torch.where(ok, x, torch.zeros_like(x)).sum(1, keepdim=True) / n
    centred = torch.where(ok, x - mean, torch.zeros_like(x))
    return centred, centred.pow(2).sum(1, keepdim=True) / (n - ddof).clamp(min=1)


def row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean of each row of ``x`` ``(B, T)`` over ``mask`` ``(B, T)`` (any dtype, nonzero = counted);
    0 for a row without any."""
    # Count in integers: a count summed in x's dtype would be rounded in bfloat16 past 256 tokens.
    return (x * mask.to(x.dtype)).sum(1) / mask.bool().sum(1).clamp(min=1)
