"""``guard-reward train``: run a GRPO, RLOO or PPO recipe (or its ``--smoke`` check on tiny stand-ins).

:func:`add_train_parser` registers the subcommand and sets ``func`` to :func:`run_train`, so the main CLI only
calls ``args.func(args)``; :func:`add_parser` is the hook :data:`guard_reward.cli.main.PLUGIN_MODULES` calls.
"""

from __future__ import annotations

import argparse
import sys


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``guard-reward train --config RECIPE [--smoke] [--option value ...]``: run a training recipe."""
    parser = subparsers.add_parser(
        "train",
        help="train a policy with guard rewards (GRPO, RLOO or PPO) from a recipe",
        description="Run a GRPO, RLOO or PPO recipe: a YAML file, or the name of a shipped recipe ("
        "grpo_gen_safety, grpo_stream_dense, grpo_hybrid, rloo_gen_safety, ppo_stream_dense, ...). Any "
        "recipe option can be overridden after the config, e.g. --output_dir runs/x --max_steps 10. "
        "--smoke runs the recipe on tiny stand-ins of the policy, guards and reward models, offline, on the "
        "CPU in float32, for two steps: a check of the set-up before the real run (the recipe as it would "
        "really run is checked first). A recipe's keys are the fields of guard_reward.recipes.config's "
        "RecipeArguments, GuardArguments (guard_*), ShapingArguments (shaping_*) and ConstraintArguments "
        "(constraint_*), and of TRL's ScriptArguments (dataset_*), ModelConfig and GRPOConfig, RLOOConfig or "
        "GuardPPOConfig (by the trainer key); an unknown key or a value of the wrong type is refused before "
        "anything loads.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny stand-ins, CPU, float32, two steps, offline (also accepted after --config)",
    )
    # everything after --config belongs to the recipe (its options are the dataclass fields, which this
    # parser does not know), so the option swallows the rest of the command line
    parser.add_argument(
        "--config",
        required=True,
        nargs=argparse.REMAINDER,
        metavar="RECIPE [--option value ...]",
        help="recipe YAML or shipped recipe name, then any recipe options overriding it",
    )
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from guard_reward.cli.args import exit_status, signal_name, sigterm_as_interrupt
    from guard_reward.recipes.config import load_config
    from guard_reward.recipes.train import TrainingInterrupted, train

    if not args.config:
        raise SystemExit("guard-reward train: --config needs a recipe YAML file or a shipped recipe name")
    path, *overrides = args.config
    smoke = args.smoke or "--smoke" in overrides
    overrides = [a for a in overrides if a not in ("--", "--smoke")]
    cfg = load_config(path, overrides, smoke=smoke)
    try:
        with sigterm_as_interrupt():
            train(cfg)
    except TrainingInterrupted as exc:
        if exc.checkpoint is None:
            saved = "no checkpoint was saved yet (save_steps sets how often one is)"
        else:
            saved = (
                f"the newest checkpoint is {exc.checkpoint}: resume with the same command plus "
                f"--resume_from_checkpoint {exc.checkpoint}"
            )
        print(
            f"interrupted by {signal_name(exc.cause)} at step {exc.step} (output_dir {exc.output_dir}); {saved}",
            file=sys.stderr,
        )
        return exit_status(exc.cause)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` (the hook :data:`guard_reward.cli.main.PLUGIN_MODULES` calls)."""
    add_train_parser(subparsers)
