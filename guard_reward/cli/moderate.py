"""``guard-reward moderate``: label a JSONL dataset with Qwen3Guard-Gen verdicts, resumably.

The command line only: the work (reading records, judging them in chunks, the resumable output) is
:func:`guard_reward.evaluation.annotate.annotate`. Everything that can be checked without the model (the
input, the output and its sidecar, the guard path, the device) is checked before the guard loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from guard_reward.cli.args import EXIT_FAILED, exit_status, positive_int, signal_name, sigterm_as_interrupt


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``guard-reward moderate`` (its runner is :func:`run_moderate`)."""
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
    p.add_argument(
        "--guard",
        required=True,
        help="Qwen3Guard-Gen hub id or local checkpoint folder, or a served one: openai+http://HOST:PORT/v1?model=NAME",
    )
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
    p.set_defaults(func=run_moderate)


def run_moderate(args: argparse.Namespace) -> int:
    """Check what needs no model, load the guard, annotate; the exit status (0, 1, 2 or 128 + signal)."""
    from guard_reward.evaluation.annotate import (
        AnnotationInterrupted,
        annotate,
        prepare_output,
        run_meta,
        run_settings,
    )
    from guard_reward.guards.common import checkpoint_source, resolve_device
    from guard_reward.guards.gen_spec import is_server_spec, load_gen_guard

    if not args.input.is_file():
        print(f"error: input file {args.input} does not exist", file=sys.stderr)
        return 2
    # everything that can be checked without the model is checked before it loads
    source = "server" if is_server_spec(args.guard) else checkpoint_source(args.guard)
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

    guard = load_gen_guard(
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
