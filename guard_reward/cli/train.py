"""``guard-reward train`` and ``guard-reward plot`` subcommands (wired into :mod:`guard_reward.cli`).

Each subcommand is a pair: ``add_*_parser(subparsers)`` registers it, ``run_*(args) -> int`` runs it; the
parser sets ``func`` to its runner, so the main CLI only has to call ``args.func(args)``. :func:`add_parser`
registers both (list this module in ``guard_reward.cli.PLUGIN_MODULES``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``guard-reward plot RUN_DIR [--output PNG]``: redraw a run's safety curves."""
    parser = subparsers.add_parser(
        "plot",
        help="redraw safety_curves.png from a run's trainer_state.json",
        description="Redraw the safety curves of a finished or interrupted run from "
        "RUN_DIR/trainer_state.json (or the newest checkpoint's, or safety_curves.csv).",
    )
    parser.add_argument("run_dir", type=Path, help="the run's output_dir")
    parser.add_argument(
        "--output", type=Path, default=None, help="PNG path (default RUN_DIR/safety_curves.png)"
    )
    parser.set_defaults(func=run_plot)
    return parser


def run_plot(args: argparse.Namespace) -> int:
    from guard_reward.evaluation.plots import plot_run

    path = plot_run(args.run_dir, args.output)
    print(path)  # the CLI's output: where the figure went
    return 0


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
    """Register both subcommands (the hook :data:`guard_reward.cli.PLUGIN_MODULES` calls)."""
    add_train_parser(subparsers)
    add_plot_parser(subparsers)
