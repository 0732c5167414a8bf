"""The ``guard-reward`` command: :func:`main` and its parser; each subcommand lives in a module of its own
(:data:`PLUGIN_MODULES`): ``moderate`` (offline dataset annotation), ``demo`` (the safety sandbox),
``train`` and ``plot`` (recipes and their curves), ``serve`` (the guards as a service) and ``eval``
(held-out evaluation).

A failing command prints one ``error: …`` line and exits non-zero; ``--debug`` (anywhere on the command line)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from guard_reward.cli.args import EXIT_FAILED, exit_status, missing_extra_message, signal_name

#: The subcommands' modules, in the order ``--help`` lists them: each has ``add_parser(subparsers)``, which
#: registers the subcommand and sets ``func`` (its runner) on the parser.
PLUGIN_MODULES: tuple[str, ...] = (
    "guard_reward.cli.moderate",
    "guard_reward.cli.demo",
    "guard_reward.cli.train",
    "guard_reward.cli.plot",
    "guard_reward.cli.serve",
    "guard_reward.cli.eval",
)

DESCRIPTION = (
    "Qwen3Guard safety models as RL rewards. Subcommands: moderate (label a JSONL dataset with "
    "Qwen3Guard-Gen verdicts), train (GRPO, RLOO or PPO from a recipe), plot (redraw a run's safety curves), "
    "eval (held-out safety evaluation of a policy), serve (the guards as an HTTP service on Ray Serve), "
    "demo (safety RL end to end in a synthetic sandbox). A failing command prints one 'error: ...' line and "
    "exits with a non-zero status; add --debug for the full traceback."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``guard-reward`` on ``argv`` (default: the process' arguments); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere, also after `train --config`, whose options swallow the rest of the line
    debug = "--debug" in args_list
    args_list = [a for a in args_list if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"error: interrupted by {signal_name(exc)}", file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:
        if debug:
            raise
        missing = (
            missing_extra_message(exc, f"guard-reward {args.command}")
            if isinstance(exc, ImportError)
            else None
        )
        print(f"error: {missing or error_message(exc)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


def error_message(exc: BaseException) -> str:
    """An exception as one line: its own message (a ``KeyError``'s without the quotes), or its type."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def build_parser() -> argparse.ArgumentParser:
    """The ``guard-reward`` parser with every subcommand of :data:`PLUGIN_MODULES` registered."""
    parser = argparse.ArgumentParser(prog="guard-reward", description=DESCRIPTION)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs (accepted anywhere)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in PLUGIN_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser
