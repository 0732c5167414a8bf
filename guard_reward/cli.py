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
from collections.abc import Sequence
from pathlib import Path

#: Modules that add their own subcommand: each has ``add_parser(subparsers)`` setting ``func`` on its parser.
PLUGIN_MODULES: tuple[str, ...] = ("guard_reward.sandbox.cli", "guard_reward.cli_train")
PLUGIN_MODULES += ("guard_reward.cli_serve",)
PLUGIN_MODULES += ("guard_reward.cli_eval",)

DESCRIPTION = (
    "Qwen3Guard safety models as RL rewards. Subcommands: moderate (label a JSONL dataset with "
    "Qwen3Guard-Gen verdicts), train (GRPO, RLOO or PPO from a recipe), plot (redraw a run's safety curves), "
    "demo (safety RL end to end in a synthetic sandbox). A failing command prints one 'error: ...' line and "
    "exits with a non-zero status; add --debug for the full traceback."
)
#: Exit status of a command that failed (argparse uses 2 for a bad command line).
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


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
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        print(f"error: {error_message(exc)} (--debug shows the traceback)", file=sys.stderr)
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
        "settings: an interrupted run resumes with the same command; other settings, another input, or an "
        "existing file this command did not write are refused.",
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
    p.add_argument("--token-budget", type=int, default=16384, help="padded tokens per micro-batch")
    p.add_argument("--chunk-size", type=int, default=64, help="records judged and flushed together")
    p.set_defaults(func=_run_moderate)


def _run_moderate(args: argparse.Namespace) -> int:
    from guard_reward.annotate import annotate, prepare_output, run_meta
    from guard_reward.guards.common import checkpoint_source, resolve_device

    if not args.input.is_file():
        print(f"error: input file {args.input} does not exist", file=sys.stderr)
        return 2
    # everything that can be checked without the model is checked before it loads
    source = checkpoint_source(args.guard)
    resolve_device(args.device)
    guard_id = os.path.abspath(os.path.expanduser(args.guard)) if source == "local" else args.guard
    settings = {"guard": guard_id, "thinking": args.thinking, "dtype": args.dtype}
    meta = run_meta(args.input, {**settings, "decode": not args.no_decode})
    prepare_output(args.input, args.output, meta)

    from guard_reward.guards.gen import GenGuard

    guard = GenGuard.from_pretrained(
        args.guard,
        device=args.device,
        dtype=args.dtype,
        token_budget=args.token_budget,
        thinking=args.thinking,
    )
    counts = annotate(
        guard,
        args.input,
        args.output,
        decode=not args.no_decode,
        chunk_size=args.chunk_size,
        settings=settings,
    )
    print(
        f"{counts['written']} written, {counts['skipped_done']} already done, {counts['errors']} errors, "
        f"{counts['unparsed']} unparsed verdicts, {counts['truncated']} truncated, {counts['blank']} blank "
        f"lines skipped -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
