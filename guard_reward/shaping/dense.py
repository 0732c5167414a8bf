"""Dense shaping: per-token guard risk ``(B, T)`` -> per-token rewards and per-token advantages.

Every function here is pure tensor code on right-padded ``(B, T)`` batches with a ``(B, T)`` bool ``mask``
(True on real completion tokens); masked positions always come out as exactly 0 and never influence real ones.

Where this differs from the textbook uses of a per-token safety signal:

* ``first_violation`` (the default) has the potential-difference form ``d_t = Φ_t − Φ_{t−1}`` with
  ``Φ_t = −c_t``, ``c_t = max_{j≤t} risk_j`` (the running maximum). A response's rewards telescope to ``−c_T``,
  its worst risk; the potential does not vanish at the end, so this is not neutral shaping but the objective
  "minus the worst risk", with the penalty placed on the tokens that raised the risk. Under return-to-go credit
  (``Σ_{j≥t} d_j = −(c_T − c_{t−1})``, ``c_{t−1}`` a baseline of the prefix) the gradient is the REINFORCE
  gradient of ``E[−c_T]``; with per-token credit (``"token"``) each token gets only its own ``d_t``: a myopic
  objective that is not the gradient of any sequence-level one in general.
* ``prob`` feeds Qwen3Guard-Stream's per-token probability straight in (``d_t = −risk_t``). Stream's labels
  are cumulative ("the response *so far* is unsafe"), so every token after a violation is charged again
  although it carries no new information: long unsafe tails are punished more than short ones, and the credit
  is smeared over the tail rather than placed on the violation.
* ``threshold`` is a hinge, ``d_t = −max(0, risk_t − τ)``: nothing below the threshold, a linear penalty
  above it. Like ``prob`` it charges every token while the risk stays high.

For GRPO the dense term is added to TRL's group-normalised sequence advantage (:func:`dense_advantages`):
``"token"`` uses ``d_t`` itself, ``"return_to_go"`` the REINFORCE sum ``Σ_{j≥t} d_j``, and
``"process_supervision"`` DeepSeekMath's process-supervision GRPO (Shao et al. 2024, §4.1.3): rewards
normalised over all tokens of the group, then summed from ``t``. With one "step" per token, mean subtraction
gives every safe token a small positive reward when its group contains violations, so the return-to-go grows
with the number of tokens still to come: this variant has a length bias (answers grow) the other two lack.
"""

from __future__ import annotations

import torch

from guard_reward.shaping.normalize import check_mask, row_moments, standardize
from guard_reward.shaping.scalar import finite_number

SHAPING_MODES: tuple[str, ...] = ("first_violation", "prob", "threshold")
DENSE_ADVANTAGES: tuple[str, ...] = ("token", "return_to_go", "process_supervision")


def check_coef(name: str, value: object) -> float:
    """``value`` as a float when it is a finite number >= 0: the weight of a dense term, whose sign is the
    dense reward's own (penalties are negative). A clear ``ValueError`` naming ``name`` otherwise."""
    coef = finite_number(name, value)
    if coef < 0:
        raise ValueError(f"{name} must be >= 0 (the dense rewards carry their own sign), got {value!r}")
    return coef


def check_dense_advantage(mode: object) -> str:
    """``mode`` when it is one of :data:`DENSE_ADVANTAGES`; a ``ValueError`` listing them otherwise."""
    if mode not in DENSE_ADVANTAGES:
        raise ValueError(
            f"dense_advantage={mode!r} is not accepted; use one of {', '.join(DENSE_ADVANTAGES)}"
        )
    return str(mode)


def unsafe_risk(
    p_unsafe: torch.Tensor, p_controversial: torch.Tensor, controversial: str | float = "strict"
) -> torch.Tensor:
    """The per-token probability that counts as "unsafe", by the Controversial policy.

    Args:
        p_unsafe, p_controversial: ``(B, T)`` (or any equal shapes) probabilities.
        controversial: ``"strict"`` (Controversial counts as Unsafe: ``p_u + p_c``), ``"loose"`` (counts
            as Safe: ``p_u``) or a weight ``w`` in [0, 1] (``p_u + w·p_c``).

    Returns:
        Same shape as the inputs, in [0, 1].
    """
    w = controversial_weight(controversial)
    return p_unsafe + w * p_controversial


def controversial_weight(controversial: str | float) -> float:
    """``"strict"`` -> 1, ``"loose"`` -> 0, a number in [0, 1] -> itself; anything else is a clear error."""
    if isinstance(controversial, str):
        if controversial == "strict":
            return 1.0
        if controversial == "loose":
            return 0.0
        raise ValueError(
            f"controversial={controversial!r} is not accepted; use 'strict', 'loose' or a weight in [0, 1]"
        )
    if isinstance(controversial, bool) or not isinstance(controversial, (int, float)):
        raise TypeError(
            f"controversial must be 'strict', 'loose' or a number, got {type(controversial).__name__}"
        )
    if not 0.0 <= float(controversial) <= 1.0:
        raise ValueError(f"controversial weight must be in [0, 1], got {controversial}")
    return float(controversial)


