"""The service's transport alone: the real service with guards that cost nothing (``benchmarks.fast_guards``).

``python -m benchmarks.bench_transport`` (also ``python -m benchmarks --only transport``):

* **wire**: Stream ``score_ids`` of 1,024-token answers through the whole path (client encode -> HTTP -> HAProxy
  -> ingress -> replica hop -> answer -> client tensors), JSON, binary and binary with ``SHAPING_FIELDS`` side by
  side (rounds alternate the forms); tokens/s end to end and the CPU seconds of each side (this process: the
  client; the service's processes by role). The answers are checked bit for bit against the precomputed risks.
* **step**: one GRPO step of 1,024 prompts x 16 answers as 16,384 single-sample ``/get_reward`` requests
  (``benchmarks.step_load``).
* **fault**: a guard replica killed in the middle of a burst (``benchmarks.step_load``).

Targets: binary >= 1,000,000 tokens/s end to end and >= 20x JSON; every ``/get_reward`` request answered, none
refused, >= 16 requests per guard call.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench_transport")

ROOT = Path(__file__).resolve().parents[1]
TARGET_TOKENS_PER_S = 1_000_000
TARGET_OVER_JSON = 20.0


def start_fast_service(replicas: int = 1, **options: Any) -> tuple[str, Any]:
    """A local Ray started as ``guard-reward serve --host 127.0.0.1`` starts it, serving the precomputed guards
    (``replicas`` per guard); the URL and the ``ServeOptions``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the replicas import benchmarks.fast_guards: Ray's workers inherit this environment
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    from guard_reward.serving.ray_env import free_port, ray_init_kwargs, use_serve_env

    use_serve_env("haproxy", "127.0.0.1")
    import ray
    from ray import serve

    from benchmarks.fast_guards import fast_deployments
    from guard_reward.serving.app import ServeOptions, build, wait_healthy

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, **ray_init_kwargs())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    opts = ServeOptions(gen="precomputed", stream="precomputed", replicas=replicas, cpus_per_replica=0.5,
                        torch_threads=1, **options)  # fmt: skip
    serve.run(build(opts, *fast_deployments()), name="guard_reward", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=300)
    return url, opts


