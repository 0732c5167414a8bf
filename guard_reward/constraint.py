"""Safety as a constraint: maximise the reward subject to ``E[cost] <= threshold`` with a Lagrange multiplier.

The controller follows safe-rlhf's PPO-Lag (PKU-Alignment): λ is kept as ``log_lambda`` and moved by SGD with
``lambda_lr`` on the loss ``-(J_c - threshold) · exp(log_lambda)``, i.e. one step is

    log_lambda <- min(log_lambda + lambda_lr · (J_c - threshold) · λ, log(lambda_max)),

where ``J_c`` is the mean cost over the last ``cost_window`` samples (episodes). λ rises while the cost is above
the threshold and falls (multiplicatively, never below 0) when it is below; updates start once
``update_delay_steps`` updates have been offered. The policy's advantage is then ``(A_r - λ·A_c) / (1 + λ)``
(:func:`combine_advantages`): reward and cost advantages are normalised each on its own, so λ is the exchange
rate between one standard deviation of helpfulness and one of cost.

The cost comes from the guards (:class:`SafetyCost`): per sample, Qwen3Guard-Gen's verdict (1 for Unsafe, 0
for Safe) or its exact ``P(Unsafe)`` (``mode="soft"``), with the Controversial policy and the per-category
weights of :class:`~guard_reward.SafetyReward` (the same :mod:`guard_reward.shaping.scalar` rules, with the sign
turned around). A sample the guard cannot judge has cost ``None``; it is left out of the mean (counted), and a
step in which every cost is ``None`` does not move λ (counted and logged), so λ never jumps on missing data.

Everything here is plain Python and torch on the CPU; the trainers in ``guard_reward.integrations.trl.constraint``
gather the costs of all processes before calling :meth:`LagrangeController.update`, so λ is the same number on
every rank.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from guard_reward.shaping.scalar import finite_number

logger = logging.getLogger(__name__)

#: Metric names logged every step by the constrained trainers.
LAMBDA, COST, THRESHOLD, VIOLATION = (
    "constraint/lambda",
    "constraint/cost",
    "constraint/threshold",
    "constraint/violation",
)
SKIPPED, UPDATED = "constraint/skipped_updates", "constraint/updated"


@dataclass(frozen=True)
class ConstraintConfig:
    """The constraint ``E[cost] <= threshold`` and the knobs of its multiplier (safe-rlhf's names and defaults,
    except ``threshold``, which must be given).

    Attributes:
        threshold: the largest acceptable expected cost (with the default cost, the target unsafe rate). Must
            lie in ``[0, max_cost)``: at or above the largest cost the constraint can never bind.
        lambda_init: λ at the start (> 0; λ lives in log space, so it can approach 0 but never reach it).
        lambda_lr: SGD step size on ``log_lambda`` (>= 0; 0 keeps λ fixed at ``lambda_init``).
        lambda_max: upper clamp of λ (> 0, at least ``lambda_init``); ``None`` = no clamp.
        update_delay_steps: updates offered before λ starts moving (>= 0).
        cost_window: the mean cost is over the last this many samples (>= 1).
        max_cost: the largest cost a sample can have (set from the cost function; used to check
            ``threshold``).
    """

    threshold: float
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 5.0
    update_delay_steps: int = 0
    cost_window: int = 128
    max_cost: float = 1.0

    def __post_init__(self) -> None:
        threshold = finite_number("threshold", self.threshold)
        max_cost = finite_number("max_cost", self.max_cost)
        if max_cost <= 0:
            raise ValueError(f"max_cost must be > 0, got {max_cost}")
        if not 0.0 <= threshold < max_cost:
            raise ValueError(
                f"threshold={threshold} is outside the cost's range: a cost lies in [0, {max_cost}], so the "
                f"threshold must be in [0, {max_cost}) (at {max_cost} or above the constraint never binds)"
            )
        if finite_number("lambda_init", self.lambda_init) <= 0:
            raise ValueError(
                f"lambda_init must be > 0 (λ is kept as log λ), got {self.lambda_init}; use a small value "
                "such as 0.01 for 'start unconstrained'"
            )
        if finite_number("lambda_lr", self.lambda_lr) < 0:
            raise ValueError(f"lambda_lr must be >= 0 (0 keeps λ fixed), got {self.lambda_lr}")
        if self.lambda_max is not None:
            if finite_number("lambda_max", self.lambda_max) <= 0:
                raise ValueError(f"lambda_max must be > 0 or None (no clamp), got {self.lambda_max}")
            if self.lambda_max < self.lambda_init:
                raise ValueError(
                    f"lambda_max={self.lambda_max} is below lambda_init={self.lambda_init}; raise lambda_max"
                )
        for name in ("update_delay_steps", "cost_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.update_delay_steps < 0:
            raise ValueError(f"update_delay_steps must be >= 0, got {self.update_delay_steps}")
        if self.cost_window < 1:
            raise ValueError(f"cost_window must be >= 1, got {self.cost_window}")


@dataclass
class ConstraintStep:
    """What one :meth:`LagrangeController.update` did (the values logged for the step)."""

    lam: float
    cost: float
    threshold: float
    violation: float
    updated: bool
    n_costs: int


class LagrangeController:
    """λ for ``E[cost] <= threshold``: safe-rlhf's log-space SGD update over a window of recent costs.

    Call :meth:`update` once per optimisation batch with the costs of *all* processes (the same values on every
    rank make the same λ on every rank), then read :attr:`lam`. ``state_dict`` / ``load_state_dict`` carry λ,
    the window and the counters across a checkpoint.
    """

    def __init__(self, config: ConstraintConfig) -> None:
        self.config = config
        self.log_lambda = math.log(config.lambda_init)
        self.window: deque[float] = deque(maxlen=config.cost_window)
        self.offered = 0  # update() calls, i.e. optimisation batches seen
        self.updates = 0  # of them, those that moved λ
        self.skipped = 0  # batches whose every cost was None
        self.missing = 0  # samples whose cost was None

    @property
    def lam(self) -> float:
        """The current multiplier λ = exp(log_lambda) >= 0."""
        return math.exp(self.log_lambda)

    @property
    def mean_cost(self) -> float:
        """Mean cost over the window (NaN while it is empty)."""
        return sum(self.window) / len(self.window) if self.window else float("nan")

    def update(self, costs: Iterable[float | None]) -> ConstraintStep:
        """Add this batch's per-sample costs to the window and take one λ step.

        Args:
            costs: every sample's cost, gathered over all processes; ``None`` (or NaN) = not judged.

        Returns:
            The step's values. λ does not move while fewer than ``update_delay_steps`` batches have been
            offered, nor when every cost of the batch is missing (counted in :attr:`skipped`).
        """
        values: list[float] = []
        for c in costs:
            if c is None or (isinstance(c, float) and math.isnan(c)):
                self.missing += 1
                continue
            values.append(float(c))
        self.offered += 1
        cfg = self.config
        if not values:
            self.skipped += 1
            logger.warning(
                "constraint: every cost of batch %d is missing (the guard judged none); λ stays at %.4g "
                "(%d batch(es) skipped so far)",
                self.offered,
                self.lam,
                self.skipped,
            )
            return ConstraintStep(self.lam, float("nan"), cfg.threshold, float("nan"), False, 0)
        self.window.extend(values)
        mean = self.mean_cost
        updated = self.offered > cfg.update_delay_steps and cfg.lambda_lr > 0
        if updated:
            # SGD on -(J_c - d) * exp(log λ): the gradient wrt log λ is -(J_c - d) * λ.
            self.log_lambda += cfg.lambda_lr * (mean - cfg.threshold) * self.lam
            if cfg.lambda_max is not None:
                self.log_lambda = min(self.log_lambda, math.log(cfg.lambda_max))
            self.updates += 1
        return ConstraintStep(self.lam, mean, cfg.threshold, mean - cfg.threshold, updated, len(values))

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (λ, the window, the counters)."""
        return {
            "log_lambda": self.log_lambda,
            "window": list(self.window),
            "offered": self.offered,
            "updates": self.updates,
            "skipped": self.skipped,
            "missing": self.missing,
            "threshold": self.config.threshold,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a resumed run continues with the saved λ and window)."""
        missing = {"log_lambda", "window", "offered"} - set(state)
        if missing:
            raise KeyError(f"constraint state is missing {sorted(missing)}")
        if state.get("threshold", self.config.threshold) != self.config.threshold:
            logger.warning(
                "constraint: resuming with threshold %s (the checkpoint was saved with %s)",
                self.config.threshold,
                state["threshold"],
            )
        log_lambda = float(state["log_lambda"])
        if self.config.lambda_max is not None:
            log_lambda = min(log_lambda, math.log(self.config.lambda_max))
        self.log_lambda = log_lambda
        self.window = deque((float(c) for c in state["window"]), maxlen=self.config.cost_window)
        self.offered = int(state["offered"])
        for key in ("updates", "skipped", "missing"):
            setattr(self, key, int(state.get(key, 0)))


def combine_advantages(reward_adv: torch.Tensor, cost_adv: torch.Tensor, lam: float) -> torch.Tensor:
    """safe-rlhf's actor advantage ``(A_r - λ·A_c) / (1 + λ)``.

    Args:
        reward_adv: ``(B,)`` or ``(B, T)`` reward advantages.
        cost_adv: ``(B,)`` or ``(B, T)`` cost advantages (broadcast against ``reward_adv``).
        lam: λ >= 0.

    Returns:
        The combined advantage, of the broadcast shape.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"λ must be a finite number >= 0, got {lam}")
    if reward_adv.dim() == 1 and cost_adv.dim() == 2:
        reward_adv = reward_adv.unsqueeze(1)
    if cost_adv.dim() == 1 and reward_adv.dim() == 2:
        cost_adv = cost_adv.unsqueeze(1)
    return (reward_adv - lam * cost_adv) / (1.0 + lam)


