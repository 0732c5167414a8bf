"""The guards served on Ray Serve against the local guards: ``python -m benchmarks.bench_serving``.

The verl / OpenRLHF pattern: 16 concurrent clients, each sending ONE sample per request, over one GRPO-shaped
batch (4 prompts x 8 completions). Per guard, samples/s of:

* ``local batched``: one local ``moderate()`` / ``score()`` call over the whole batch;
* ``local single``: the same samples, one local call each (what batching gains the local guard:
  ``batched / single``);
* ``served``: through the service with dynamic batching (``--max-batch-size 32``): concurrent requests merged
  into one guard call, so prefix sharing works across requests;
* ``served, batch 1``: the service with ``max_batch_size=1`` (batching off).

Targets: ``served / local batched >= 0.7`` and ``(served / served batch 1) >= 0.9 x (local batched / local
single)``; p50 / p99 request latency of the served paths. Everything runs on one machine: the replicas
(one per guard, one torch thread each) compete with the clients and the local guard for the same cores, and
rounds alternate the paths (:func:`benchmarks.common.race`). Wall-clock figures: the service spans processes,
so CPU time of this process says nothing about it.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.bench_groups import gen_batch, stream_batch
from benchmarks.common import Setup, fmt_ratio, part_parser, race, ratio, run_part

logger = logging.getLogger("bench_serving")

CLIENTS = 16
TARGET_THROUGHPUT = 0.7
TARGET_BATCHING = 0.9
#: RL-sized Stream answers: the guard's forward outweighs the transport, so the service must keep nearly all of it.
LONG_ANSWER = 1024
TARGET_LONG_STREAM = 0.9


def start_service(setup: Setup, proxy: str = "haproxy") -> tuple[str, str, str]:
    """Two Serve apps on one local Ray started as ``guard-reward serve --proxy PROXY`` starts it: ``/on``
    (batching, 32) and ``/off`` (batch size 1); their URLs and the HTTP front in use."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from guard_reward.serving.ray_env import use_serve_env

    front = "HAProxy" if use_serve_env(proxy)["RAY_SERVE_ENABLE_HA_PROXY"] == "1" else "Ray's Python proxy"
    import ray
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build, wait_healthy

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = 8765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    for name, batch in (("on", 32), ("off", 1)):
        options = ServeOptions(
            gen=str(setup.gen_path()),
            stream=str(setup.stream_path()),
            cpus_per_replica=0.5,
            max_batch_size=batch,
            device=setup.device,
            dtype=setup.dtype,
            torch_threads=1,
        )
        serve.run(build(options), name=name, route_prefix=f"/{name}")
        wait_healthy(f"{base}/{name}", timeout=600)
    return f"{base}/on", f"{base}/off", front


def concurrent_singles(call: Any, n: int, latencies: list[float]) -> None:
    """``CLIENTS`` threads sending samples ``0..n-1`` one per request; each request's latency is recorded."""
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        out = call(i)
        elapsed = time.perf_counter() - start
        if out[0].error is not None:  # a failed sample would flatter the service's figures
            raise RuntimeError(f"sample {i} failed: {out[0].error}")
        with lock:
            latencies.append(elapsed)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(n)))