def stop_service() -> None:
    """Serve and Ray stopped; their session folder and this run's HAProxy folder removed."""
    import shutil

    import ray
    from ray import serve

    from guard_reward.serving.ray_env import (
        HAPROXY_FOLDER_PREFIX,
        quiet_shutdown_notice,
        remove_session_folder,
        session_folder,
    )

    quiet_shutdown_notice()
    session = session_folder()
    serve.shutdown()
    ray.shutdown()
    remove_session_folder(session)
    folder = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""))
    if os.path.basename(folder).startswith(HAPROXY_FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- CPU seconds


def _role(cmdline: str) -> str:
    for key, role in (("GuardAPI", "ingress"), ("StreamGuard", "stream replica"), ("GenGuard", "gen replica"),
                      ("haproxy", "haproxy")):  # fmt: skip
        if key in cmdline:
            return role
    return "ray (other)"


def cpu_seconds() -> Counter[str]:
    """CPU seconds so far of this process (``client``) and of every process it started, by role (Linux)."""
    from guard_reward.serving.ray_env import descendants

    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: Counter[str] = Counter({"client": usage.ru_utime + usage.ru_stime})
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[_role(cmd)] += (int(fields[11]) + int(fields[12])) / tick
    return out


def delta(after: Counter[str], before: Counter[str]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# ---------------------------------------------------------------------------------------------- the wire


def wire(url: str, rounds: int = 3, binary_samples: int = 1024, json_samples: int = 64) -> dict[str, Any]:
    """Stream ``score_ids`` end to end in three forms, rounds alternating (module docstring)."""
    from benchmarks.fast_guards import ANSWER_TOKENS, PrecomputedStream
    from guard_reward import RemoteStreamGuard
    from guard_reward.wire import SHAPING_FIELDS, TOKEN_FIELDS

    rng = random.Random(0)
    n = max(binary_samples, json_samples)
    ids = [[rng.randrange(151_000) for _ in range(ANSWER_TOKENS)] for _ in range(n)]
    prompts = [f"Question {i}: how do I do thing {i}?" for i in range(n)]
    want = PrecomputedStream().pool
    kw = dict(chunk_size=64, parallel=4, timeout=300)
    forms = {
        "json": (RemoteStreamGuard(url, binary=False, **kw), json_samples, TOKEN_FIELDS),
        "binary": (RemoteStreamGuard(url, **kw), binary_samples, TOKEN_FIELDS),
        "binary, shaping fields": (RemoteStreamGuard(url, fields=SHAPING_FIELDS, **kw), binary_samples,
                                   SHAPING_FIELDS),
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {name: {"walls": [], "cpu": []} for name in forms}
    for round_ in range(rounds + 1):  # round 0 warms connections and replicas up
        for name, (guard, samples, fields) in forms.items():
            before, start = cpu_seconds(), time.perf_counter()
            out = guard.score_ids(prompts[:samples], ids[:samples])
            wall = time.perf_counter() - start
            used = delta(cpu_seconds(), before)
            bad = [r.reason for r in out if not r.ok]
            if bad or len(out) != samples:
                raise RuntimeError(
                    f"{name}: {len(out)} answers for {samples} samples, failures {Counter(bad)}"
                )
            for i in (0, samples - 1):  # the same bits as the replica's risks
                for f in fields:
                    if not torch.equal(getattr(out[i], f), getattr(want[i % len(want)], f)):
                        raise RuntimeError(f"{name}: sample {i} {f} differs from the replica's")
            if round_:
                results[name]["walls"].append(wall)
                results[name]["cpu"].append(used)
            logger.info("wire %s round %d: %.0f tokens/s", name, round_, samples * ANSWER_TOKENS / wall)
    rows = {}
    for name, (_, samples, fields) in forms.items():
        r = results[name]
        best = min(range(rounds), key=lambda k: r["walls"][k])
        tokens = samples * ANSWER_TOKENS
        cpu = r["cpu"][best]
        rows[name] = {
            "samples": samples,
            "tokens": tokens,
            "fields": list(fields),
            "tokens_per_s": tokens / r["walls"][best],
            "tokens_per_s_rounds": [tokens / w for w in r["walls"]],
            "cpu_s_per_million_tokens": {k: v * 1e6 / tokens for k, v in sorted(cpu.items())},
            "server_cpu_s_per_million_tokens": sum(v for k, v in cpu.items() if k != "client") * 1e6 / tokens,
        }
    rows["binary"]["over_json"] = rows["binary"]["tokens_per_s"] / rows["json"]["tokens_per_s"]
    rows["binary, shaping fields"]["over_json"] = (
        rows["binary, shaping fields"]["tokens_per_s"] / rows["json"]["tokens_per_s"]
    )
    return rows


def stream_step(url: str, ranks: int = 8, samples: int = 16_384) -> dict[str, Any]:
    """A GRPO step's Stream scoring as ``TokenSafetyPenalty`` sends it: ``ranks`` trainer processes (threads
    here), each one ``RemoteStreamGuard(fields=SHAPING_FIELDS).score_ids`` over its share of ``samples``
    1,024-token answers, cut into chunks of 64 by the client; wall time, tokens/s, requests per guard call."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.fast_guards import ANSWER_TOKENS
    from benchmarks.step_load import batch_sizes
    from guard_reward import RemoteStreamGuard
    from guard_reward.wire import SHAPING_FIELDS

    rng = random.Random(1)
    distinct = [[rng.randrange(151_000) for _ in range(ANSWER_TOKENS)] for _ in range(256)]
    share = samples // ranks
    ids = [distinct[i % len(distinct)] for i in range(share)]  # the same lists again: memory stays small
    prompts = [f"Question {i // 16}" for i in range(share)]

    def rank(_: int) -> int:
        guard = RemoteStreamGuard(url, fields=SHAPING_FIELDS, chunk_size=64, parallel=4, timeout=300)
        out = guard.score_ids(prompts, ids)
        return sum(not r.ok for r in out)

    before = len(batch_sizes(url, "stream"))
    start = time.perf_counter()
    with ThreadPoolExecutor(ranks) as pool:
        failed = sum(pool.map(rank, range(ranks)))
    wall = time.perf_counter() - start
    merged = batch_sizes(url, "stream")[before:]
    return {"ranks": ranks, "samples": share * ranks, "failed": failed, "wall_s": wall,
            "tokens_per_s": share * ranks * ANSWER_TOKENS / wall, "guard_calls": len(merged),
            "requests_per_call": sum(merged) / max(1, len(merged))}  # fmt: skip


def wire_table(rows: dict[str, Any]) -> str:
    roles = sorted({k for r in rows.values() for k in r["cpu_s_per_million_tokens"]})
    head = "| form | samples | tokens/s (best; all rounds) | x JSON | " + " | ".join(roles) + " |"
    lines = [head, "|" + "---|" * (4 + len(roles))]
    for name, r in rows.items():
        cpu = r["cpu_s_per_million_tokens"]
        spread = ", ".join(f"{t / 1e6:.2f}M" for t in r["tokens_per_s_rounds"])
        lines.append(
            f"| {name} | {r['samples']} | {r['tokens_per_s']:,.0f} ({spread}) | {r.get('over_json', 1.0):.1f} | "
            + " | ".join(f"{cpu.get(k, 0.0):.2f}" for k in roles)
            + " |"
        )
    lines += ["", "CPU columns: CPU seconds per million tokens of each process role (client: this process)."]
    return "\n".join(lines)


def suite_part(setup: object = None, parts: tuple[str, ...] = ("wire", "step", "fault")) -> tuple[str, dict]:
    """The suite's ``transport`` part: the wire, the 16,384-sample step and the fault, on one service started
    here (the guards cost nothing, so ``setup``, the suite's model size and device, is not read)."""
    from benchmarks import step_load

    url, opts = start_fast_service(replicas=2)
    payload: dict[str, Any] = {"load": os.getloadavg()}
    sections = []
    try:
        if "wire" in parts:
            payload["wire"] = rows = wire(url)
            b, s = rows["binary"], rows["binary, shaping fields"]
            sections += [
                "### Stream answers end to end: JSON against binary",
                "",
                wire_table(rows),
                "",
                f"- binary {b['tokens_per_s']:,.0f} tokens/s ({'met' if b['tokens_per_s'] >= TARGET_TOKENS_PER_S else '**missed**'} "
                f"≥ {TARGET_TOKENS_PER_S:,}), {b['over_json']:.1f}x JSON ({'met' if b['over_json'] >= TARGET_OVER_JSON else '**missed**'} "
                f"≥ {TARGET_OVER_JSON:g}x); shaping fields only: {s['tokens_per_s']:,.0f} tokens/s, {s['over_json']:.1f}x JSON.",
            ]  # fmt: skip
        if "step" in parts:
            payload["stream_step"] = st = stream_step(url)
            sections += [
                "",
                "### A 16,384-sample step's Stream scoring, as TokenSafetyPenalty sends it",
                "",
                f"{st['ranks']} ranks, each `RemoteStreamGuard(fields=SHAPING_FIELDS).score_ids` over "
                f"{st['samples'] // st['ranks']} answers of 1,024 tokens (chunks of 64): {st['wall_s']:.1f} s, "
                f"{st['tokens_per_s']:,.0f} tokens/s, {st['failed']} failed; one replica's {st['guard_calls']} guard "
                f"calls took {st['requests_per_call']:.1f} requests each.",
            ]
            payload["step"] = step = step_load.step(url, opts)
            sections += ["", "### A 16,384-sample GRPO step as single-sample /get_reward requests", "",
                         step_load.step_table(step)]  # fmt: skip
        if "fault" in parts:
            payload["fault"] = fault = step_load.fault(url)
            sections += ["", "### A guard replica killed mid-burst", "", step_load.fault_table(fault)]
    finally:
        stop_service()
    head = (
        f"Load average at start {payload['load'][0]:.1f} (2-core machine, shared). One local Ray as `guard-reward "
        "serve` starts it (HAProxy in front, loopback), guards that return precomputed results (1,024-token "
        "answers, 9 categories), 2 replicas per guard, 0.5 CPU each."
    )
    return "\n".join([head, "", *sections]), payload


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["wire", "step", "fault"], choices=["wire", "step", "fault"])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.common import write_results

    table, payload = suite_part(parts=tuple(a.parts))
    write_results("transport", "The transport alone: guards that cost nothing", table, payload, a.out)
    print(table)


if __name__ == "__main__":
    main()
