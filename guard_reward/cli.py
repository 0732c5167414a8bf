"""The ``guard-reward`` command: ``moderate`` (offline dataset annotation), ``demo``, and the subcommands that
other modules register (``plot``, ``train``, ``bench``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

#: Modules that add their own subcommand: each has ``add_parser(subparsers)`` setting ``func`` on its parser.
PLUGIN_MODULES: tuple[str, ...] = ("guard_reward.cli_train",)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guard-reward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_moderate(sub)
    _add_demo(sub)
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="moderate the bundled example file with a tiny locally built guard")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import json
    from importlib import resources

    from guard_reward.annotate import annotate
    from guard_reward.guards.gen import GenGuard
    from guard_reward.tiny.gen_training import build_trained_tiny_gen

    args.out.mkdir(parents=True, exist_ok=True)
    guard_dir = args.out / "tiny-gen-guard"
    if not (guard_dir / "model.safetensors").exists():
        logging.getLogger(__name__).info(
            "building and training a tiny Qwen3Guard-Gen stand-in in %s", guard_dir
        )
        build_trained_tiny_gen(guard_dir)
    examples = Path(str(resources.files("guard_reward") / "data" / "moderation_examples.jsonl"))
    output = args.out / "moderation.jsonl"
    output.unlink(missing_ok=True)
    annotate(GenGuard.from_pretrained(guard_dir), examples, output, decode=True)
    inputs = examples.read_text().splitlines()
    print(f"\n{'level':<14}{'P(unsafe)':>10}  {'refusal':<8}{'categories':<32}text")
    for line in output.read_text().splitlines():
        row = json.loads(line)
        rec = json.loads(inputs[row["line"] - 1])
        text = rec.get("response", rec.get("prompt", ""))
        print(
            f"{row.get('level')!s:<14}{row['probs']['Unsafe']:>10.3f}  {row.get('refusal')!s:<8}"
            f"{', '.join(row.get('categories', [])):<32}{text[:60]}"
        )
    print(f"\nverdicts written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