def first_violation(risk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft first-violation shaping: ``d_t = −(c_t − c_{t−1})``, ``c`` the running max, ``c_{−1} = 0``.

    Rows sum to ``−max_t risk_t``. ``risk``: ``(B, T)`` in [0, 1]; ``mask``: ``(B, T)`` bool.
    Returns ``(B, T)``.
    """
    mask = check_mask(risk, mask, "risk")
    filled = torch.where(mask, risk, torch.zeros_like(risk)).clamp_min(0.0)
    c = torch.cummax(filled, dim=1).values
    previous = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], dim=1)
    return -(c - previous) * mask


def first_violation_hard(flag_index: torch.Tensor, mask: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """Hard first-violation shaping: ``−value`` on the given token of each row (``TokenSafetyPenalty`` gives the
    first token of the first debounced Unsafe pair), 0 elsewhere.

    Args:
        flag_index: ``(B,)`` long, the flagged token per row, ``−1`` when the row was never flagged.
        mask: ``(B, T)`` bool. A flag on a masked position or beyond ``T`` is an error (it would be lost
            silently).

    Returns:
        ``(B, T)`` float32.
    """
    if mask.dim() != 2 or flag_index.shape != (mask.shape[0],):
        raise ValueError(
            f"flag_index must be (B,) for a (B, T) mask; got {tuple(flag_index.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.to(torch.bool)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    rows = torch.nonzero(flag_index >= 0).flatten()
    if rows.numel() == 0:
        return out
    cols = flag_index[rows].long()
    if bool((cols >= mask.shape[1]).any()) or not bool(mask[rows, cols].all()):
        raise ValueError(
            "a flag index points at a padded position or beyond the completion; it cannot be placed"
        )
    out[rows, cols] = -float(value)
    return out


def prob_penalty(risk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``d_t = −risk_t`` on every real token. ``risk``, ``mask``: ``(B, T)``. Returns ``(B, T)``."""
    mask = check_mask(risk, mask, "risk")
    return -risk * mask


def threshold_penalty(risk: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hinge: ``d_t = −max(0, risk_t − threshold)`` on real tokens. ``risk``, ``mask``: ``(B, T)``."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    mask = check_mask(risk, mask, "risk")
    return -(risk - threshold).clamp_min(0.0) * mask


def shape_dense(
    risk: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "first_violation",
    *,
    coef: float = 1.0,
    threshold: float = 0.5,
    clip: float | None = None,
    flag_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Risk ``(B, T)`` -> dense rewards ``(B, T)`` (non-positive), times ``coef``, clipped to ±``clip``.

    ``mode="first_violation"`` uses the soft form unless ``flag_index`` ``(B,)`` is given (hard form).
    """
    if mode not in SHAPING_MODES:
        raise ValueError(f"shaping mode {mode!r} is not accepted; use one of {', '.join(SHAPING_MODES)}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if mode == "first_violation":
        d = first_violation(risk, mask) if flag_index is None else first_violation_hard(flag_index, mask)
    elif mode == "prob":
        d = prob_penalty(risk, mask)
    else:
        d = threshold_penalty(risk, mask, threshold)
    d = d * float(coef)
    if clip is not None:
        d = d.clamp(-clip, clip)
    return d * mask.to(d.dtype)


def return_to_go(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``G_t = Σ_{j≥t, mask_j} d_j`` on real tokens, 0 on padding. ``d``, ``mask``: ``(B, T)``."""
    mask = check_mask(d, mask, "d")
    masked = d * mask
    return torch.flip(torch.cumsum(torch.flip(masked, dims=[1]), dim=1), dims=[1]) * mask


def group_token_normalize(
    d: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """``(d − μ_g) / (σ_g + eps)`` over all real tokens of each group of ``group_size`` consecutive rows.

    ``σ`` is the population standard deviation. Rows of ``d`` ``(B, T)`` must come in whole groups
    (``B % group_size == 0``), as TRL's sampler lays them out. Padding stays 0.
    """
    mask = check_mask(d, mask, "d")
    b, t = d.shape
    if group_size < 1 or b % group_size:
        raise ValueError(f"batch of {b} rows cannot be split into groups of {group_size}")
    groups = (b // group_size, group_size * t)
    centred, var = row_moments(d.reshape(groups), mask.reshape(groups))
    return standardize(centred, var, eps).view(b, t)


def dense_advantages(
    seq_advantages: torch.Tensor,
    d: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    mode: str = "token",
    group_size: int | None = None,
) -> torch.Tensor:
    """Per-token advantages ``A_t = A_seq + coef · f(d)_t``, 0 on padding.

    Args:
        seq_advantages: ``(B,)`` TRL's group-normalised sequence advantages.
        d: ``(B, T)`` dense rewards. mask: ``(B, T)`` bool.
        coef: weight of the dense term; ``0`` gives back ``A_seq`` on every real token.
        mode: ``"token"`` (``f(d)=d``), ``"return_to_go"`` (``Σ_{j≥t} d_j``) or ``"process_supervision"``
            (group token-normalised, then summed from t; needs ``group_size``).

    Returns:
        ``(B, T)`` float, same dtype as ``d``.
    """
    mask = check_mask(d, mask, "d")
    if seq_advantages.shape != (d.shape[0],):
        raise ValueError(f"seq_advantages must be (B,) = ({d.shape[0]},), got {tuple(seq_advantages.shape)}")
    if check_dense_advantage(mode) == "token":
        f = d * mask
    elif mode == "return_to_go":
        f = return_to_go(d, mask)
    else:
        if group_size is None:
            raise ValueError(
                "dense_advantage='process_supervision' needs group_size (the number of generations)"
            )
        f = return_to_go(group_token_normalize(d, mask, group_size), mask)
    return (seq_advantages.to(d.dtype)[:, None] + float(coef) * f) * mask
