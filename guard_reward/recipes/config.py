"""Recipe configuration: dataclasses for the guard rewards and the dense shaping, loadable from YAML.

The dataclasses are ``TrlParser``/``HfArgumentParser`` compatible: a recipe YAML is one flat mapping whose
keys are the fields of :class:`RecipeArguments`, :class:`GuardArguments` (``guard_…``),
:class:`ShapingArguments` (``shaping_…``), TRL's ``ScriptArguments`` (``dataset_…``) and ``ModelConfig``
(``model_name_or_path``, …) and ``GRPOConfig``, ``RLOOConfig`` or ``GuardPPOConfig`` (chosen by the
``trainer`` key), exactly as TRL's own scripts read theirs — the prefixes keep the guard's options from
colliding with the trainer's. Every field is validated in ``__post_init__``; :func:`load_config` also checks
the combinations (a dense reward needs a Stream guard, RLOO folds it into a scalar, GRPO's and PPO's loss must
accept per-token advantages, ...).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard_reward.conversations import THINKING_MODES
from guard_reward.shaping.dense import DENSE_ADVANTAGES, SHAPING_MODES, controversial_weight
from guard_reward.shaping.scalar import ScalarShaping

logger = logging.getLogger(__name__)


TRAINERS = ("grpo", "rloo", "ppo")
GUARD_REWARDS = ("safety", "hybrid", "none")
GUARD_MODES = ("hard", "soft")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
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
        _choice("trainer", self.trainer, TRAINERS)
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
        _choice("guard_reward", self.guard_reward, GUARD_REWARDS)
        _choice("guard_mode", self.guard_mode, GUARD_MODES)
        _choice("guard_thinking", self.guard_thinking, THINKING_MODES)
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
            _choice("shaping_mode", self.shaping_mode, SHAPING_MODES)
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
        _choice("shaping_dense_advantage", self.shaping_dense_advantage, DENSE_ADVANTAGES)


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
        _choice("constraint_mode", self.constraint_mode, ("hard", "soft"))
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


@dataclass
class RecipeConfig:
    """Everything a recipe needs, as parsed from one YAML file (and command-line overrides)."""

    recipe: RecipeArguments
    guard: GuardArguments
    shaping: ShapingArguments
    script: Any  # trl.ScriptArguments
    model: Any  # trl.ModelConfig
    training: Any  # trl.GRPOConfig | trl.RLOOConfig | GuardPPOConfig
    constraint: ConstraintArguments = field(default_factory=ConstraintArguments)

    def __post_init__(self) -> None:
        from guard_reward.integrations.trl.grpo import check_dense_loss

        self._check_constraint()

        dense = self.shaping.shaping_mode is not None
        if dense and not self.guard.guard_stream:
            raise ValueError("shaping_mode needs guard_stream (a Qwen3Guard-Stream checkpoint)")
        if self.recipe.trainer == "rloo" and dense and not self.shaping.shaping_fold:
            logger.info("RLOO is sequence-level: the dense penalty is folded into a scalar reward (its sum)")
            self.shaping.shaping_fold = True
        if (self.recipe.trainer == "grpo" and dense) or self.recipe.trainer == "ppo":
            check_dense_loss(self.training)  # PPO's advantages are always per token
        if (
            self.guard.guard_reward == "none"
            and not (dense and self.shaping.shaping_fold)
            and not self.constraint.enabled
        ):
            raise ValueError(
                "the recipe has no scalar reward: set guard_reward ('safety' or 'hybrid') or fold the dense "
                "penalty into one (shaping_fold: true)"
            )
        if not self.script.dataset_name:
            raise ValueError(
                "dataset_name is required (a hub dataset id, a data file or a saved dataset folder)"
            )
        if not self.model.model_name_or_path:
            raise ValueError("model_name_or_path is required (the policy checkpoint)")

    def _check_constraint(self) -> None:
        c = self.constraint
        if not c.enabled:
            return
        if self.recipe.trainer not in ("grpo", "ppo"):
            raise ValueError(
                "constraint_threshold needs trainer 'grpo' or 'ppo' (RLOO has no constrained form)"
            )
        if not self.guard.guard_gen:
            raise ValueError(
                "constraint_threshold needs guard_gen (the Qwen3Guard-Gen checkpoint that gives the cost)"
            )
        if c.constraint_dense and not self.guard.guard_stream:
            raise ValueError("constraint_dense needs guard_stream (a Qwen3Guard-Stream checkpoint)")
        if (
            not c.constraint_reward
            and self.guard.guard_reward == "none"
            and self.shaping.shaping_mode is None
        ):
            raise ValueError(
                "the constraint has no reward to maximise: set constraint_reward (e.g. a helpfulness reward "
                "model) or guard_reward"
            )


#: Where the trainer's config sits in :func:`config_classes` (and :class:`RecipeConfig`).
TRAINING_INDEX = 5


def config_classes(trainer: str) -> tuple[type, ...]:
    """The dataclasses of a recipe, in :class:`RecipeConfig` field order, for ``TrlParser``."""
    from trl import GRPOConfig, ModelConfig, RLOOConfig, ScriptArguments

    _choice("trainer", trainer, TRAINERS)
    training = GRPOConfig if trainer == "grpo" else RLOOConfig
    if trainer == "ppo":
        from guard_reward.integrations.trl.ppo_config import GuardPPOConfig as training
    classes = (RecipeArguments, GuardArguments, ShapingArguments, ScriptArguments, ModelConfig, training)
    return (*classes, ConstraintArguments)


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with the package (``configs/*.yaml``), by name (the file stem)."""
    import guard_reward

    package = Path(guard_reward.__file__).resolve().parent
    # installed: guard_reward/configs (package-data); a source checkout: configs/ beside the package
    for folder in (package / "configs", package.parent / "configs"):
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def resolve_recipe(path: str | os.PathLike) -> Path:
    """A recipe file: ``path`` itself when it exists, else a shipped recipe of that name (``grpo_gen_safety``
    or ``grpo_gen_safety.yaml`` or ``configs/grpo_gen_safety.yaml``)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    shipped = shipped_recipes()
    name = given.name[: -len(".yaml")] if given.name.endswith(".yaml") else given.name
    if name in shipped and (given.parent == Path(".") or given.parent.name == "configs"):
        return shipped[name]
    names = ", ".join(shipped) or "none found"
    raise FileNotFoundError(f"recipe config {path} does not exist (shipped recipes: {names})")


def _read_recipe(path: Path) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must contain a YAML mapping of option: value")
    return data


def _trainer_of(data: dict[str, Any], overrides: Sequence[str]) -> str:
    trainer = str(data.get("trainer", "grpo"))
    overrides = list(overrides)
    for i, arg in enumerate(overrides):
        if arg == "--trainer" and i + 1 < len(overrides):
            trainer = overrides[i + 1]
        elif arg.startswith("--trainer="):
            trainer = arg.split("=", 1)[1]
    return trainer


def load_config(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    smoke: bool = False,
    smoke_cache: str | os.PathLike | None = None,
    smoke_gen: str | os.PathLike | None = None,
) -> RecipeConfig:
    """Parse a recipe YAML (plus ``--option value`` overrides) into a validated :class:`RecipeConfig`.

    ``path`` is a file or the name of a shipped recipe (:func:`resolve_recipe`). Every key and value is
    checked against the dataclass fields first (:func:`guard_reward.recipes.check.check_recipe`): an unknown
    key (with a "did you mean") or a value of the wrong type is one :class:`~guard_reward.recipes.check.
    RecipeError` line, so a typo never falls back to a default. ``smoke=True`` first checks the recipe as it
    would really run, then swaps in the tiny stand-ins and a two-step CPU run (``guard_reward.tiny.smoke``;
    ``smoke_cache`` is where they are kept, ``smoke_gen`` an existing tiny Gen folder to use); ``overrides``
    still win over the swap.
    """
    path = resolve_recipe(path)
    data = _read_recipe(path)
    overrides = list(overrides)
    if smoke:
        # the recipe as it will really run is checked first (every key, type and rule; only the device
        # switches that this machine may lack are set), so a smoke run never passes a recipe that fails
        _parse(path, data, [*overrides, *_CPU_CHECK])
        from guard_reward.tiny.smoke import smoke_overrides

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything a smoke run reads is local
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        gen = os.fspath(smoke_gen) if smoke_gen is not None else None
        overrides = [*smoke_overrides(data, path.stem, smoke_cache, gen=gen), *overrides]
    return _parse(path, data, overrides)


#: What the real-recipe check of a smoke run sets: the run itself is on the CPU, the recipe may be for a GPU.
_CPU_CHECK = ("--use_cpu", "true", "--bf16", "false", "--fp16", "false")


def _parse(path: Path, data: dict[str, Any], overrides: list[str]) -> RecipeConfig:
    """``TrlParser`` over the recipe and the overrides, after :func:`check_recipe` has judged every key."""
    from trl import TrlParser

    from guard_reward.recipes.check import RecipeError, check_recipe

    classes = config_classes(_trainer_of(data, overrides))
    check_recipe(data, overrides, classes, path.name)
    overrides = overrides + _activation_checkpointing(data, overrides, classes[TRAINING_INDEX])
    parser = TrlParser(classes)

    def one_line(message: str) -> None:  # argparse would print the usage of every option and exit
        raise RecipeError(f"{path.name}: {message}")

    parser.error = one_line  # type: ignore[method-assign]
    try:
        parsed = parser.parse_args_and_config(["--config", os.fspath(path), *overrides])
    except ValueError as exc:
        if "bf16/gpu" not in str(exc):
            raise
        raise ValueError(
            f"recipe {path.name} trains in bf16 on a GPU (bf16 is on by default) and this machine has no "
            f"GPU that supports it: run it where its header says, check the set-up here with "
            f"`guard-reward train --config {path.stem} --smoke`, or add --use_cpu true --bf16 false"
        ) from exc
    return RecipeConfig(*parsed)


def _last_value(data: dict[str, Any], overrides: Sequence[str], key: str) -> Any:
    """The value of ``key`` on the command line (last one wins), else in the YAML, else ``None``."""
    value = data.get(key)
    for i, arg in enumerate(overrides):
        if arg == f"--{key}" and i + 1 < len(overrides):
            value = overrides[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def _activation_checkpointing(data: dict[str, Any], overrides: Sequence[str], training: type) -> list[str]:
    """``--activation_checkpointing`` carrying the value of its deprecated alias ``gradient_checkpointing``.

    TRL's configs still default the alias (``GRPOConfig`` to ``True``), and transformers' ``TrainingArguments``
    warns with a ``FutureWarning`` whenever the alias is set and the new name is not — at every construction of
    the config, over a default the recipe never chose. Setting the new name to the alias' value (the
    command line's, else the YAML's, else the config class's default) keeps the behaviour and the warning
    away; a recipe that sets ``activation_checkpointing`` itself is left alone.
    """
    import dataclasses

    names = {f.name: f for f in dataclasses.fields(training)}
    extra: list[str] = []
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if new not in names or _last_value(data, overrides, new) is not None:
            continue
        value = _last_value(data, overrides, old)
        if value is None:
            default = names[old].default
            value = None if default is dataclasses.MISSING else default
        if value is None:
            continue
        extra += [f"--{new}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return extra
