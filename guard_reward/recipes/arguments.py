"""The recipe's own dataclasses: what is trained on which prompts, the guard rewards, the dense shaping and
the safety constraint, each field documented once and validated in ``__post_init__``.

They are ``TrlParser``/``HfArgumentParser`` compatible: a recipe YAML is one flat mapping, and the prefixes
(``guard_…``, ``shaping_…``, ``constraint_…``) keep these options from colliding with the trainer's.
:mod:`guard_reward.recipes.config` puts them together with TRL's dataclasses and checks the combinations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from guard_reward.conversations import THINKING_MODES
from guard_reward.shaping.dense import DENSE_ADVANTAGES, SHAPING_MODES, controversial_weight
from guard_reward.shaping.scalar import ScalarShaping

TRAINERS = ("grpo", "rloo", "ppo")
GUARD_REWARDS = ("safety", "hybrid", "none")
GUARD_MODES = ("hard", "soft")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the field and the accepted values when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not accepted; use one of {', '.join(map(str, allowed))}")


def _policy(name: str, value: Any) -> str | float:
    """``"strict"``, ``"loose"`` or a number (YAML gives a float, the command line a string)."""
    if isinstance(value, str) and value not in ("strict", "loose"):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not accepted; use 'strict', 'loose' or a number") from None
    return value


@dataclass
class RecipeArguments:
    """What the recipe trains and on which prompts (the dataset itself is TRL's ``dataset_name``)."""

    trainer: str = field(
        default="grpo", metadata={"help": "Trainer: 'grpo', 'ppo' (dense-capable) or 'rloo'."}
    )
    dataset_prompt_column: str = field(
        default="prompt", metadata={"help": "Column holding the prompt (a string or a list of messages)."}
    )
    dataset_conversational: bool = field(
        default=True, metadata={"help": "Wrap string prompts as one user message (chat template applied)."}
    )
    dataset_max_samples: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message put before every prompt."}
    )
    curves_plot_every: int | None = field(
        default=None, metadata={"help": "Redraw safety_curves.png every N logging steps (None: at the end)."}
    )

    def __post_init__(self) -> None:
        check_choice("trainer", self.trainer, TRAINERS)
        if self.dataset_max_samples is not None and self.dataset_max_samples < 1:
            raise ValueError(f"dataset_max_samples must be >= 1, got {self.dataset_max_samples}")
        if self.curves_plot_every is not None and self.curves_plot_every < 1:
            raise ValueError(f"curves_plot_every must be >= 1, got {self.curves_plot_every}")


