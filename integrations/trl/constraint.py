"""Constrained GRPO and PPO: maximise the reward functions subject to ``E[cost] <= threshold`` (safe-rlhf's
PPO-Lag controller, :mod:`guard_reward.shaping.constraint`), on TRL 1.16's trainers.

Both trainers take ``constraint=`` (a :class:`~guard_reward.shaping.constraint.Constraint`: a cost such as
:class:`~guard_reward.rewards.cost.SafetyCost`, a threshold and λ's knobs) next to the usual ``reward_funcs`` (the
helpfulness side: any TRL reward function, a reward model, ``HybridSafetyReward``, ...). Per generation batch:

1. the cost function runs right after the reward functions, with the same arguments (so its ``guard/...``
   metrics are flushed with the step); the optional per-token cost (``Constraint.dense_cost``) likewise;
2. the per-sample costs of all processes are gathered (``None`` -> NaN); every rank then updates its
   :class:`~guard_reward.shaping.constraint.LagrangeController` with all of them and the number of processes: each
   process's costs go to that process's window of ``cost_window`` samples (safe-rlhf's per-rank window) and λ
   steps on the pooled mean of the windows, so λ is the same number on every rank and, with N processes, sees
   the last ``N · cost_window`` samples, not only those of the last ranks;
3. the advantages are combined as ``(A_r - λ·A_c) / (1 + λ)``:

   * GRPO (:class:`ConstrainedGRPOTrainer`): ``A_r`` is TRL's group-normalised reward advantage (per token when
     ``dense_rewards`` are given: it is a ``DenseGRPOTrainer``), ``A_c`` the cost advantage computed with TRL's
     own rule for ``scale_rewards`` (centred per group; divided by the group's std for ``"group"``, by the
     gathered batch's std for ``"batch"``, not at all for ``"none"``; NaN costs left out), plus
     ``dense_coef · c_t`` per token with a dense cost;
   * PPO (:class:`ConstrainedPPOTrainer`): ``A_r`` is GuardPPOTrainer's whitened GAE advantage; ``A_c`` is the
     cost's GAE advantage with gamma = lambda = 1 and the batch-mean cost as baseline instead of a learned cost
     critic: the terminal cost (plus the per-token costs still ahead, for a dense cost), minus its batch mean,
     whitened over the batch. With gamma = lambda = 1 GAE is the Monte-Carlo return minus the baseline, and any
     baseline that does not depend on the action keeps the estimate unbiased; a constant one costs variance,
     which the whitening over a whole batch of rollouts keeps in check. No second critic is trained. As in
     GuardPPOTrainer, only the policy's own tokens count: tool results (outside ``tool_mask``) carry no cost-to-go
     and take no part in the baseline.

``constraint/lambda``, ``constraint/cost`` (the window mean the update used), ``constraint/threshold``,
``constraint/violation`` (cost - threshold), ``constraint/batch_cost`` and ``constraint/skipped_updates`` are
logged every step; the completions table shows the combined advantage the loss uses (per token: its mean over the
completion's policy tokens); λ's state is saved as ``constraint_state.json`` in every checkpoint and restored on resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch

from guard_reward.shaping import constraint as C
from guard_reward.shaping.constraint import Constraint, combine_advantages, group_advantages
from guard_reward.shaping.dense import return_to_go
from guard_reward.shaping.normalize import masked_whiten

from .batch import (
    bind_policy_tokenizer,
    local_rows,
    on_completion_grid,
    policy_token_mask,
    reward_kwargs,
    score_dense,
    show_loss_advantages,
)
from .grpo import DenseGRPOTrainer
from .ppo import GuardPPOTrainer

logger = logging.getLogger(__name__)

STATE_FILE = "constraint_state.json"


def _check_constraint(constraint: Any, reward_funcs: Any) -> Constraint:
    if not isinstance(constraint, Constraint):
        raise TypeError(
            f"constraint must be a guard_reward.shaping.constraint.Constraint, got {type(constraint).__name__}"
        )
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if reward_funcs is None or not [f for f in funcs if f is not None]:
        raise ValueError(
            "a constrained trainer needs at least one reward function (the objective the constraint limits, "
            "e.g. a helpfulness reward); the cost alone is not a reward"
        )
    return constraint


class _ConstraintMixin:
    """Cost scoring, the gathered λ update, logging and checkpointing shared by both trainers."""

    constraint: Constraint

    def _init_constraint(self, constraint: Constraint) -> None:
        self.constraint = constraint
        self._pending_cost: torch.Tensor | None = None
        self._pending_dense_cost: torch.Tensor | None = None
        bind_policy_tokenizer(self, (constraint.cost, constraint.dense_cost))

    @property
    def lam(self) -> float:
        """The current λ (the same on every process)."""
        return self.constraint.controller.lam

    def _score_costs(self, inputs, prompts, completions, completion_ids_list) -> None:
        """Local per-sample costs ``(B,)`` (NaN = not judged) and per-token costs ``(B, T)`` (or None)."""
        kwargs = reward_kwargs(self, inputs)
        c = self.constraint
        values = c.cost(
            prompts=prompts, completions=completions, completion_ids=completion_ids_list, **kwargs
        )
        if len(values) != len(prompts):
            raise ValueError(f"cost {c.name!r} returned {len(values)} values for {len(prompts)} completions")
        self._pending_cost = torch.tensor(
            [math.nan if v is None else float(v) for v in values], dtype=torch.float32
        )
        self._pending_dense_cost = None
        if c.dense_cost is not None:  # checked and read as dense rewards are: 0 where its mask is False
            dense = score_dense([c.dense_cost], prompts, completions, completion_ids_list, kwargs)
            self._pending_dense_cost = c.dense_sign * dense.rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """The trainer's rewards; the costs of the same completions are scored beside them."""
        rewards_per_func = super()._calculate_rewards(  # type: ignore[misc]
            inputs, prompts, completions, completion_ids_list
        )
        self._score_costs(inputs, prompts, completions, completion_ids_list)
        return rewards_per_func

    @staticmethod
    def _dense_on_tokens(dense: torch.Tensor, b: int, t: int, device: torch.device) -> torch.Tensor:
        """This process's per-token costs ``dense (b, T_cost)`` placed on the completions' token grid: ``(b, t)``.

        Costs on tokens past the completions would belong to no token: refused, as dense rewards are (the
        library's dense costs are sized from ``completion_ids`` and never are).
        """
        if dense.shape[0] != b:
            raise ValueError(f"dense costs have {dense.shape[0]} rows for {b} completions")
        return on_completion_grid(dense, t, device, what="dense costs")

    def _gathered_costs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All processes' per-sample costs ``(B_total,)`` and this process's per-token costs."""
        cost, dense = self._pending_cost, self._pending_dense_cost
        self._pending_cost = self._pending_dense_cost = None
        if cost is None:
            raise RuntimeError("the cost was not computed for this batch (_calculate_rewards not called)")
        device = self.accelerator.device
        return self.accelerator.gather(cost.to(device)).float().cpu(), dense

    def _constraint_step(self, all_costs: torch.Tensor, mode: str) -> float:
        """Update λ with the gathered costs (training batches only); log the step; return λ."""
        ctrl = self.constraint.controller
        ok = ~torch.isnan(all_costs)
        batch_cost = float(all_costs[ok].mean()) if bool(ok.any()) else math.nan
        if mode == "train":
            step = ctrl.update(all_costs.tolist(), num_processes=self.accelerator.num_processes)
            cost, violation = step.cost, step.violation
        else:
            cost = ctrl.mean_cost
            violation = cost - ctrl.config.threshold
        metrics = self._metrics[mode]
        metrics[C.LAMBDA].append(ctrl.lam)
        metrics[C.THRESHOLD].append(ctrl.config.threshold)
        if not math.isnan(cost):  # a batch without any judged cost logs no cost rather than a made-up one
            metrics[C.COST].append(cost)
            metrics[C.VIOLATION].append(violation)
        if not math.isnan(batch_cost):
            metrics["constraint/batch_cost"].append(batch_cost)
        metrics[C.SKIPPED].append(float(ctrl.skipped))
        metrics["constraint/missing_costs"].append(float(ctrl.missing))
        return ctrl.lam

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _save_constraint_state(self, trial: Any) -> None:
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, STATE_FILE), "w") as f:
            json.dump(self.constraint.controller.state_dict(), f)

    def _load_constraint_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            logger.warning("constraint: %s has no %s; λ restarts from lambda_init", checkpoint, STATE_FILE)
            return
        with open(path) as f:
            self.constraint.controller.load_state_dict(json.load(f))
        logger.info("constraint: resumed λ=%.4g from %s", self.lam, path)

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        self._save_constraint_state(trial)

    def _load_optimizer_and_scheduler(self, checkpoint):  # type: ignore[override]
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        self._load_constraint_state(checkpoint)


class ConstrainedGRPOTrainer(_ConstraintMixin, DenseGRPOTrainer):
    """GRPO (optionally with dense rewards) under a safety constraint.

    Args:
        *args, **kwargs: everything :class:`~guard_reward.integrations.trl.grpo.DenseGRPOTrainer` takes
            (``reward_funcs`` is the objective and must not be empty; ``dense_rewards`` optional).
        constraint: the :class:`~guard_reward.shaping.constraint.Constraint`.
    """

    def __init__(self, *args: Any, constraint: Constraint, **kwargs: Any) -> None:
        _check_constraint(constraint, kwargs.get("reward_funcs", args[1] if len(args) > 1 else None))
        super().__init__(*args, **kwargs)
        if self.args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "ConstrainedGRPOTrainer combines group-normalised reward and cost advantages itself; use "
                "multi_objective_aggregation='sum_then_normalize'"
            )
        self._init_constraint(constraint)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        all_costs, dense = self._gathered_costs()
        lam = self._constraint_step(all_costs, mode)
        group = self.num_generations if mode == "train" else self.num_generations_eval
        cost_adv = group_advantages(all_costs, group, scale=self.scale_rewards)
        b = out["completion_ids"].shape[0]
        device = out["advantages"].device
        cost_adv = cost_adv[local_rows(self, b)].to(device)
        if dense is not None:
            mask = policy_token_mask(out)  # tool results are not the policy's: they carry no cost
            per_token = self._dense_on_tokens(dense, b, mask.shape[1], device)
            cost_adv = (cost_adv.unsqueeze(1) + self.constraint.dense_coef * per_token) * mask
        combined = combine_advantages(out["advantages"], cost_adv, lam)
        if combined.dim() == 2:
            combined = combined * out["completion_mask"]
        out["advantages"] = combined
        show_loss_advantages(self, out)
        return out


class ConstrainedPPOTrainer(_ConstraintMixin, GuardPPOTrainer):
    """:class:`~guard_reward.integrations.trl.ppo.GuardPPOTrainer` under a safety constraint (see the module
    docstring for the cost advantage: GAE with gamma = lambda = 1 and a batch-mean baseline, no cost critic).

    Args:
        *args, **kwargs: everything ``GuardPPOTrainer`` takes (``reward_funcs`` must not be empty).
        constraint: the :class:`~guard_reward.shaping.constraint.Constraint`.
    """

    def __init__(self, *args: Any, constraint: Constraint, **kwargs: Any) -> None:
        _check_constraint(constraint, kwargs.get("reward_funcs", args[1] if len(args) > 1 else None))
        super().__init__(*args, **kwargs)
        self._init_constraint(constraint)

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        all_costs, dense = self._gathered_costs()
        lam = self._constraint_step(all_costs, mode)
        mask = policy_token_mask(out)  # tool results are the environment's: no cost-to-go, no baseline there
        b, t = mask.shape
        device = out["advantages"].device
        local = all_costs[local_rows(self, b)].to(device)
        judged = ~torch.isnan(local)
        # Cost-to-go per token (gamma = 1): the terminal cost, plus the per-token costs from t on.
        to_go = torch.where(judged, local, torch.zeros_like(local)).unsqueeze(1).expand(b, t).clone()
        if dense is not None:
            per_token = self._dense_on_tokens(dense, b, t, device) * self.constraint.dense_coef
            to_go = to_go + return_to_go(per_token, mask)
        valid = mask & judged.unsqueeze(1)
        # Baseline and scale over the whole batch, all processes (sums and counts, not means of means).
        cost_adv = masked_whiten(to_go, valid, reduce=self._sum_across, eps=1e-8, eps_on="std")
        out["advantages"] = combine_advantages(out["advantages"], cost_adv, lam) * mask
        show_loss_advantages(self, out)
        return out
