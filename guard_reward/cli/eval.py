"""``guard-reward eval``: held-out safety evaluation of a policy, by judges it was not trained against.

``guard-reward eval --policy P --prompts FILE.jsonl --judge GEN [--judge2 GEN | --stream STREAM | --remote URL]
[--train-guard GEN] [--baseline B] [-n SAMPLES] [-o DIR]`` answers every prompt ``-n`` times, judges each
answer and writes ``DIR/results.jsonl`` (resumable), ``DIR/summary.json``, ``DIR/report.md`` and
``DIR/eval.png``. With ``--baseline B`` both policies are evaluated (``DIR/policy``, ``DIR/baseline``) and
``DIR/comparison.md`` gives each difference with Newcombe's interval, plus the reward-hacking alarms of the
policy against the baseline. ``guard-reward eval --compare DIR1 DIR2`` compares two finished evaluations.

Everything checkable without a model (the prompt file, the output folder, the judge paths) is checked first;
the judges load before the policy generates anything.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out safety evaluation of a policy: unsafe rate, over-refusal, judge agreement (resumable)",
        description="Answer a prompt set with a policy, judge every answer with a held-out Qwen3Guard, and "
        "write results.jsonl, summary.json, report.md and eval.png. Prompt records: 'prompt' or 'messages', "
        "optional 'harmful' (bool) and 'category'. A bundled example set is named 'bundled:sandbox' or "
        "'bundled:english'.",
    )
    p.add_argument("--policy", help="the policy: hub id or local folder")
    p.add_argument("--prompts", help="JSONL prompt set, or bundled:NAME")
    p.add_argument(
        "--judge", help="held-out Qwen3Guard-Gen (hub id, folder, or openai+http://HOST:PORT/v1?model=NAME)"
    )
    second = p.add_mutually_exclusive_group()
    second.add_argument("--judge2", help="a second Qwen3Guard-Gen judge (agreement, disagreement rows)")
    second.add_argument("--stream", help="a Qwen3Guard-Stream as second judge")
    second.add_argument("--remote", help="a served Qwen3Guard-Gen (guard-reward serve URL) as second judge")
    p.add_argument("--train-guard", help="the training reward's Gen guard, judged on the same answers")
    p.add_argument("--baseline", help="a second policy (e.g. before RL) to evaluate and compare against")
    p.add_argument("--reference", help="reference model of the fluency alarm (default: the baseline)")
    p.add_argument("--compare", nargs=2, metavar="DIR", help="compare two finished evaluation folders")
    p.add_argument("-n", "--samples", type=int, default=1, help="answers per prompt")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/eval"), help="output folder")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (default: a GPU if present)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--chunk-size", type=int, default=64, help="answers generated, judged and flushed together"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def _source(name: str) -> str:
    from guard_reward.guards.common import checkpoint_source
    from guard_reward.guards.gen_spec import is_server_spec

    if is_server_spec(name):  # a served Gen (openai+http://…) is recorded as it is
        return name
    return os.path.abspath(os.path.expanduser(name)) if checkpoint_source(name) == "local" else name


def run_eval(args: argparse.Namespace) -> int:
    """``guard-reward eval``: check everything that needs no model, load the judges, evaluate the policy (and
    the baseline, then compare them); or, with ``--compare``, compare two finished evaluations."""
    from guard_reward.evaluation.report import write_comparison

    if args.compare:
        return _compare(args)
    missing = [f"--{k}" for k in ("policy", "prompts", "judge") if not getattr(args, k)]
    if missing:
        raise ValueError(f"eval needs {', '.join(missing)} (or --compare DIR1 DIR2)")
    if args.samples < 1:
        raise ValueError(f"-n/--samples must be >= 1, got {args.samples}")
    from guard_reward.evaluation.answering import GenerationSettings
    from guard_reward.evaluation.checkpoint_eval import check_output_folder, load_policy, prepare
    from guard_reward.evaluation.judges import load_judge
    from guard_reward.guards.common import hub_kwargs, resolve_device

    check_output_folder(args.output)
    prompts_path, prompts, bad = _read_prompts(args.prompts)
    resolve_device(args.device)
    settings = GenerationSettings(
        args.samples,
        args.max_new_tokens,
        args.batch_size,
        not args.greedy,
        args.temperature,
        args.top_p,
        args.seed,
    )
    specs = _judge_specs(args)
    policies = (
        {"policy": args.policy} if not args.baseline else {"policy": args.policy, "baseline": args.baseline}
    )
    reference = args.reference or args.baseline
    for role, name in {**policies, "reference": reference}.items():
        if name:  # a missing folder, or a hub id while the hub is unreachable, fails before any load
            hub_kwargs(name, what=f"--{role} model")
    common = _recorded_settings(args, prompts_path, specs, reference)
    dirs = {k: (args.output / k if args.baseline else args.output) for k in policies}
    metas = {k: {**common, "policy": _source(v)} for k, v in policies.items()}
    for k in policies:  # refuse a foreign or mismatched output before anything loads
        prepare(prompts_path, dirs[k], metas[k])
    judges = {
        k: load_judge(spec, kind, device=args.device, dtype=args.dtype) for k, (kind, spec) in specs.items()
    }
    ref_model = load_policy(reference, args.device, args.dtype)[0] if reference else None
    runs = {}
    for k, name in policies.items():
        role = k if args.baseline else None
        runs[k] = _evaluate_one(
            args, name, prompts, judges, dirs[k], prompts_path, settings, metas[k], ref_model, bad, role
        )
    if args.baseline:
        from guard_reward.evaluation.report import write_report

        alarms = _alarms(runs["baseline"], runs["policy"])
        write_report(runs["policy"], alarms, role="policy")
        out = write_comparison(runs["policy"], runs["baseline"], args.output / "comparison.md")
        print(f"comparison -> {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """``--compare DIR1 DIR2``: the comparison of two finished evaluations."""
    from guard_reward.evaluation.checkpoint_eval import check_output_folder, load_run
    from guard_reward.evaluation.report import write_comparison

    if args.policy or args.baseline:
        raise ValueError("--compare DIR1 DIR2 compares finished evaluations; give it without --policy")
    check_output_folder(args.output, writes="comparison.md")
    a, b = (load_run(d) for d in args.compare)
    out = write_comparison(
        a,
        b,
        args.output / "comparison.md",
        names=(Path(args.compare[0]).name, Path(args.compare[1]).name),
    )
    print(f"comparison -> {out}")
    return 0


def _read_prompts(spec: str) -> tuple[Path, list[Any], list[str]]:
    """The prompt file (``--prompts``, a path or ``bundled:NAME``), its prompts and its skipped lines."""
    from guard_reward.evaluation.prompts import bundled_prompt_set, read_prompt_set

    path = bundled_prompt_set(spec.removeprefix("bundled:")) if spec.startswith("bundled:") else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path} does not exist")
    prompts, bad = read_prompt_set(path)
    for e in bad[:5]:
        logger.warning("skipped %s", e)
    return path, prompts, bad


def _judge_specs(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """``{role: (kind, path or URL)}`` of the judges asked for: ``judge``, then ``judge2`` and ``guard``."""
    specs = {"judge": ("gen", args.judge)}
    if args.judge2 or args.stream or args.remote:
        kind = "gen" if args.judge2 else "stream" if args.stream else "remote"
        specs["judge2"] = (kind, args.judge2 or args.stream or args.remote)
    if args.train_guard:
        specs["guard"] = ("gen", args.train_guard)
    return specs


def _recorded_settings(
    args: argparse.Namespace, prompts_path: Path, specs: dict[str, tuple[str, str]], reference: str | None
) -> dict[str, Any]:
    """What the results' sidecar records (besides the policy): every setting that changes an answer or a
    judgement, so that a resumed file is one configuration's answers."""
    names = {k: (v if kind == "remote" else _source(v)) for k, (kind, v) in specs.items()}
    common = {"prompts": str(prompts_path.resolve()), **{f"{k}_judge": v for k, v in names.items()}}
    common |= {"samples": args.samples, "max_new_tokens": args.max_new_tokens, "do_sample": not args.greedy}
    common |= {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "dtype": args.dtype}
    common |= {"reference": _source(reference) if reference else None}
    # batching changes which answers share a padded batch, hence low-precision logits and samples: recorded,
    # so that a resumed file is one configuration's answers (as moderate records its batching)
    common |= {"batch_size": args.batch_size, "chunk_size": args.chunk_size}
    return common