@dataclass
class GuardArguments:
    """The guards and the scalar reward built from Qwen3Guard-Gen (see ``SafetyReward``)."""

    guard_gen: str | None = field(
        default=None, metadata={"help": "Qwen3Guard-Gen checkpoint (hub id/folder)."}
    )
    guard_stream: str | None = field(
        default=None, metadata={"help": "Qwen3Guard-Stream checkpoint, for the dense per-token penalty."}
    )
    guard_device: str | None = field(default=None, metadata={"help": "Guard device (default: this rank's)."})
    guard_dtype: str | None = field(
        default=None, metadata={"help": "float32 | bfloat16 | float16 (default: auto)."}
    )
    guard_reward: str = field(
        default="safety",
        metadata={"help": "'safety' (SafetyReward), 'hybrid' (HybridSafetyReward) or 'none'."},
    )
    guard_mode: str = field(
        default="hard", metadata={"help": "'hard' (label) or 'soft' (label probabilities)."}
    )
    guard_controversial: str = field(
        default="strict", metadata={"help": "'strict' (as Unsafe), 'loose' (as Safe) or its own value."}
    )
    guard_safe_value: float = field(default=1.0, metadata={"help": "Value of a Safe, non-refusing response."})
    guard_unsafe_value: float = field(default=-1.0, metadata={"help": "Value of an Unsafe response."})
    guard_category_weights: dict | str | None = field(
        default=None, metadata={"help": "Per-category weights on the unsafe value (mapping, or JSON)."}
    )
    guard_refusal: bool = field(
        default=True, metadata={"help": "Value refusals by the prompt's harmfulness."}
    )
    guard_benign_refusal_value: float = field(
        default=0.0, metadata={"help": "Value of refusing a benign prompt."}
    )
    guard_harmful_refusal_value: float = field(
        default=1.0, metadata={"help": "Value of refusing a harmful prompt."}
    )
    guard_harmful_column: str | None = field(
        default=None,
        metadata={"help": "Dataset column marking harmful prompts (None: the guard judges them)."},
    )
    guard_thinking: str = field(default="separate", metadata={"help": "'answer', 'separate' or 'whole'."})
    guard_failure_value: float | None = field(
        default=None, metadata={"help": "Reward when the guard cannot judge (None: no signal)."}
    )
    guard_helpfulness: str | None = field(
        default=None,
        metadata={"help": "Hybrid only: 'package.module:function' reward, or a sequence-classification RM."},
    )
    guard_hybrid_unsafe_value: float = field(
        default=-10.0, metadata={"help": "Hybrid cap for unsafe responses."}
    )
    guard_hybrid_refusal_value: float = field(default=-5.0, metadata={"help": "Hybrid cap for refusals."})
    guard_token_budget: int = field(
        default=16384, metadata={"help": "Guard micro-batch size in padded tokens."}
    )
    guard_metric_prefix: str = field(
        default="guard", metadata={"help": "Prefix of the logged safety metrics."}
    )

    def __post_init__(self) -> None:
        check_choice("guard_reward", self.guard_reward, GUARD_REWARDS)
        check_choice("guard_mode", self.guard_mode, GUARD_MODES)
        check_choice("guard_thinking", self.guard_thinking, THINKING_MODES)
        self.guard_controversial = _policy("guard_controversial", self.guard_controversial)  # type: ignore[assignment]
        if isinstance(self.guard_category_weights, str):
            try:
                self.guard_category_weights = json.loads(self.guard_category_weights)
            except json.JSONDecodeError as exc:
                raise ValueError(f"guard_category_weights is not valid JSON: {exc}") from None
        if self.guard_reward == "hybrid":
            if self.guard_controversial not in ("strict", "loose"):
                raise ValueError("guard_controversial must be 'strict' or 'loose' with guard_reward='hybrid'")
            if not self.guard_helpfulness:
                raise ValueError("guard_reward='hybrid' needs guard_helpfulness (the H of the hybrid rule)")
        if self.guard_reward != "none" and not self.guard_gen:
            raise ValueError(
                f"guard_reward={self.guard_reward!r} needs guard_gen (a Qwen3Guard-Gen checkpoint)"
            )
        if self.guard_token_budget < 1:
            raise ValueError(f"guard_token_budget must be >= 1, got {self.guard_token_budget}")
        self.scalar_shaping()  # validates values, modes and category names

    def scalar_shaping(self) -> ScalarShaping:
        return ScalarShaping(
            mode=self.guard_mode,  # type: ignore[arg-type]
            controversial=self.guard_controversial,
            safe_value=self.guard_safe_value,
            unsafe_value=self.guard_unsafe_value,
            category_weights=dict(self.guard_category_weights or {}),
            refusal=self.guard_refusal,
            benign_refusal_value=self.guard_benign_refusal_value,
            harmful_refusal_value=self.guard_harmful_refusal_value,
        )


@dataclass
class ShapingArguments:
    """The dense per-token penalty from Qwen3Guard-Stream (see ``TokenSafetyPenalty``,
    ``DenseGRPOTrainer``)."""

    shaping_mode: str | None = field(
        default=None,
        metadata={"help": "'first_violation', 'prob', 'threshold', or None for no dense reward."},
    )
    shaping_hard: bool = field(
        default=False, metadata={"help": "first_violation: penalise the debounced flag token instead."}
    )
    shaping_coef: float = field(default=1.0, metadata={"help": "Scale of the per-token penalty."})
    shaping_controversial: str = field(
        default="strict", metadata={"help": "'strict', 'loose' or a weight in [0, 1] on p(Controversial)."}
    )
    shaping_threshold: float = field(default=0.5, metadata={"help": "'threshold' mode: hinge threshold."})
    shaping_clip: float | None = field(default=None, metadata={"help": "Clip each token's penalty to ±clip."})
    shaping_dense_coef: float = field(
        default=0.1,
        metadata={"help": "GRPO: A_t = A_seq + dense_coef · d_t; PPO: r_t += dense_coef · d_t."},
    )
    shaping_dense_advantage: str = field(
        default="token", metadata={"help": "GRPO: 'token', 'return_to_go' or 'process_supervision'."}
    )
    shaping_fold: bool = field(
        default=False,
        metadata={"help": "Also add the summed penalty as a scalar reward (always on for RLOO)."},
    )

    def __post_init__(self) -> None:
        if self.shaping_mode in ("none", ""):
            self.shaping_mode = None
        if self.shaping_mode is not None:
            check_choice("shaping_mode", self.shaping_mode, SHAPING_MODES)
        self.shaping_controversial = _policy("shaping_controversial", self.shaping_controversial)  # type: ignore[assignment]
        controversial_weight(self.shaping_controversial)
        if self.shaping_hard and self.shaping_mode != "first_violation":
            raise ValueError("shaping_hard applies to shaping_mode='first_violation' only")
        if self.shaping_hard and self.shaping_controversial not in ("strict", "loose"):
            raise ValueError(
                "shaping_hard needs shaping_controversial 'strict' or 'loose' (the debounce policy)"
            )
        if not 0.0 <= self.shaping_threshold < 1.0:
            raise ValueError(f"shaping_threshold must be in [0, 1), got {self.shaping_threshold}")
        if self.shaping_clip is not None and self.shaping_clip <= 0:
            raise ValueError(f"shaping_clip must be > 0 or None, got {self.shaping_clip}")
        if self.shaping_dense_coef < 0:
            raise ValueError(f"shaping_dense_coef must be >= 0, got {self.shaping_dense_coef}")
        check_choice("shaping_dense_advantage", self.shaping_dense_advantage, DENSE_ADVANTAGES)


