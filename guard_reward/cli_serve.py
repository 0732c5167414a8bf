"""``guard-reward serve``: the guards as a shared HTTP service on Ray Serve (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from guard_reward.serving.ray_env import PROXIES, use_serve_env


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the guards over HTTP on Ray Serve (one guard for every rank)")
    p.add_argument("--gen", default=None, help="Qwen3Guard-Gen hub id or checkpoint folder")
    p.add_argument("--stream", default=None, help="Qwen3Guard-Stream hub id or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="replicas per guard")
    p.add_argument(
        "--gpus-per-replica", type=float, default=None, help="default: 1 if Ray sees a GPU, else 0"
    )
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests merged into one guard call")
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="longest wait for more requests to merge with (ms)"
    )
    p.add_argument(
        "--batch-quiet-ms",
        type=float,
        default=2.0,
        help="send a batch once no request came for this long (ms)",
    )
    p.add_argument(
        "--max-queued-requests", type=int, default=512, help="requests waiting per guard; more -> 503"
    )
    p.add_argument("--device", default=None, help="guard device inside a replica (default: the guards' own)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--token-budget", type=int, default=16384, help="padded tokens per guard micro-batch")
    p.add_argument("--reward-config", default=None, help="YAML of SafetyReward fields for /get_reward")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    p.add_argument(
        "--proxy",
        choices=PROXIES,
        default="haproxy",
        help="HTTP front of a local Ray: HAProxy (default, where ray[serve] ships it) or Ray's Python proxy",
    )
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if args.address is None:  # Ray's processes read these when they start; a joined cluster keeps its own
        use_serve_env(args.proxy)
    try:
        import ray
        from ray import serve
    except ImportError:
        print("error: guard-reward serve needs Ray Serve: pip install 'guard-reward[serve]'", file=sys.stderr)
        return 2
    from guard_reward.serving.app import ServeOptions, build, wait_healthy
    from guard_reward.serving.config import load_reward_config

    try:
        reward_config = load_reward_config(args.reward_config) if args.reward_config else {}
        options_kw = dict(
            gen=args.gen,
            stream=args.stream,
            replicas=args.replicas,
            cpus_per_replica=args.cpus_per_replica,
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
            batch_quiet_ms=args.batch_quiet_ms,
            max_queued_requests=args.max_queued_requests,
            device=args.device,
            dtype=args.dtype,
            token_budget=args.token_budget,
            reward_config=reward_config,
        )
        ServeOptions(**options_kw)  # check before Ray starts
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # without --address: always a fresh local Ray, never one that happens to run on this machine
    ray.init(address=args.address or "local")
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    options = ServeOptions(**options_kw, gpus_per_replica=gpus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(options), name="guard_reward", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        health = wait_healthy(url)
        print(f"guard-reward serving at {url} ({', '.join(health['guards'])})", flush=True)
        stop.wait()
    finally:
        print("shutting down", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0
