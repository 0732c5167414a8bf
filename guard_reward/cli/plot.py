"""``guard-reward plot RUN_DIR``: redraw a training run's safety curves from what the run left on disk.

:func:`add_plot_parser` registers the subcommand and sets ``func`` to :func:`run_plot`; :func:`add_parser` is
the hook :data:`guard_reward.cli.main.PLUGIN_MODULES` calls.
"""

from __future__ import annotations

import argparse
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

    out = args.output
    if out is not None and out.is_dir():
        raise IsADirectoryError(f"--output {out} is a folder; give the PNG file's path")
    blocking = next((p for p in (out.parents if out else ()) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # saving would say only "[Errno 17] File exists"
        raise NotADirectoryError(f"--output {out} cannot be made: {blocking} is a file, not a folder")
    path = plot_run(args.run_dir, out)
    print(path)  # the CLI's output: where the figure went
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``plot`` (the hook :data:`guard_reward.cli.main.PLUGIN_MODULES` calls)."""
    add_plot_parser(subparsers)