def group_advantages(values: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantage of per-sample values ``(B,)`` (consecutive groups of ``group_size``).

    NaN marks a missing value: it gets advantage 0 and is left out of its group's mean and std. ``scale``
    divides by the group's std (+1e-4, TRL's epsilon).
    """
    if values.dim() != 1 or values.numel() % group_size:
        raise ValueError(
            f"values must be (B,) with B a multiple of group_size={group_size}, got {tuple(values.shape)}"
        )
    grouped = values.view(-1, group_size)
    ok = ~torch.isnan(grouped)
    filled = torch.where(ok, grouped, torch.zeros_like(grouped))
    n = ok.sum(1, keepdim=True).clamp(min=1)
    mean = filled.sum(1, keepdim=True) / n
    centred = torch.where(ok, grouped - mean, torch.zeros_like(grouped))
    if scale:
        std = (centred.pow(2).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        centred = centred / (std + 1e-4)
    return centred.reshape(-1)


class SafetyCost:
    """Per-sample cost from Qwen3Guard-Gen, called like a TRL reward function (``None`` = not judged).

    It is :class:`~guard_reward.SafetyReward` with Safe valued 0 and Unsafe valued -1 (times the category
    weight), refusals not valued, and the sign turned around: the same verdict parsing, Controversial policy,
    category weights, soft mode, failure handling and ``guard/...`` metrics.

    Args:
        guard: a ``GenGuard`` or a Gen checkpoint.
        mode: ``"hard"`` (Unsafe -> 1) or ``"soft"`` (the exact ``P(Unsafe)``, plus the Controversial share).
        controversial: ``"strict"`` (costs like Unsafe), ``"loose"`` (costs 0) or a number in ``[0, 1]``,
            its cost.
        category_weights: ``{category: weight >= 0}`` scaling an Unsafe verdict's cost (largest among its
            categories; unlisted ones weigh 1).
        name: the cost's ``__name__``; guard_kwargs: for loading ``guard`` from a checkpoint.
    """

    def __init__(
        self,
        guard: Any,
        *,
        mode: str = "hard",
        controversial: str | float = "strict",
        category_weights: Mapping[str, float] | None = None,
        thinking: str = "separate",
        name: str = "guard_cost",
        metric_prefix: str = "guard",
        guard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from guard_reward.rewards import SafetyReward

        if not isinstance(controversial, str):
            c = finite_number("controversial", controversial)
            if not 0.0 <= c <= 1.0:
                raise ValueError(f"controversial cost must be in [0, 1], got {controversial}")
            controversial = -c
        weights = dict(category_weights or {})  # checked by SafetyReward's shaping config
        self.__name__ = name
        self._reward = SafetyReward(
            guard,
            mode=mode,
            controversial=controversial,
            safe_value=0.0,
            unsafe_value=-1.0,
            category_weights=weights,
            refusal=False,
            thinking=thinking,
            failure_value=None,
            name=name,
            metric_prefix=metric_prefix,
            guard_kwargs=guard_kwargs,
        )
        self.max_cost = max([1.0, *weights.values()])

    @property
    def stats(self) -> Any:
        return self._reward.stats

    @property
    def guard(self) -> Any:
        """The Gen guard's handle (what ``train`` loads before the first step)."""
        return self._reward.guard

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        values = self._reward(prompts, completions, **kwargs)
        return [None if v is None else -float(v) + 0.0 for v in values]


CostFunction = Callable[..., Sequence[float | None]]


@dataclass
class Constraint:
    """A safety constraint for the constrained trainers: a cost function, its threshold and λ's knobs.

    Args:
        cost: a callable like a TRL reward function returning one cost (or ``None``) per completion, e.g.
            :class:`SafetyCost`; its ``max_cost`` attribute (1 if absent) bounds the threshold.
        config: threshold and λ knobs; ``max_cost`` is taken from ``cost``.
        dense_cost: optional per-token cost: a callable returning ``DenseRewards`` (e.g.
            ``TokenSafetyPenalty``, whose penalties are negative; ``dense_sign=-1`` turns them into costs).
        dense_coef: weight of the per-token cost in the cost advantage (``A_c,t = A_c + dense_coef · c_t``).
        dense_sign: ``-1`` when ``dense_cost`` returns penalties (<= 0), ``+1`` when it returns costs.
    """

    cost: CostFunction
    config: ConstraintConfig
    dense_cost: Callable[..., Any] | None = None
    dense_coef: float = 1.0
    dense_sign: float = -1.0
    controller: LagrangeController = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.cost):
            raise TypeError(
                f"cost must be a callable like a TRL reward function, got {type(self.cost).__name__}"
            )
        max_cost = float(getattr(self.cost, "max_cost", 1.0))
        if self.config.max_cost != max_cost:
            from dataclasses import replace

            self.config = replace(self.config, max_cost=max_cost)
        if self.dense_cost is not None and not callable(self.dense_cost):
            raise TypeError("dense_cost must be a callable returning DenseRewards, or None")
        if finite_number("dense_coef", self.dense_coef) < 0:
            raise ValueError(f"dense_coef must be >= 0, got {self.dense_coef}")
        if self.dense_sign not in (-1.0, 1.0, -1, 1):
            raise ValueError(f"dense_sign must be -1 (penalties) or +1 (costs), got {self.dense_sign}")
        self.controller = LagrangeController(self.config)

    @property
    def name(self) -> str:
        return str(getattr(self.cost, "__name__", type(self.cost).__name__))
