"""``GuardPPOConfig``: TRL's ``GRPOConfig`` plus the PPO-specific knobs of ``GuardPPOTrainer``.

It extends ``GRPOConfig`` because the trainer extends ``GRPOTrainer``: generation (incl. vLLM), batching,
``num_iterations`` (PPO epochs over one rollout), ``epsilon`` (policy clip range), ``loss_type`` (token
normalisation), logging and the completions table keep their TRL meaning. What changes:

* ``beta`` is the KL coefficient **in the per-token reward** (``r_t -= beta * KL_t``, as in RLHF PPO), not a
  loss term as in GRPO; its default is 0.05 (TRL's former ``PPOConfig.kl_coef``). ``beta=0`` disables the
  reference model;
* ``num_generations`` defaults to 2, the smallest group TRL's sampler accepts: PPO's baseline is the critic,
  so samples per prompt are not needed for the advantage;
* ``scale_rewards`` is not used (there is no group normalisation); ``multi_objective_aggregation`` must stay
  ``"sum_then_normalize"`` (rewards are the weighted sum of the reward functions);
* ``loss_type`` must be token-level and ``importance_sampling_level`` ``"token"`` (the trainer checks this as
  ``DenseGRPOTrainer`` does: per-token advantages are PPO's whole point);
* ``disable_dropout`` defaults to True (log-probabilities and values must be reproducible between rollout and
  update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from guard_reward.shaping.ppo_math import KL_ESTIMATORS


@dataclass
class GuardPPOConfig(GRPOConfig):
    """Configuration of :class:`~guard_reward.integrations.trl.GuardPPOTrainer` (see the module docstring).

    PPO fields (in addition to every ``GRPOConfig`` field):
        kl_estimator: ``"k1"`` (``log pi - log ref``) or ``"k3"`` (``exp(ref - pi) - (ref - pi) - 1``).
        gamma: discount of GAE (1.0 = no discount within a completion).
        lam: GAE lambda (1.0 = Monte-Carlo returns, 0.0 = one-step TD).
        whiten_advantages: normalise advantages to zero mean / unit variance over the generation batch.
        cliprange_value: clip range of the value loss around the rollout-time values.
        value_model_name_or_path: checkpoint of the critic; ``None`` = the policy's checkpoint with a new
            scalar head. Ignored when the trainer gets ``value_model=``.
        value_learning_rate: learning rate of the critic's own AdamW optimiser (constant).
        value_weight_decay: weight decay of that optimiser.
        value_max_grad_norm: gradient clipping of the critic; ``None`` = ``max_grad_norm``.
    """

    beta: float = field(
        default=0.05,
        metadata={
            "help": "KL coefficient in the per-token reward (r_t -= beta * KL_t). 0 disables the reference."
        },
    )
    num_generations: int | None = field(
        default=2,
        metadata={
            "help": "Completions per prompt; PPO needs no group, 2 is the smallest TRL's sampler accepts."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Disable dropout in the policy, reference and critic."},
    )
    kl_estimator: str = field(default="k1", metadata={"help": "KL estimator: 'k1' or 'k3'."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten advantages over the (global) generation batch."}
    )
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value loss."})
    value_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Critic checkpoint; None = the policy checkpoint with a new scalar head."},
    )
    value_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the critic."})
    value_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the critic's AdamW."})
    value_max_grad_norm: float | None = field(
        default=None, metadata={"help": "Gradient clipping of the critic; None = max_grad_norm."}
    )

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator={self.kl_estimator!r} is not accepted; use one of {KL_ESTIMATORS}"
            )
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is out of range; it must be in [0, 1]")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (it multiplies the KL penalty in the reward)")
        if self.cliprange_value <= 0:
            raise ValueError(f"cliprange_value={self.cliprange_value} must be > 0")
        if self.value_learning_rate <= 0:
            raise ValueError(f"value_learning_rate={self.value_learning_rate} must be > 0")
        if self.value_weight_decay < 0:
            raise ValueError(f"value_weight_decay={self.value_weight_decay} must be >= 0")
        if self.value_max_grad_norm is not None and self.value_max_grad_norm <= 0:
            raise ValueError(f"value_max_grad_norm={self.value_max_grad_norm} must be > 0 or None")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not accepted by PPO: "
                "scalar rewards are summed with reward_weights and credited by the critic; use "
                "'sum_then_normalize'"
            )
        if self.fp16:
            raise ValueError(
                "fp16=True is not supported by GuardPPOTrainer (the critic has no loss scaler); use bf16 "
                "or fp32"
            )
        super().__post_init__()
