"""``GuardPPOTrainer``: actor-critic PPO with dense (per-token) guard rewards, on TRL 1.16's GRPOTrainer.

TRL removed its ``PPOTrainer`` in 1.13; the one it had took only a sequence-classifier reward read at the last
token. This trainer keeps everything GRPOTrainer maintains — generation (transformers or vLLM), accelerate /
DeepSpeed / FSDP for the policy, the reference model, reward-function calls with ``log_metric`` /
``log_extra``, the clipped token-level policy loss and its ``loss_type`` normalisations, logging and the
completions table — and replaces only the advantage:

* per-token reward ``r_t = dense_coef * dense_t - beta * KL_t + [t = last] * score`` where ``score`` is the
  weighted sum of the scalar ``reward_funcs`` (GRPOTrainer's own reward computation), ``dense_t`` the sum of
  the ``dense_rewards`` (``guard_reward.types.DenseRewards``, e.g. ``TokenSafetyPenalty``) and ``KL_t`` the
  k1/k3 estimate against the reference policy;
* GAE(gamma, lambda) with a separate critic (``value.py`` says why not a value head), advantages whitened over
  the generation batch and handed to GRPO's loss as ``(B, T)`` advantages (the loss accepts that shape); no
  group baseline, so ``num_generations`` can be TRL's minimum of 2;
* the critic is trained with PPO's clipped value loss by its own AdamW (``value_learning_rate``), stepped at
  each optimiser step of the policy; the loss is a mean over the value tokens of the whole (global) batch, as
  TRL's ``dapo`` normalises the policy loss, so one process and several compute the same update; with several
  processes its gradients are averaged by hand, so it is a plain replica under any launcher. A fresh scalar head is drawn from ``args.seed`` alone (TRL reseeds every
  process differently at the end of its ``__init__``), and rank 0's weights are broadcast after construction,
  so every process starts from, and keeps, the same critic; the saved critic is that replica.

Agent trajectories (TRL's ``tools=``): tool results inside a completion are the environment. The KL, the
score (on the policy's last token), GAE's steps (:func:`~guard_reward.shaping.ppo_math.gae` carries the running
advantage and the next value across tool tokens) and the critic's targets are on the policy's tokens only: a
tool token's value is never read, so fitting it would spend the critic on text the policy does not write. The
tool mask reaches every reward as a ``tool_mask`` column, as in ``DenseGRPOTrainer``.

Differences from textbook PPO-RLHF: the KL term is in the reward (as in RLHF PPO), so GRPO's in-loss KL is
switched off while the policy loss runs; a completion for which every reward function returned ``None`` keeps
its dense and KL terms out of training (advantage 0, not used for the critic) and is counted in
``ppo/unscorable_frac``; a row whose dense mask is False everywhere (the dense reward could not judge it) gets
no dense term, the rest of its reward stands; ``off_policy_mask_threshold`` works per token
(:func:`~guard_reward.integrations.trl.grpo.per_token_off_policy_mask`); multimodal policies are not supported (the critic reads text tokens only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import disable_dropout_in_model, get_config_model_id

from guard_reward.shaping import ppo_math
from guard_reward.shaping.dense import check_coef
from guard_reward.shaping.normalize import masked_mean, masked_whiten
from guard_reward.types import DenseRewards

from .batch import (
    add_tool_mask_column,
    bind_policy_tokenizer,
    check_dense_rewards,
    check_distinct_names,
    local_rows,
    on_completion_grid,
    policy_token_mask,
    reward_kwargs,
    score_dense,
    show_loss_advantages,
)
from .grpo import check_dense_loss, per_token_off_policy_mask
from .ppo_config import GuardPPOConfig
from .value import (
    broadcast_value_model,
    check_value_model,
    completion_values,
    load_value_model,
    load_value_state,
    rollout_values,
    save_value_model,
)

logger = logging.getLogger(__name__)

DenseRewardFunc = Callable[..., DenseRewards]


class GuardPPOTrainer(GRPOTrainer):
    """PPO with per-token rewards (dense guard rewards + terminal score - beta * KL), GAE and a critic.

    Args:
        model: the policy (path, hub id or ``PreTrainedModel``; PEFT works as in GRPOTrainer).
        reward_funcs: scalar reward function(s), exactly as ``GRPOTrainer`` takes them (at least one).
        dense_rewards: a dense reward callable or a list of them (see ``guard_reward.types.DenseRewards``), or
            ``None`` for plain PPO.
        args: a :class:`GuardPPOConfig`.
        train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks, optimizers,
        peft_config: as in ``GRPOTrainer`` (``optimizers`` concerns the policy only).
        value_model: the critic (module or checkpoint path); default ``args.value_model_name_or_path`` or the
            policy's checkpoint with a new scalar head.
        dense_coef: multiplies the summed dense rewards.
        **grpo_kwargs: other ``GRPOTrainer`` arguments (``tools``, ``rollout_func``, ...).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "ppo", "guard-reward"]
    _name = "GuardPPO"
    # TRL calls self.get_off_policy_mask(...); PPO's advantages are per token, so is the mask.
    get_off_policy_mask = staticmethod(per_token_off_policy_mask)

    def __init__(
        self,
        model: Any,
        reward_funcs: Any,
        dense_rewards: DenseRewardFunc | Sequence[DenseRewardFunc] | None = None,
        args: GuardPPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        value_model: nn.Module | str | None = None,
        dense_coef: float = 1.0,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        peft_config: Any = None,
        **grpo_kwargs: Any,
    ) -> None:
        model = os.fspath(model) if isinstance(model, os.PathLike) else model
        value_model = os.fspath(value_model) if isinstance(value_model, os.PathLike) else value_model
        if args is None:
            args = GuardPPOConfig(output_dir="guard-ppo")
        if not isinstance(args, GuardPPOConfig):
            raise TypeError(
                f"args must be a GuardPPOConfig (PPO options live there), got {type(args).__name__}"
            )
        if reward_funcs is None or (isinstance(reward_funcs, (list, tuple)) and len(reward_funcs) == 0):
            raise ValueError(
                "GuardPPOTrainer needs at least one scalar reward function (the terminal score); to train "
                "on dense rewards alone, pass a reward function that returns 0.0 for every completion"
            )
        self.dense_coef = check_coef("dense_coef", dense_coef)
        check_dense_loss(args)  # PPO's advantages are per token: sequence-level losses cannot use them
        self.dense_rewards = check_dense_rewards(dense_rewards)
        self._ppo_pending: dict[str, Any] = {}
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **grpo_kwargs,
        )
        check_distinct_names(self.reward_func_names)
        bind_policy_tokenizer(self, self.dense_rewards)
        self.value_model = self._build_value_model(model, value_model)
        params = [p for p in self.value_model.parameters() if p.requires_grad]
        self.value_optimizer = torch.optim.AdamW(
            params, lr=args.value_learning_rate, weight_decay=args.value_weight_decay
        )
        max_norm = args.value_max_grad_norm
        self._value_max_grad_norm = args.max_grad_norm if max_norm is None else max_norm

    # ------------------------------------------------------------------ critic set-up and optimisation

    def _build_value_model(self, model: Any, value_model: nn.Module | str | None) -> nn.Module:
        if value_model is None or isinstance(value_model, str):
            source = value_model or self.args.value_model_name_or_path
            if source is None:
                source = model if isinstance(model, str) else get_config_model_id(model.config)
            if not source:
                raise ValueError(
                    "cannot build the critic: the policy has no checkpoint path (config._name_or_path is "
                    "empty); pass value_model= or GuardPPOConfig(value_model_name_or_path=...)"
                )
            # TRL ends its __init__ with set_seed(seed, device_specific=True): a head drawn now would differ
            # on every process. Draw it from the seed alone, without disturbing the processes' generators.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.args.seed)
                value_model = load_value_model(source, **(self.args.model_init_kwargs or {}))
        check_value_model(value_model)
        if self.args.disable_dropout:
            disable_dropout_in_model(value_model)
        if self.args.gradient_checkpointing and hasattr(value_model, "gradient_checkpointing_enable"):
            value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        value_model.train()
        value_model = value_model.to(self.accelerator.device)
        broadcast_value_model(value_model, self.accelerator)
        return value_model

    def _sum_across(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(x, reduction="sum") if self.accelerator.num_processes > 1 else x

    def _value_optimizer_step(self) -> None:
        params = [p for p in self.value_model.parameters() if p.grad is not None]
        if not params:
            return
        if self.accelerator.num_processes > 1:
            # The critic is a plain replica on every process: average its gradients before stepping.
            for p in params:
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        max_norm = self._value_max_grad_norm
        if max_norm is not None and max_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self._metrics["train"]["ppo/value_grad_norm"].append(float(grad_norm))
        self.value_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)

    def training_step(self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        # GRPOTrainer counts micro-steps in self._step; the critic steps with the policy's optimiser.
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._value_optimizer_step()
        return loss

    # ------------------------------------------------------------------ rollout: rewards, values, GAE

    def _generate(self, prompts):  # type: ignore[override]
        result = super()._generate(prompts)
        self._ppo_pending["tool_mask"] = result[2]  # TRL 1.16: (prompt_ids, completion_ids, tool_mask, ...)
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        add_tool_mask_column(inputs, self._ppo_pending.pop("tool_mask", None))
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._ppo_pending["rewards_per_func"] = rewards_per_func
        # Dense rewards run inside TRL's scoring, so their log_metric/log_extra calls are flushed with the
        # scalar rewards' in the same generation batch (and can reuse a guard pass the scalar reward cached);
        # score_dense refuses non-finite rewards where a mask is True, naming the reward.
        if self.dense_rewards:
            kwargs = reward_kwargs(self, inputs)
            dense = score_dense(self.dense_rewards, prompts, completions, completion_ids_list, kwargs)
            self._ppo_pending["dense"] = dense
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        self._ppo_pending = {}
        out = super()._generate_and_score_completions(inputs)
        if "num_images" in out or "pixel_values" in out:
            raise NotImplementedError(
                "GuardPPOTrainer supports text-only policies (the critic reads text tokens)"
            )
        pending, self._ppo_pending = self._ppo_pending, {}
        mode = "train" if self.model.training else "eval"
        device = out["completion_ids"].device
        mask = policy_token_mask(out)  # with tools, less the tool results: the environment's tokens
        scores, unscorable = self._scores(pending["rewards_per_func"], mask.shape[0], device)
        dense = None
        if "dense" in pending:
            # score_dense leaves 0 wherever no dense reward's mask is True: a row the dense rewards could not
            # judge gets no dense term, its score and KL stand
            dense = (
                self.dense_coef * on_completion_grid(pending["dense"].rewards, mask.shape[1], device) * mask
            )
        kl, values = self._kl_and_values(out, mask, mode)
        rewards = ppo_math.token_rewards(scores, kl, mask, self.beta, dense)
        advantages, returns = ppo_math.gae(rewards, values, mask, self.args.gamma, self.args.lam)
        # the critic learns the states the policy acts in (a tool token's value is never read by GAE)
        value_mask = policy_mask = mask & ~unscorable.unsqueeze(1)
        if self.args.whiten_advantages:
            advantages = masked_whiten(advantages, policy_mask, reduce=self._sum_across)
        advantages = advantages * policy_mask

        out["advantages"] = advantages
        out["ppo_rewards"] = rewards
        out["ppo_values"] = values
        out["ppo_returns"] = returns
        out["ppo_value_mask"] = value_mask
        # value tokens of the generation batch over every process (0-dim: TRL's splitting keeps it whole)
        out["ppo_value_items"] = self._sum_across(value_mask.sum().float())
        self._log_rollout(mode, scores, unscorable, kl, dense, values, returns, mask, value_mask)
        # The completions table shows GRPO's group advantage; show each completion's mean PPO advantage.
        show_loss_advantages(self, out)
        return out

    def _scores(
        self, rewards_per_func: torch.Tensor, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's scalar scores ``(B,)`` and which rows are unscorable ``(B,)`` bool: its rows of
        GRPOTrainer's gathered ``(N, F)`` rewards, weighted and summed over the functions that returned a value;
        0 for a row every reward function returned ``None`` for."""
        local = rewards_per_func[local_rows(self, batch)].to(device)
        unscorable = torch.isnan(local).all(dim=1)
        scores = (local * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        return torch.where(unscorable, torch.zeros_like(scores), scores), unscorable

    def _kl_and_values(
        self, out: dict[str, Any], mask: torch.Tensor, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token KL to the reference ``(B, T)`` (0 when ``beta`` is 0) and the critic's rollout values
        ``(B, T)``, both 0 outside ``mask`` (the policy's tokens: padding and tool results excluded), without
        gradients."""
        batch, width = mask.shape
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        chunk = (
            self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        )
        with torch.no_grad():
            kl = torch.zeros(batch, width, device=mask.device)
            if self.beta != 0.0:
                logps = out.get("old_per_token_logps")
                if logps is None:  # GRPO skips this forward when the loss can use detached log-probs
                    with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                        logps, _, _ = self._get_per_token_logps_and_entropies(
                            self.model, input_ids, attention_mask, width, batch_size=chunk
                        )
                kl = ppo_math.kl_penalty(logps, out["ref_per_token_logps"], mask, self.args.kl_estimator)
        return kl, rollout_values(self.value_model, out, chunk, self.accelerator) * mask

    def _log_rollout(self, mode, scores, unscorable, kl, dense, values, returns, mask, value_mask) -> None:
        """The rollout's ``ppo/…`` metrics (and ``dense/…`` with dense rewards) over every process."""
        metrics, gather = self._metrics[mode], self.accelerator.gather
        # KL of a completion = sum over its tokens (what the reward pays), averaged over completions.
        metrics["ppo/kl"].append(gather((kl * mask).sum(1)).float().mean().item())
        metrics["ppo/returns_mean"].append(masked_mean(returns, value_mask, self._sum_across).item())
        metrics["ppo/values_mean"].append(masked_mean(values, value_mask, self._sum_across).item())
        metrics["ppo/explained_variance"].append(
            ppo_math.explained_variance(values, returns, value_mask, self._sum_across)
        )
        all_scores, all_unscorable = gather(scores), gather(unscorable)
        scored = all_scores[~all_unscorable]
        metrics["ppo/score_mean"].append(scored.mean().item() if scored.numel() else float("nan"))
        metrics["ppo/unscorable_frac"].append(all_unscorable.float().mean().item())
        if dense is not None:  # the names DenseGRPOTrainer logs, so curves compare across trainers
            stats = gather(torch.stack([dense.sum(), mask.sum().float(), dense.sum(1).mean()])).view(-1, 3)
            metrics["dense/reward_mean"].append((stats[:, 0].sum() / stats[:, 1].sum().clamp(min=1)).item())
            metrics["dense/sum_mean"].append(stats[:, 2].mean().item())
        n_unscorable = int(all_unscorable.sum())
        if n_unscorable:
            logger.warning(
                "%d of %d completions got None from every reward function: no score, advantage 0, not "
                "used to train the critic",
                n_unscorable,
                all_unscorable.numel(),
            )

    # ------------------------------------------------------------------ losses

    def _compute_loss(self, model, inputs):  # type: ignore[override]
        # The KL is already paid in the reward; GRPO would add it again to the loss when beta != 0.
        beta, self.beta = self.beta, 0.0
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.beta = beta
        self._value_loss(inputs)
        return loss

    def _value_loss(self, inputs: dict[str, Any]) -> None:
        """The critic's clipped value loss on this micro-batch, backpropagated into the critic alone.

        The loss is normalised like TRL's ``dapo`` policy loss: summed over the local value tokens and divided
        by the global batch's value tokens per process and optimiser window, so averaging the gradients over
        processes gives the mean over all value tokens whatever their split across processes (a per-process
        mean would weight a process with few tokens like one with many)."""
        mode = "train" if self.model.training else "eval"
        with self.accelerator.autocast():
            values = completion_values(
                self.value_model,
                inputs["prompt_ids"],
                inputs["prompt_mask"],
                inputs["completion_ids"],
                inputs["completion_mask"],
            )
        mask = inputs["ppo_value_mask"]
        per_token, clipped = ppo_math.value_loss_terms(
            values, inputs["ppo_values"], inputs["ppo_returns"], self.args.cliprange_value
        )
        normalizer = inputs["ppo_value_items"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = (
                normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            )
        loss = (per_token * mask).sum() / normalizer
        if mode == "train" and torch.is_grad_enabled():
            # Own backward: the critic is not part of the policy's graph, optimiser or loss scaling.
            loss.backward()
        metrics, reduce = self._metrics[mode], self._sum_across
        metrics["ppo/value_loss"].append(masked_mean(per_token.detach(), mask, reduce).item())
        metrics["ppo/value_clipfrac"].append(masked_mean(clipped.float(), mask, reduce).item())

    # ------------------------------------------------------------------ checkpoints

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            save_value_model(self.value_model, None, output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        super()._save_checkpoint(model, trial)  # its save_model call already wrote the critic's weights
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            save_value_model(None, self.value_optimizer, folder)

    def _load_optimizer_and_scheduler(self, checkpoint):  # type: ignore[override]
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            load_value_state(self.value_model, self.value_optimizer, checkpoint)
