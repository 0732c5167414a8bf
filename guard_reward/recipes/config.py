"""Recipe configuration: a recipe YAML (plus command-line overrides) loaded into one validated
:class:`RecipeConfig`.

A recipe YAML is one flat mapping whose keys are the fields of the recipe's own dataclasses
(:mod:`guard_reward.recipes.arguments`, importable from here too: :class:`RecipeArguments`,
:class:`GuardArguments` (``guard_…``), :class:`ShapingArguments` (``shaping_…``),
:class:`ConstraintArguments` (``constraint_…``)), TRL's ``ScriptArguments`` (``dataset_…``) and
``ModelConfig`` (``model_name_or_path``, …) and ``GRPOConfig``, ``RLOOConfig`` or ``GuardPPOConfig`` (chosen
by the ``trainer`` key), exactly as TRL's own scripts read theirs. :func:`load_config` checks every key and
type first (:mod:`guard_reward.recipes.check`), then parses; :class:`RecipeConfig` checks the combinations
(a dense reward needs a Stream guard, RLOO folds it into a scalar, GRPO's and PPO's loss must accept
per-token advantages, ...). ``--smoke`` swaps in tiny stand-ins after the real recipe has been checked.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard_reward.recipes.arguments import (
    GUARD_MODES,
    GUARD_REWARDS,
    TRAINERS,
    ConstraintArguments,
    GuardArguments,
    RecipeArguments,
    ShapingArguments,
    check_choice,
)

__all__ = [
    "GUARD_MODES",
    "GUARD_REWARDS",
    "TRAINERS",
    "TRAINING_INDEX",
    "ConstraintArguments",
    "GuardArguments",
    "RecipeArguments",
    "RecipeConfig",
    "ShapingArguments",
    "config_classes",
    "load_config",
    "resolve_recipe",
    "shipped_recipes",
]

logger = logging.getLogger(__name__)


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

    check_choice("trainer", trainer, TRAINERS)
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
