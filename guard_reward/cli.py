"""The ``guard-reward`` command: ``moderate`` (offline dataset annotation) and the subcommands other modules
register: ``demo`` (the safety sandbox), ``train`` and ``plot``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

#: Modules that add their own subcommand: each has ``add_parser(subparsers)`` setting ``func`` on its parser.
PLUGIN_MODULES: tuple[str, ...] = ("guard_reward.sandbox.cli", "guard_reward.cli_train")
PLUGIN_MODULES += ("guard_reward.cli_serve",)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guard-reward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_moderate(sub)
    for name in PLUGIN_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _add_moderate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("moderate", help="label a JSONL dataset with Qwen3Guard-Gen verdicts (resumable)")
    p.add_argument("input", type=Path, help="JSONL records: 'messages', or 'prompt' with optional 'response'")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL verdicts (appended and resumed)")
    p.add_argument("--guard", required=True, help="Qwen3Guard-Gen hub id or local checkpoint folder")
    p.add_argument(
        "--no-decode", action="store_true", help="label probabilities only (no categories/refusal)"
    )
    p.add_argument("--thinking", default="answer", choices=("answer", "separate", "whole"))
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--token-budget", type=int, default=16384, help="padded tokens per micro-batch")
    p.add_argument("--chunk-size", type=int, default=64, help="records judged and flushed together")
    p.set_defaults(func=_run_moderate)


def _run_moderate(args: argparse.Namespace) -> int:
    from guard_reward.annotate import annotate
    from guard_reward.guards.gen import GenGuard

    if not args.input.exists():
        print(f"error: input file {args.input} does not exist", file=sys.stderr)
        return 2
    guard = GenGuard.from_pretrained(
        args.guard,
        device=args.device,
        dtype=args.dtype,
        token_budget=args.token_budget,
        thinking=args.thinking,
    )
    counts = annotate(guard, args.input, args.output, decode=not args.no_decode, chunk_size=args.chunk_size)
    print(
        f"{counts['written']} written, {counts['skipped_done']} already done, {counts['errors']} errors, "
        f"{counts['unparsed']} unparsed verdicts, {counts['truncated']} truncated -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
