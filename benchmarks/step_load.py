"""A GRPO step's worth of single-sample ``/get_reward`` requests, and a guard replica lost in the middle of one.

Used by :mod:`benchmarks.bench_transport` against the service with guards that cost nothing. Each request is what
OpenRLHF 0.11's ``SingleTurnAgentExecutor`` sends: ``{"query": [prompt + response], "prompts": [prompt],
"labels": [null]}`` (ChatML, a 1,024-token-sized answer), POSTed with aiohttp and retried as its client does (5
tries 1 s apart, 180 s in all, then the sample's reward is ``None``).

* ``bounded``: at most ``concurrency`` requests in flight over pooled connections (a rollout worker with a
  semaphore, as verl's reward loop and most OpenRLHF setups with several engines run it);
* ``burst``: all 16,384 at once, each on its own connection (OpenRLHF's client opens a session per request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

logger = logging.getLogger("bench_transport")

PROMPTS, ANSWERS = 1024, 16
#: OpenRLHF 0.11's reward client: tries per request, seconds between them, seconds per request in all.
TRIES, PAUSE_S, TOTAL_S = 5, 1.0, 180.0
TARGET_MERGED = 16


def requests(n: int = PROMPTS * ANSWERS) -> list[dict[str, Any]]:
    """``n`` OpenRLHF ``/get_reward`` bodies, ``ANSWERS`` answers per prompt."""
    words = "the oven should be hot before the bread goes in and the dough must rest for an hour".split(" ")  # noqa: SIM905
    out = []
    for i in range(n):
        prompt = (
            f"<|im_start|>user\nHow do I bake bread number {i // ANSWERS}?<|im_end|>\n<|im_start|>assistant\n"
        )
        answer = " ".join(words[(i + k) % len(words)] for k in range(700))  # ~1,000 tokens of text
        out.append({"query": [prompt + answer + "<|im_end|>"], "prompts": [prompt], "labels": [None]})
    return out


def batch_sizes(url: str, guard: str = "gen") -> list[int]:
    """Requests per guard call of the replica that answers ``/v1/stats`` (one of them, with several)."""
    with urllib.request.urlopen(f"{url}/v1/stats", timeout=120) as resp:
        return list(json.loads(resp.read())[guard]["batch_sizes"])


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


async def _send(
    url: str, bodies: list[dict[str, Any]], concurrency: int | None, on_answer=None
) -> dict[str, Any]:
    """POST every body to ``url/get_reward`` as OpenRLHF's client does; statuses, latencies, rewards."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=TOTAL_S)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    rewards: list[float | None] = [None] * len(bodies)
    errors: set[str] = set()
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    shared = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency or 0))

    async def one(i: int) -> None:
        start = time.perf_counter()
        for _ in range(TRIES):
            try:
                if shared is not None and concurrency:
                    async with shared.post(f"{url}/get_reward", json=bodies[i]) as resp:
                        statuses[str(resp.status)] += 1
                        resp.raise_for_status()
                        answer = await resp.json()
                else:  # a session (a connection) per request, as OpenRLHF 0.11's client
                    async with (
                        aiohttp.ClientSession(timeout=timeout) as session,
                        session.post(f"{url}/get_reward", json=bodies[i]) as resp,
                    ):
                        statuses[str(resp.status)] += 1
                        resp.raise_for_status()
                        answer = await resp.json()
                rewards[i] = answer["rewards"][0]
                break
            except aiohttp.ClientResponseError as exc:
                if len(errors) < 5:  # what the refusals said (the body is gone with the response)
                    errors.add(f"{exc.status} {exc.message}"[:200])
            except Exception as exc:  # connection refused or reset, timeouts: counted, retried
                statuses[type(exc).__name__] += 1
            await asyncio.sleep(PAUSE_S)
        latencies.append(time.perf_counter() - start)
        if on_answer is not None:
            on_answer(i)

    async def gated(i: int) -> None:
        if gate is None:
            return await one(i)
        async with gate:
            return await one(i)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(gated(i) for i in range(len(bodies))))
    finally:
        await shared.close()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "statuses": dict(statuses), "latencies": latencies, "rewards": rewards,
            "errors": sorted(errors)}  # fmt: skip


