"""The recipe behind ``guard-reward train --config configs/….yaml``: GRPO, RLOO or PPO with guard rewards.

It wires what the rest of the library provides, and nothing else: the prompts (any dataset with a prompt
column), the scalar guard reward (``SafetyReward`` or ``HybridSafetyReward`` on Qwen3Guard-Gen), the optional
dense penalty (``TokenSafetyPenalty`` on Qwen3Guard-Stream: per-token advantages with ``DenseGRPOTrainer``,
folded into a scalar for RLOO, per-token rewards with ``GuardPPOTrainer``), ``SafetyCurvesCallback``, and
TRL's trainer. After training it saves the model, ``trainer_state.json`` and ``safety_curves.png`` in
``output_dir``.

Guards are passed to the rewards as checkpoint references, so each training process loads its own copy on its
own device (and the rewards stay picklable); :func:`build_trainer` loads them all before the trainer is built, so
a wrong path fails before the first step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guard_reward.recipes.config import RecipeConfig, load_config

logger = logging.getLogger(__name__)

_DATA_FILES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompts(cfg: RecipeConfig) -> Any:
    """The training prompts as a ``datasets.Dataset`` with a ``prompt`` column TRL understands.

    ``dataset_name`` may be a hub id, a ``.json``/``.jsonl``/``.csv``/``.parquet`` file or a folder saved
    with ``save_to_disk``. String prompts become one user message (plus ``system_prompt``) unless
    ``dataset_conversational`` is false; every other column is kept (rewards receive them as keyword
    arguments).
    """
    from datasets import Dataset, load_dataset, load_from_disk

    from guard_reward.guards.common import hub_errors

    name, script, recipe = cfg.script.dataset_name, cfg.script, cfg.recipe
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in _DATA_FILES:
            raise ValueError(f"dataset file {name} must end with one of {', '.join(_DATA_FILES)}")
        data = load_dataset(_DATA_FILES[path.suffix], data_files=str(path), split="train")
    elif path.is_dir() and (path / "dataset_info.json").exists():
        data = load_from_disk(str(path))
    elif path.exists() or name.startswith(("./", "../", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"dataset_name {name}: no such data file or saved dataset folder (a file ends with "
            f"{', '.join(_DATA_FILES)}; a folder holds dataset_info.json from save_to_disk)"
        )
    else:
        with hub_errors(name, "dataset (dataset_name)"):
            data = load_dataset(name, script.dataset_config, split=script.dataset_train_split)
    if not isinstance(data, Dataset):
        raise TypeError(f"dataset {name} did not load as one split (got {type(data).__name__})")
    column = recipe.dataset_prompt_column
    if column not in data.column_names:
        raise KeyError(
            f"dataset {name} has no column {column!r}; its columns: {', '.join(data.column_names)}"
        )
    if recipe.dataset_max_samples is not None:
        data = data.select(range(min(recipe.dataset_max_samples, len(data))))

    def to_prompt(example: dict[str, Any]) -> dict[str, Any]:
        prompt = example[column]
        if isinstance(prompt, str) and recipe.dataset_conversational:
            prompt = [{"role": "user", "content": prompt}]
        if recipe.system_prompt and isinstance(prompt, list):
            prompt = [{"role": "system", "content": recipe.system_prompt}, *prompt]
        return {"prompt": prompt}

    remove = [column] if column != "prompt" else []
    return data.map(to_prompt, remove_columns=remove)


def _guard_kwargs(cfg: RecipeConfig) -> dict[str, Any]:
    return {"device": cfg.guard.guard_device, "dtype": cfg.guard.guard_dtype}


def build_rewards(cfg: RecipeConfig) -> tuple[list[Any], list[Any]]:
    """``(reward_funcs, dense_rewards)`` for the recipe."""
    from guard_reward.rewards import HybridSafetyReward, SafetyReward

    g, s = cfg.guard, cfg.shaping
    reward_funcs: list[Any] = []
    dense: list[Any] = []
    if g.guard_reward == "safety":
        reward_funcs.append(
            SafetyReward(
                g.guard_gen,
                mode=g.guard_mode,
                controversial=g.guard_controversial,
                safe_value=g.guard_safe_value,
                unsafe_value=g.guard_unsafe_value,
                category_weights=g.guard_category_weights,  # type: ignore[arg-type]
                refusal=g.guard_refusal,
                benign_refusal_value=g.guard_benign_refusal_value,
                harmful_refusal_value=g.guard_harmful_refusal_value,
                harmful_column=g.guard_harmful_column,
                thinking=g.guard_thinking,
                failure_value=g.guard_failure_value,
                metric_prefix=g.guard_metric_prefix,
                guard_kwargs={**_guard_kwargs(cfg), "token_budget": g.guard_token_budget},
            )
        )
    elif g.guard_reward == "hybrid":
        from guard_reward.rewards.helpfulness import load_reward_function

        reward_funcs.append(
            HybridSafetyReward(
                g.guard_gen,
                load_reward_function(g.guard_helpfulness),  # type: ignore[arg-type]
                unsafe_value=g.guard_hybrid_unsafe_value,
                refusal_value=g.guard_hybrid_refusal_value,
                controversial=g.guard_controversial,  # type: ignore[arg-type]
                thinking=g.guard_thinking,
                failure_value=g.guard_failure_value,
                metric_prefix=g.guard_metric_prefix,
                guard_kwargs={**_guard_kwargs(cfg), "token_budget": g.guard_token_budget},
            )
        )
    if s.shaping_mode is not None:
        from guard_reward.rewards import SummedTokenReward, TokenSafetyPenalty

        penalty = TokenSafetyPenalty(
            g.guard_stream,
            shaping=s.shaping_mode,
            hard=s.shaping_hard,
            coef=s.shaping_coef,
            controversial=s.shaping_controversial,
            threshold=s.shaping_threshold,
            clip=s.shaping_clip,
            metric_prefix=g.guard_metric_prefix,
            guard_kwargs=_guard_kwargs(cfg),
        )
        if s.shaping_fold:
            reward_funcs.append(SummedTokenReward(penalty))
        if cfg.recipe.trainer in ("grpo", "ppo"):
            dense.append(penalty)
    if cfg.constraint.enabled and cfg.constraint.constraint_reward:
        from guard_reward.rewards.helpfulness import load_reward_function

        reward_funcs.append(load_reward_function(cfg.constraint.constraint_reward))
    return reward_funcs, dense


def build_constraint(cfg: RecipeConfig) -> Any:
    """The recipe's :class:`~guard_reward.shaping.constraint.Constraint` (Gen cost, optional Stream per-token cost)."""
    from guard_reward.rewards.cost import SafetyCost
    from guard_reward.shaping.constraint import Constraint

    c, g = cfg.constraint, cfg.guard
    cost = SafetyCost(
        g.guard_gen,
        mode=c.constraint_mode,
        controversial=c.constraint_controversial,
        category_weights=c.constraint_category_weights,  # type: ignore[arg-type]
        thinking=g.guard_thinking,
        metric_prefix=g.guard_metric_prefix,
        guard_kwargs={**_guard_kwargs(cfg), "token_budget": g.guard_token_budget},
    )
    dense = None
    if c.constraint_dense:
        from guard_reward.rewards import TokenSafetyPenalty

        dense = TokenSafetyPenalty(
            g.guard_stream,
            controversial=c.constraint_controversial,
            name="guard_token_cost",
            metric_prefix=g.guard_metric_prefix,
            guard_kwargs=_guard_kwargs(cfg),
        )
    return Constraint(
        cost, c.controller_config(cost.max_cost), dense_cost=dense, dense_coef=c.constraint_dense_coef
    )