def batch_sizes(url: str, guard: str) -> list[int]:
    """Requests merged into each guard call so far, from the service's ``/v1/stats``."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/stats", timeout=60) as resp:
        return list(json.loads(resp.read())[guard]["batch_sizes"])


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(setup: Setup, repeats: int = 3, proxy: str = "haproxy") -> tuple[str, dict]:
    from ray import serve

    from guard_reward import RemoteGenGuard, RemoteStreamGuard
    from guard_reward.serving.app import ServeOptions

    on_url, off_url, front = start_service(setup, proxy)
    try:
        gen, stream = setup.gen(), setup.stream()
        cases = {
            "gen": (
                gen_batch(4, 8, seed=5),
                gen,
                RemoteGenGuard(on_url),
                RemoteGenGuard(off_url),
                "moderate",
                TARGET_THROUGHPUT,
            ),
            "stream": (
                stream_batch(stream.tokenizer, 4, 8, 128, seed=5),
                stream,
                RemoteStreamGuard(on_url),
                RemoteStreamGuard(off_url),
                "score",
                TARGET_THROUGHPUT,
            ),
            f"stream, {LONG_ANSWER:,}-token answers": (
                stream_batch(stream.tokenizer, 4, 8, LONG_ANSWER, seed=5),
                stream,
                RemoteStreamGuard(on_url),
                RemoteStreamGuard(off_url),
                "score",
                TARGET_LONG_STREAM,
            ),
        }
        rows = []
        for kind, (convs, local, on, off, method, target) in cases.items():
            n = len(convs)
            lat: dict[str, list[float]] = {"served": [], "served, batch 1": []}
            fns = {
                "local batched": lambda c=convs, g=local, m=method: getattr(g, m)(c),
                "local single": lambda c=convs, g=local, m=method: [getattr(g, m)([x]) for x in c],
                "served": lambda c=convs, g=on, m=method, n=n, out=lat["served"]: concurrent_singles(
                    lambda i: getattr(g, m)([c[i]]), n, out
                ),
                "served, batch 1": lambda c=convs, g=off, m=method, n=n, out=lat["served, batch 1"]: (
                    concurrent_singles(lambda i: getattr(g, m)([c[i]]), n, out)
                ),
            }
            guard = kind.split(",")[0]  # the deployment whose batches the case fills
            before = len(batch_sizes(on_url, guard))
            times = race(fns, repeats=repeats, warmup=True, device=setup.device)
            merged = batch_sizes(on_url, guard)[before:]
            for k in lat:  # drop the warm-up round's latencies (in place: the lambdas hold these lists)
                del lat[k][:n]
            local_gain = ratio(times["local single"], times["local batched"])
            served_gain = ratio(times["served, batch 1"], times["served"])
            row = {
                "guard": kind,
                "target": target,
                "samples": n,
                "samples_per_s": {k: n / min(t) for k, t in times.items()},
                "served_over_local": ratio(times["local batched"], times["served"]),
                "local_batching_gain": local_gain,
                "served_batching_gain": served_gain,
                "captured": served_gain["best"] / local_gain["best"],
                "mean_requests_per_guard_call": statistics.mean(merged) if merged else None,
                "latency_ms": {
                    k: {"p50": 1000 * statistics.median(v), "p99": 1000 * percentile(v, 0.99)}
                    for k, v in lat.items()
                },
                "seconds": times,
            }
            rows.append(row)
            logger.info("serving %s: %s", kind, {k: round(v, 2) for k, v in row["samples_per_s"].items()})
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()
    lines = [
        f"{setup.describe()}; one GRPO batch of 4 prompts x 8 completions per guard (Stream responses 128 "
        f"and {LONG_ANSWER:,} tokens); {CLIENTS} concurrent single-sample clients; one replica per guard, one torch thread; "
        f"`guard-reward serve`'s defaults: {front} in front, batch wait {ServeOptions.batch_wait_ms:g} ms, "
        f"quiet {ServeOptions.batch_quiet_ms:g} ms; {repeats} rounds; wall clock on one machine.",
        "",
        "| guard | local batched | local single | served | served, batch 1 | served / local batched "
        "| batching gain local | batching gain served | captured | requests per guard call | p50 / p99 ms served "
        "| p50 / p99 ms batch 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, lat = r["samples_per_s"], r["latency_ms"]
        lines.append(
            f"| {r['guard']} | {s['local batched']:.1f} | {s['local single']:.1f} | {s['served']:.1f} | "
            f"{s['served, batch 1']:.1f} | {fmt_ratio(r['served_over_local'])} | "
            f"{fmt_ratio(r['local_batching_gain'])} | {fmt_ratio(r['served_batching_gain'])} | "
            f"{r['captured']:.2f} | {r['mean_requests_per_guard_call'] or 0:.1f} | {lat['served']['p50']:.0f} / {lat['served']['p99']:.0f} | "
            f"{lat['served, batch 1']['p50']:.0f} / {lat['served, batch 1']['p99']:.0f} |"
        )
    lines += ["", "Samples/s; ratios best round against best round, (lowest–highest) over paired rounds.", ""]
    for r in rows:
        t1 = r["served_over_local"]["best"] >= r["target"]
        t2 = r["captured"] >= TARGET_BATCHING
        lines.append(
            f"- {r['guard']}: served / local batched {r['served_over_local']['best']:.2f}x "
            f"({'met' if t1 else '**missed**'} ≥ {r['target']}x); the service captures "
            f"{r['captured']:.2f} of the local batching gain ({'met' if t2 else '**missed**'} ≥ {TARGET_BATCHING})."
        )
    payload = {"size": setup.size, "rows": rows, "clients": CLIENTS, "http_front": front}
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    from guard_reward.serving.ray_env import PROXIES

    parser = part_parser(__doc__)
    parser.add_argument("--proxy", choices=PROXIES, default="haproxy", help="the service's HTTP front")
    args = parser.parse_args(argv)
    run_part(args, "serving", "Serving: the guards on Ray Serve", functools.partial(run, proxy=args.proxy))


if __name__ == "__main__":
    main()
