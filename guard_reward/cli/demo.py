"""``guard-reward demo``: the safety sandbox end to end (what ``make demo`` runs).

``add_demo_parser(subparsers)`` registers the subcommand and ``run_demo(args) -> int`` runs it;
:func:`add_parser` does the registering for :data:`guard_reward.cli.main.PLUGIN_MODULES`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``guard-reward demo [--out DIR] [--policy P] [--gen-guard G] [--stream-guard S] ...``."""
    parser = subparsers.add_parser(
        "demo",
        help="safety RL end to end in a synthetic sandbox (minutes on a 2-core CPU)",
        description="Pre-train a tiny policy on a made-up language, train tiny Qwen3Guard-Gen/Stream guards "
        "saved in the real formats, run GRPO with scalar and dense guard rewards, a guard-only run without "
        "KL, a helpfulness-only run and a helpfulness run under a safety constraint (Lagrangian λ), and write "
        "report.md, curve PNGs and metric CSVs; each stage's wall and CPU time is printed and reported. "
        "--policy / --gen-guard / --stream-guard run the same pipeline with real checkpoints instead of the "
        "sandbox's own.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per arm (default 24)")
    parser.add_argument(
        "--no-hacking", action="store_true", help="skip the guard-only, no-KL 'what can go wrong' arm"
    )
    parser.add_argument(
        "--fixed-lambda",
        action="store_true",
        help="also run the constraint with λ held fixed too low and too high (two more arms)",
    )
    parser.add_argument(
        "--no-constraint", action="store_true", help="skip the helpfulness-only and lagrangian arms"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for stages that run side by side (default: 2 on a machine with 2+ cores; 1 = serial)",
    )
    parser.add_argument(
        "--policy", default=None, help="policy checkpoint (folder or hub id) instead of the sandbox's"
    )
    parser.add_argument(
        "--gen-guard",
        "--guard",
        dest="gen_guard",
        default=None,
        help="Qwen3Guard-Gen checkpoint instead of the sandbox's",
    )
    parser.add_argument(
        "--stream-guard", default=None, help="Qwen3Guard-Stream checkpoint instead of the sandbox's"
    )
    parser.add_argument(
        "--heldout-judge",
        default=None,
        help="Qwen3Guard-Gen checkpoint for the held-out evaluation instead of the sandbox's second judge",
    )
    parser.add_argument(
        "--no-heldout-judge", action="store_true", help="skip the held-out judge's evaluation and alarms"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny models)"
    )
    parser.add_argument(
        "--device", default="cpu", help="device for the guards and GRPO (e.g. cuda, with real checkpoints)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-sized run (smoke test, not meaningful)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    parser.add_argument(
        "--red-team",
        action="store_true",
        help="instead of the default arms: a defender trained with an attacker in the loop against the scalar "
        "arm, on held-out attacks (writes OUT/red_team/red_team.md; about 2-3x the default demo's time)",
    )
    parser.set_defaults(func=run_demo)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``demo`` (the ``guard_reward.cli`` plugin hook)."""
    add_demo_parser(subparsers)


def config_from_args(args: argparse.Namespace):
    """The :class:`~guard_reward.sandbox.demo.DemoConfig` the arguments describe."""
    from guard_reward.sandbox.demo import DemoConfig

    config = DemoConfig.small(args.out) if args.quick else DemoConfig(output_dir=str(args.out))
    skip = {"guard_only"} if args.no_hacking else set()
    if args.no_constraint:
        skip |= {"helpful", "lagrangian"}
    arms = tuple(a for a in config.arms if a not in skip)
    if args.fixed_lambda:
        arms += ("fixed_low", "fixed_high")
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    arm = config.arm if args.steps is None else replace(config.arm, steps=args.steps)
    return replace(
        config,
        seed=args.seed,
        arms=arms,
        arm=arm,
        policy=args.policy,
        gen_guard=args.gen_guard,
        stream_guard=args.stream_guard,
        heldout_judge=args.heldout_judge,
        heldout_judge_prompts=0 if args.no_heldout_judge else config.heldout_judge_prompts,
        threads=args.threads,
        device=args.device,
        progress=config.progress and not args.no_progress,
        workers=config.workers if args.workers is None else args.workers,
    )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; prints where the report is."""
    import warnings

    from transformers.utils import logging as hf_logging

    from guard_reward.sandbox.demo import run_demo as run

    # transformers' own chatter (deprecation notices, sharding notes) would bury the demo's progress lines.
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    for noisy in ("httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.red_team:
        return _run_red_team(args)
    result = run(config_from_args(args))
    cpu = result.world.cpu_seconds
    for stage, wall in result.seconds.items():  # the command's output: each stage's time, then where to look
        cpu_s = f", CPU {cpu[stage]:.0f} s" if stage in cpu else ""
        print(f"time: {stage}: wall {wall:.0f} s{cpu_s}")
    print(f"report: {result.report_path}")
    return 0


def _run_red_team(args: argparse.Namespace) -> int:
    """``--red-team``: the self-play arm against the scalar arm (:mod:`guard_reward.sandbox.red_team`)."""
    from guard_reward.sandbox.red_team import RedTeamConfig, run_red_team

    out = str(args.out / "red_team")
    config = RedTeamConfig.small(out) if args.quick else RedTeamConfig(output_dir=out)
    demo = replace(
        config.demo,
        output_dir=out,
        seed=args.seed,
        threads=args.threads,
        progress=config.demo.progress and not args.no_progress,
        workers=config.demo.workers if args.workers is None else args.workers,
    )
    result = run_red_team(replace(config, demo=demo))
    for stage, wall in result.seconds.items():
        print(f"time: {stage}: wall {wall:.0f} s")
    print(f"report: {result.report_path}")
    return 0