def _summary(name: str, sent: int, out: dict[str, Any], merged: list[int]) -> dict[str, Any]:
    lat = out["latencies"]
    none = sum(r is None for r in out["rewards"])
    return {
        "case": name,
        "sent": sent,
        "answered": sent - none,
        "no_reward": none,
        "statuses": out["statuses"],
        "errors": out["errors"],
        "wall_s": out["wall_s"],
        "requests_per_s": sent / out["wall_s"],
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "guard_calls": len(merged),
        "mean_merged": statistics.mean(merged) if merged else 0.0,
        "p10_merged": percentile([float(m) for m in merged], 0.10) if merged else 0.0,
    }


def step(
    url: str, options: Any, concurrency: int = 512, n: int = PROMPTS * ANSWERS, burst_only: bool = False
) -> dict[str, Any]:
    """The step twice: bounded concurrency over pooled connections, then one unbounded burst."""
    from guard_reward.serving.app import ingress_limits

    bodies = requests(n)
    rows = []
    cases = [(f"bounded, {concurrency} in flight", concurrency), ("burst, all at once", None)]
    for name, limit in cases[1:] if burst_only else cases:
        before = len(batch_sizes(url))
        out = asyncio.run(_send(url, bodies, limit))
        rows.append(_summary(name, n, out, batch_sizes(url)[before:]))
        logger.info("step %s: %s", name, {k: v for k, v in rows[-1].items() if k != "statuses"})
    return {"rows": rows, "ingress_limits": ingress_limits(options), "max_queued_requests":
            options.max_queued_requests, "max_batch_size": options.max_batch_size}  # fmt: skip


def step_table(result: dict[str, Any]) -> str:
    lines = [
        f"Ingress limits from the options: {result['ingress_limits']} (guard queue {result['max_queued_requests']}, "
        f"batches of {result['max_batch_size']}).",
        "",
        "| case | sent | answered | no reward | HTTP statuses | wall s | requests/s | p50 / p99 ms | guard calls of "
        "one replica | requests per call (mean, p10) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(
            f"| {r['case']} | {r['sent']} | {r['answered']} | {r['no_reward']} | {statuses} | {r['wall_s']:.1f} | "
            f"{r['requests_per_s']:.0f} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['guard_calls']} | "
            f"{r['mean_merged']:.1f}, {r['p10_merged']:.0f} |"
        )
    ok = all(r["no_reward"] == 0 and "503" not in r["statuses"] for r in result["rows"])
    merged = min(r["mean_merged"] for r in result["rows"])
    lines += ["", f"- every request answered, no 503: {'met' if ok else '**missed**'}; requests per guard call "
              f"{merged:.1f} ({'met' if merged >= TARGET_MERGED else '**missed**'} ≥ {TARGET_MERGED})."]  # fmt: skip
    return "\n".join(lines)


def _replicas(deployment: str) -> list[Any]:
    import ray

    prefix = f"SERVE_REPLICA::guard_reward#{deployment}"
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names]


def fault(url: str, n: int = 4096, kill_after: float = 0.25) -> dict[str, Any]:
    """``n`` requests at once (a connection each, OpenRLHF's client); once ``kill_after`` of them are answered, one
    of the two Gen replicas is killed (``ray.kill``, as a node failure); Serve starts a new one."""
    import ray

    bodies = requests(n)
    killed = threading.Event()
    answered_at_kill: list[int] = []
    count = [0]
    times: dict[str, float] = {}

    def on_answer(_i: int) -> None:
        count[0] += 1
        if count[0] >= kill_after * n and not killed.is_set():
            killed.set()
            replicas = _replicas("GenGuard")
            answered_at_kill.append(count[0])
            times["kill"] = time.perf_counter()
            ray.kill(replicas[0], no_restart=True)

    before = len(batch_sizes(url))
    start = time.perf_counter()
    out = asyncio.run(_send(url, bodies, None, on_answer))
    row = _summary(f"burst of {n}, one of 2 Gen replicas killed", n, out, batch_sizes(url)[before:])
    row["killed_after_answers"] = answered_at_kill[0] if answered_at_kill else None
    row["kill_at_s"] = times.get("kill", start) - start
    logger.info("fault: %s", row)
    return row


def fault_table(r: dict[str, Any]) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
    return "\n".join([
        "| case | sent | answered | no reward (OpenRLHF's None) | HTTP statuses | killed at | wall s | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['case']} | {r['sent']} | {r['answered']} | {r['no_reward']} | {statuses} | "
        f"{r['kill_at_s']:.1f} s ({r['killed_after_answers']} answered) | {r['wall_s']:.1f} | "
        f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} |",
    ])  # fmt: skip