@dataclass
class ConstraintArguments:
    """Safety as a constraint (``constraint_…``; see :mod:`guard_reward.shaping.constraint`): maximise
    ``constraint_reward`` subject to ``E[guard cost] <= constraint_threshold``, with safe-rlhf's λ knobs. Off
    while ``constraint_threshold`` is unset."""

    constraint_threshold: float | None = field(
        default=None, metadata={"help": "Largest acceptable expected cost, e.g. 0.02 (None: no constraint)."}
    )
    constraint_reward: str | None = field(
        default=None,
        metadata={"help": "The objective: 'package.module:function' reward or a sequence-classification RM."},
    )
    constraint_mode: str = field(
        default="hard", metadata={"help": "'hard' (Unsafe -> 1) or 'soft' (P(Unsafe))."}
    )
    constraint_controversial: str = field(
        default="strict", metadata={"help": "'strict' (costs 1), 'loose' (costs 0) or its cost in [0, 1]."}
    )
    constraint_category_weights: dict | str | None = field(
        default=None,
        metadata={"help": "Per-category weights on an Unsafe verdict's cost (mapping, or JSON)."},
    )
    constraint_lambda_init: float = field(default=1.0, metadata={"help": "Initial λ (> 0)."})
    constraint_lambda_lr: float = field(
        default=0.1, metadata={"help": "SGD step size on log λ (0: λ fixed)."}
    )
    constraint_lambda_max: float | None = field(default=5.0, metadata={"help": "Upper clamp of λ."})
    constraint_update_delay_steps: int = field(
        default=0, metadata={"help": "Batches before λ starts moving."}
    )
    constraint_cost_window: int = field(
        default=128,
        metadata={
            "help": "Mean cost over the last N samples of each process (λ pools the windows of all processes)."
        },
    )
    constraint_dense: bool = field(
        default=False,
        metadata={"help": "Add Qwen3Guard-Stream's per-token cost (first violation) to A_cost."},
    )
    constraint_dense_coef: float = field(default=1.0, metadata={"help": "Weight of the per-token cost."})

    @property
    def enabled(self) -> bool:
        return self.constraint_threshold is not None

    def __post_init__(self) -> None:
        check_choice("constraint_mode", self.constraint_mode, ("hard", "soft"))
        self.constraint_controversial = _policy("constraint_controversial", self.constraint_controversial)  # type: ignore[assignment]
        if isinstance(self.constraint_category_weights, str):
            try:
                self.constraint_category_weights = json.loads(self.constraint_category_weights)
            except json.JSONDecodeError as exc:
                raise ValueError(f"constraint_category_weights is not valid JSON: {exc}") from None
        if not self.enabled:
            return
        weights = dict(self.constraint_category_weights or {})
        self.controller_config(max([1.0, *map(float, weights.values())]))  # validates threshold and knobs
        if self.constraint_dense_coef < 0:
            raise ValueError(f"constraint_dense_coef must be >= 0, got {self.constraint_dense_coef}")

    def controller_config(self, max_cost: float = 1.0):
        """The :class:`~guard_reward.shaping.constraint.ConstraintConfig` of these arguments."""
        from guard_reward.shaping.constraint import ConstraintConfig

        return ConstraintConfig(
            threshold=self.constraint_threshold,  # type: ignore[arg-type]
            lambda_init=self.constraint_lambda_init,
            lambda_lr=self.constraint_lambda_lr,
            lambda_max=self.constraint_lambda_max,
            update_delay_steps=self.constraint_update_delay_steps,
            cost_window=self.constraint_cost_window,
            max_cost=max_cost,
        )