def load_policy(cfg: RecipeConfig) -> tuple[Any, Any]:
    """The policy model and its tokenizer (a local folder never touches the network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard_reward.guards.common import hub_errors, hub_kwargs

    m = cfg.model
    kw = hub_kwargs(m.model_name_or_path, revision=m.model_revision)  # "no such folder" for a missing path
    with hub_errors(m.model_name_or_path, "policy (model_name_or_path)"):
        tokenizer = AutoTokenizer.from_pretrained(m.model_name_or_path, **kw)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if m.attn_implementation is not None:
            kw["attn_implementation"] = m.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(m.model_name_or_path, dtype=m.dtype, **kw)
    return model, tokenizer


def load_reward_models(reward_funcs: Sequence[Any], dense: Sequence[Any] = ()) -> int:
    """Load every guard and reward model the rewards refer to, now rather than at their first call, so that a
    wrong path or an unreachable hub fails before the first training step (the rewards load lazily, which
    on a real model means minutes into the run). Returns how many models were loaded."""
    from guard_reward.guards.common import hub_errors
    from guard_reward.rewards.helpfulness import RewardModelScore
    from guard_reward.rewards.inputs import GuardHandle

    loaded, seen = 0, set()
    pending = [*reward_funcs, *dense]
    while pending:
        func = pending.pop()
        if id(func) in seen:
            continue
        seen.add(id(func))
        for attr in ("guard", "stream"):
            handle = getattr(func, attr, None)
            if isinstance(handle, GuardHandle) and handle.source is not None and handle._guard is None:
                with hub_errors(handle.source, f"guard ({getattr(func, '__name__', attr)})"):
                    handle.get()
                loaded += 1
        for model, what in (
            (getattr(func, "helpfulness", None), "helpfulness reward model (guard_helpfulness)"),
            (func, "reward model (constraint_reward)"),
        ):
            if isinstance(model, RewardModelScore) and model._model is None:
                with hub_errors(model.name_or_path, what):
                    model._load()
                loaded += 1
        inner = getattr(func, "dense", None)  # SummedTokenReward folds a per-token penalty
        if inner is not None:
            pending.append(inner)
    return loaded


def build_trainer(
    cfg: RecipeConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    train_dataset: Any = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The configured trainer (``DenseGRPOTrainer``, ``RLOOTrainer`` or ``GuardPPOTrainer``), untrained;
    ``callbacks`` are added after the safety-curves callback."""
    from trl import RLOOTrainer, get_peft_config

    from guard_reward.integrations.trl.callbacks import SafetyCurvesCallback
    from guard_reward.integrations.trl.grpo import DenseGRPOTrainer

    if model is None or tokenizer is None:
        model, tokenizer = load_policy(cfg)
    if train_dataset is None:
        train_dataset = load_prompts(cfg)
    reward_funcs, dense = build_rewards(cfg)
    constraint = build_constraint(cfg) if cfg.constraint.enabled else None
    costs = [] if constraint is None else [constraint.cost]
    if constraint is not None and constraint.dense_cost is not None:
        costs.append(constraint.dense_cost)
    load_reward_models([*reward_funcs, *costs], dense)
    if float(cfg.training.beta) == 0.0:
        logger.warning("beta=0: no KL term anchors the policy; guard rewards are then easy to game")
    callbacks = [
        SafetyCurvesCallback(plot_every=cfg.recipe.curves_plot_every, prefix=cfg.guard.guard_metric_prefix),
        *callbacks,
    ]
    common = dict(
        model=model,
        reward_funcs=reward_funcs,
        args=cfg.training,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=get_peft_config(cfg.model),
    )
    if constraint is not None:  # safety as a constraint: the constrained forms of the same trainers
        from guard_reward.integrations.trl.constraint import ConstrainedGRPOTrainer, ConstrainedPPOTrainer

        if cfg.recipe.trainer == "ppo":
            return ConstrainedPPOTrainer(
                **common,
                dense_rewards=dense,
                dense_coef=cfg.shaping.shaping_dense_coef,
                constraint=constraint,
            )
        return ConstrainedGRPOTrainer(
            **common,
            dense_rewards=dense,
            dense_coef=cfg.shaping.shaping_dense_coef,
            dense_advantage=cfg.shaping.shaping_dense_advantage,
            constraint=constraint,
        )
    if cfg.recipe.trainer == "grpo":
        return DenseGRPOTrainer(
            **common,
            dense_rewards=dense,
            dense_coef=cfg.shaping.shaping_dense_coef,
            dense_advantage=cfg.shaping.shaping_dense_advantage,
        )
    if cfg.recipe.trainer == "ppo":
        from guard_reward.integrations.trl.ppo import GuardPPOTrainer

        return GuardPPOTrainer(**common, dense_rewards=dense, dense_coef=cfg.shaping.shaping_dense_coef)
    for func in reward_funcs:  # RLOOTrainer knows nothing of dense rewards; give them the policy tokenizer
        bind = getattr(func, "bind_tokenizer", None)
        if callable(bind):
            bind(tokenizer)
    return RLOOTrainer(**common)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM: ``step`` reached, ``output_dir``, and the newest checkpoint
    saved so far (``None`` when none was), from which ``--resume_from_checkpoint`` continues."""

    def __init__(self, cause: KeyboardInterrupt, step: int, output_dir: str, checkpoint: str | None) -> None:
        super().__init__(str(cause))
        self.cause, self.step, self.output_dir, self.checkpoint = cause, step, output_dir, checkpoint


def train(cfg: RecipeConfig, **build_kwargs: Any) -> Any:
    """Build, train (from ``resume_from_checkpoint`` when set), and save model, state and curves to
    ``output_dir``; returns the trainer.

    Raises:
        TrainingInterrupted: on Ctrl-C (or SIGTERM turned into an interrupt), naming the checkpoint to resume.
    """
    from transformers.trainer_utils import get_last_checkpoint

    trainer = build_trainer(cfg, **build_kwargs)
    try:
        trainer.train(resume_from_checkpoint=cfg.training.resume_from_checkpoint)
    except KeyboardInterrupt as exc:
        out = cfg.training.output_dir
        last = get_last_checkpoint(out) if os.path.isdir(out) else None
        raise TrainingInterrupted(exc, int(trainer.state.global_step), out, last) from exc
    trainer.save_model()
    trainer.save_state()
    logger.info("run saved to %s", os.path.abspath(cfg.training.output_dir))
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m guard_reward.recipes.train --config FILE [--option value ...]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in args:
        raise SystemExit("usage: train --config RECIPE.yaml [--smoke] [--option value ...]")
    smoke = "--smoke" in args
    args = [a for a in args if a != "--smoke"]
    i = args.index("--config")
    path = args[i + 1]
    overrides = args[:i] + args[i + 2 :]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(load_config(path, overrides, smoke=smoke))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