def _evaluate_one(
    args, name, prompts, judges, out, prompts_path, settings, meta, ref_model, bad, role
) -> Any:
    from guard_reward.evaluation.checkpoint_eval import evaluate, load_policy
    from guard_reward.evaluation.report import write_report

    model, tokenizer = load_policy(name, args.device, args.dtype)
    run = evaluate(model, tokenizer, prompts, judges, out, prompts_path, settings, meta_settings=meta,
                   reference=ref_model, chunk_size=args.chunk_size, progress=not args.no_progress, bad_lines=bad)  # fmt: skip
    report = write_report(run, role=role)
    c = run.counts
    rate = (
        f"{run.answers_written / run.seconds:.2f} answers/s"
        if run.answers_written
        else "nothing new to answer"
    )
    cut = (
        f", {int(c.get('stopped_at_limit', 0))} stopped at --max-new-tokens"
        if c.get("stopped_at_limit_n")
        else ""
    )
    print(
        f"{name}: {int(c.get('answers', 0))} answers ({rate}{cut}), {len(bad)} prompt lines skipped -> {report}"
    )
    return run


def _alarms(baseline: Any, policy: Any) -> dict[str, float]:
    """The alarms of ``policy`` against ``baseline`` (the checker's first call sets the baseline)."""
    from guard_reward.evaluation.alarms import Alarms
    from guard_reward.evaluation.answering import eval_metrics

    checker = Alarms()
    checker.check(0, eval_metrics(baseline.counts, baseline.judges))
    return checker.check(1, eval_metrics(policy.counts, policy.judges))
