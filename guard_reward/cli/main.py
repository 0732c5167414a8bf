"""The ``guard-reward`` command: ``moderate`` (offline dataset annotation) and the subcommands other modules
register: ``demo`` (the safety sandbox), ``train`` and ``plot``.

A failing command prints one ``error: …`` line and exits non-zero; ``--debug`` (anywhere on the command line)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from guard_reward.cli.args import (
    exit_status,
    missing_extra_message,
    positive_int,
    signal_name,
    sigterm_as_interrupt,
)

#: Modules that add their own subcommand: each has ``add_parser(subparsers)`` setting ``func`` on its parser.
PLUGIN_MODULES: tuple[str, ...] = ("guard_reward.cli.demo", "guard_reward.cli.train")
PLUGIN_MODULES += ("guard_reward.cli.serve",)
PLUGIN_MODULES += ("guard_reward.cli.eval",)

DESCRIPTION = (
    "Qwen3Guard safety models as RL rewards. Subcommands: moderate (label a JSONL dataset with "
    "Qwen3Guard-Gen verdicts), train (GRPO, RLOO or PPO from a recipe), plot (redraw a run's safety curves), "
    "demo (safety RL end to end in a synthetic sandbox). A failing command prints one 'error: ...' line and "
    "exits with a non-zero status; add --debug for the full traceback."
)
#: Exit status of a command that failed (argparse uses 2 for a bad command line).
EXIT_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
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
    parser = argparse.ArgumentParser(prog="guard-reward", description=DESCRIPTION)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs (accepted anywhere)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_moderate(sub)
    for name in PLUGIN_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _add_moderate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moderate",
        help="label a JSONL dataset with Qwen3Guard-Gen verdicts (resumable)",
        description="Write one Qwen3Guard-Gen verdict per input record, in order. A line that cannot be read "
        "or judged is written with an 'error' naming its line. OUTPUT.meta.json records the input and "
        "settings (batch sizes included): an interrupted run (Ctrl-C, SIGTERM, even kill -9) resumes with the "
        "same command; other settings, another input, or an existing file this command did not write are "
        "refused, naming what differs.",
    )
    p.add_argument("input", type=Path, help="JSONL records: 'messages', or 'prompt' with optional 'response'")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="JSONL verdicts (created, or resumed if it is ours)"
    )
    p.add_argument("--guard", required=True, help="Qwen3Guard-Gen hub id or local checkpoint folder")
    p.add_argument(
        "--no-decode",
        action="store_true",
        help="label probabilities only (categories, refusal and raw text are null)",
    )
    p.add_argument("--thinking", default="answer", choices=("answer", "separate", "whole"))
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: a GPU if present)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--token-budget",
        type=positive_int("--token-budget"),
        default=16384,
        help="padded tokens per micro-batch (default 16384)",
    )
    p.add_argument(
        "--chunk-size",
        type=positive_int("--chunk-size"),
        default=64,
        help="records judged and flushed together (default 64)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (counts are still printed)")
    p.set_defaults(func=_run_moderate)


def _run_moderate(args: argparse.Namespace) -> int:
    from guard_reward.evaluation.annotate import (
        AnnotationInterrupted,
        annotate,
        prepare_output,
        run_meta,
        run_settings,
    )
    from guard_reward.guards.common import checkpoint_source, resolve_device

    if not args.input.is_file():
        print(f"error: input file {args.input} does not exist", file=sys.stderr)
        return 2
    # everything that can be checked without the model is checked before it loads
    source = checkpoint_source(args.guard)
    resolve_device(args.device)
    guard_id = os.path.abspath(os.path.expanduser(args.guard)) if source == "local" else args.guard
    settings = {
        "guard": guard_id,
        "thinking": args.thinking,
        "dtype": args.dtype,
        "token_budget": args.token_budget,
    }
    decode = not args.no_decode
    meta = run_meta(args.input, run_settings(settings, decode=decode, chunk_size=args.chunk_size))
    resumed = prepare_output(args.input, args.output, meta)

    from guard_reward.guards.gen import GenGuard

    guard = GenGuard.from_pretrained(
        args.guard,
        device=args.device,
        dtype=args.dtype,
        token_budget=args.token_budget,
        thinking=args.thinking,
    )
    try:
        with sigterm_as_interrupt():
            counts = annotate(
                guard,
                args.input,
                args.output,
                decode=decode,
                chunk_size=args.chunk_size,
                settings=settings,
                progress=not args.no_progress,
            )
    except AnnotationInterrupted as exc:
        print(
            f"interrupted by {signal_name(exc.cause)}: {_summary(exc.counts)} -> {args.output} (every row "
            "written is complete). Run the same command again to resume from there.",
            file=sys.stderr,
        )
        return exit_status(exc.cause)
    print(f"{_summary(counts)} -> {args.output}{' (resumed)' if resumed else ''}")
    judged = counts["written"] - counts["errors"]
    if counts["written"] and not judged:
        print(
            f"error: no record could be judged ({counts['errors']} errors); see {args.output}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _summary(counts: Mapping[str, int]) -> str:
    """The counts of a moderation run as one line; the kinds of unlabelled verdicts only when they occurred."""
    parts = [
        f"{counts['written']} written",
        f"{counts['skipped_done']} already done",
        f"{counts['errors']} errors",
    ]
    for key, label in (
        ("unparsed", "unparsed verdicts"),
        ("empty", "empty answers (not judged)"),
        ("no_answer", "reasoning without an answer"),
        ("failed", "other failed verdicts"),
        ("truncated", "truncated"),
        ("blank", "blank lines skipped"),
    ):
        if counts.get(key) or key in ("unparsed", "truncated"):
            parts.append(f"{counts.get(key, 0)} {label}")
    return ", ".join(parts)
