"""Safety as a constraint: maximise the reward subject to ``E[cost] <= threshold`` with a Lagrange multiplier.

The controller follows safe-rlhf's PPO-Lag (PKU-Alignment): λ is kept as ``log_lambda`` and moved by SGD with
``lambda_lr`` on the loss ``-(J_c - threshold) · exp(log_lambda)``, i.e. one step is

    log_lambda <- min(log_lambda + lambda_lr · (J_c - threshold) · λ, log(lambda_max)),

where ``J_c`` is the mean cost over the last ``cost_window`` samples (episodes) *of each process*, pooled over the
processes. λ rises while the cost is above the threshold and falls (multiplicatively, never below 0) when it is
below; updates start once ``update_delay_steps`` updates have been offered.

The window is per process, as in safe-rlhf, where every rank keeps a ``deque(maxlen=window)`` of its own episode
costs and the ranks' window means are all-reduced (averaged) before the step: with N processes λ sees the last
``N · cost_window`` samples, ``cost_window`` from each. Here every rank holds all N windows (it gets the gathered
costs) and takes the pooled mean, sum over the windows / count; it equals safe-rlhf's average of the N window
means whenever the windows hold equally many costs, which is always the case unless the guard left some costs
unjudged (then a window with fewer judged costs weighs less, rather than as much as a full one). A single
window over the gathered batch would see only the last ``cost_window`` samples *in rank order*, i.e. only the
prompts that landed on the last ranks. The policy's advantage is then ``(A_r - λ·A_c) / (1 + λ)``
(:func:`combine_advantages`): reward and cost advantages are normalised each on its own, so λ is the exchange
rate between one standard deviation of helpfulness and one of cost.

The cost comes from the guards (:class:`~guard_reward.rewards.cost.SafetyCost`): per sample, Qwen3Guard-Gen's verdict (1 for Unsafe, 0
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from guard_reward.shaping.dense import check_coef
from guard_reward.shaping.normalize import row_moments, standardize
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
        cost_window: the mean cost is over the last this many samples of each process (>= 1); with N
            processes λ sees the last ``N · cost_window`` samples.
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

    Call :meth:`update` once per optimisation batch with the costs of *all* processes in rank order and their
    number (the same values on every rank make the same λ on every rank), then read :attr:`lam`.
    ``state_dict`` / ``load_state_dict`` carry λ, the per-process windows and the counters across a checkpoint.
    """

    def __init__(self, config: ConstraintConfig) -> None:
        self.config = config
        self.log_lambda = math.log(config.lambda_init)
        self.windows: list[deque[float]] = []  # one per process, created by the first update()
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
        """Mean cost over the windows of all processes, pooled (NaN while they are empty)."""
        n = sum(len(w) for w in self.windows)
        return sum(sum(w) for w in self.windows) / n if n else float("nan")

    def _resize(self, num_processes: int) -> None:
        """One window per process. A resume with another number of processes deals the saved costs out
        round-robin (oldest first), so the pooled mean carries over."""
        if len(self.windows) == num_processes:
            return
        merged = [c for w in self.windows for c in w]
        if merged:
            logger.warning(
                "constraint: %d cost window(s) restored for %d process(es); their %d costs are redistributed",
                len(self.windows),
                num_processes,
                len(merged),
            )
        size = self.config.cost_window
        self.windows = [deque(merged[r::num_processes], maxlen=size) for r in range(num_processes)]

    def update(self, costs: Sequence[float | None], num_processes: int = 1) -> ConstraintStep:
        """Add this batch's per-sample costs to their processes' windows and take one λ step.

        Args:
            costs: ``(B_total,)`` every sample's cost, gathered over all processes in rank order (process ``r``
                contributed the ``r``-th of ``num_processes`` equal slices); ``None`` (or NaN) = not judged.
            num_processes: the number of processes the costs were gathered from.

        Returns:
            The step's values. λ does not move while fewer than ``update_delay_steps`` batches have been
            offered, nor when every cost of the batch is missing (counted in :attr:`skipped`).
        """
        costs = list(costs)
        if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
        if len(costs) % num_processes:
            raise ValueError(
                f"{len(costs)} gathered costs cannot be split into {num_processes} equal per-process slices; "
                "pass the costs of every process, each process contributing the same number"
            )
        self._resize(num_processes)
        per_rank = len(costs) // num_processes
        values: list[float] = []
        for i, c in enumerate(costs):
            if c is None or (isinstance(c, float) and math.isnan(c)):
                self.missing += 1
                continue
            values.append(float(c))
            self.windows[i // per_rank].append(float(c))
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
        """A JSON-serialisable snapshot (λ, the per-process windows, the counters)."""
        return {
            "log_lambda": self.log_lambda,
            "windows": [list(w) for w in self.windows],
            "offered": self.offered,
            "updates": self.updates,
            "skipped": self.skipped,
            "missing": self.missing,
            "threshold": self.config.threshold,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a resumed run continues with the saved λ and windows). A state saved
        before the windows were per process (one ``"window"``) is read as one window."""
        missing = {"log_lambda", "offered"} - set(state)
        if missing or not {"windows", "window"} & set(state):
            raise KeyError(
                f"constraint state is missing {sorted(missing) or ['windows']}; expected log_lambda, "
                "windows and offered"
            )
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
        windows = state["windows"] if "windows" in state else [state["window"]]
        size = self.config.cost_window
        self.windows = [deque((float(c) for c in w), maxlen=size) for w in windows]
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


#: ``scale_rewards`` values of TRL's ``GRPOConfig`` (``True`` / ``False`` mean ``"group"`` / ``"none"`` there too).
SCALES = ("group", "batch", "none")


def group_advantages(values: torch.Tensor, group_size: int, scale: str | bool = "group") -> torch.Tensor:
    """GRPO's group-centred advantage of per-sample values ``(B,)`` (consecutive groups of ``group_size``),
    scaled as TRL 1.16 scales its reward advantages for ``scale_rewards``:

    * ``"group"``: divided by the group's std (+1e-4, TRL's epsilon);
    * ``"batch"``: divided by the std of all ``B`` values (the gathered batch), so a group whose values differ
      only by noise keeps small advantages instead of being blown up to unit scale;
    * ``"none"``: centred only (Dr. GRPO).

    Stds are Bessel-corrected. NaN marks a missing value: it is left out of every mean and std and gets
    advantage 0. Returns ``(B,)``.
    """
    if isinstance(scale, bool):
        scale = "group" if scale else "none"
    if scale not in SCALES:
        raise ValueError(
            f"scale={scale!r} is not accepted; use one of {', '.join(SCALES)} (TRL's scale_rewards)"
        )
    if values.dim() != 1 or values.numel() % group_size:
        raise ValueError(
            f"values must be (B,) with B a multiple of group_size={group_size}, got {tuple(values.shape)}"
        )
    ok = ~torch.isnan(values)
    centred, var = row_moments(values.view(-1, group_size), ok.view(-1, group_size), ddof=1)
    if scale == "batch":
        var = row_moments(values.view(1, -1), ok.view(1, -1), ddof=1)[1]
    if scale != "none":
        centred = standardize(centred, var, 1e-4)
    return centred.reshape(-1)


CostFunction = Callable[..., Sequence[float | None]]


@dataclass
class Constraint:
    """A safety constraint for the constrained trainers: a cost function, its threshold and λ's knobs.

    Args:
        cost: a callable like a TRL reward function returning one cost (or ``None``) per completion, e.g.
            :class:`~guard_reward.rewards.cost.SafetyCost`; its ``max_cost`` attribute (1 if absent) bounds the threshold.
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
            self.config = replace(self.config, max_cost=max_cost)
        if self.dense_cost is not None and not callable(self.dense_cost):
            raise TypeError("dense_cost must be a callable returning DenseRewards, or None")
        check_coef("dense_coef", self.dense_coef)
        if self.dense_sign not in (-1.0, 1.0, -1, 1):
            raise ValueError(f"dense_sign must be -1 (penalties) or +1 (costs), got {self.dense_sign}")
        self.controller = LagrangeController(self.config)

    @property
    def name(self) -> str:
        return str(getattr(self.cost, "__name__", type(self.cost).__name__))
