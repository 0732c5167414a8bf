"""``guard-reward serve``: the guards as a shared HTTP service on Ray Serve (needs the ``serve`` extra).

What can be checked before Ray starts is (a missing checkpoint folder, a Stream checkpoint given to ``--gen``,
a port in use): inside Ray such a failure surfaces after half a minute as "Failed to update the deployments",
its cause only in the controller's log. Any failure prints one ``error:`` line with the cause, and the command
leaves no process behind (Ray's shutdown can leave HAProxy running: :func:`~ray_env.end_leftovers`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socket
import sys
import threading
from pathlib import Path

from guard_reward.serving.ray_env import PROXIES, descendants, end_leftovers, use_serve_env

logger = logging.getLogger(__name__)

#: The architecture of a Qwen3Guard-Stream checkpoint (``guards.stream_heads.STREAM_ARCHITECTURE``).
STREAM_ARCH = "Qwen3ForGuardModel"
#: ``org/name``: a model hub id, resolved inside the replica (no hub is asked here).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


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
        "--max-queued-requests",
        type=int,
        default=512,
        help="requests waiting per guard; more -> 503 (/get_reward waits instead)",
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
    from guard_reward.serving.config import load_reward_config

    try:  # what can be checked before importing Ray (seconds) and starting it (tens of seconds)
        if not args.gen and not args.stream:
            raise ValueError("give at least one guard: --gen and/or --stream")
        reward_config = load_reward_config(args.reward_config) if args.reward_config else {}
        for kind in ("gen", "stream"):
            if getattr(args, kind):
                check_checkpoint(kind, getattr(args, kind))
        if args.address is None:  # a joined cluster's HTTP proxies run where it put them
            check_port(args.host, args.port)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.address is None:  # Ray's processes read these when they start; a joined cluster keeps its own
        use_serve_env(args.proxy)
    try:
        import ray
        from ray import serve
    except ImportError:
        print("error: guard-reward serve needs Ray Serve: pip install 'guard-reward[serve]'", file=sys.stderr)
        return 2
    from guard_reward.serving.app import ServeOptions, build, wait_healthy

    try:
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
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = descendants()
    stop = threading.Event()
    try:
        # without --address: always a fresh local Ray, never one that happens to run on this machine
        ray.init(address=args.address or "local")
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own handlers
            signal.signal(sig, lambda *_: stop.set())
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        options = ServeOptions(**options_kw, gpus_per_replica=gpus)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(options), name="guard_reward", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        health = wait_healthy(url)
        print(f"guard-reward serving at {url} ({', '.join(health['guards'])})", flush=True)
        stop.wait()
        code = 0
    except Exception as exc:
        logger.debug("serve failed", exc_info=True)
        print(f"error: {failure_cause(exc)}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("shutting down", flush=True)
        ours = {**started, **descendants()}  # HAProxy and Ray's daemons, while they are still ours
        try:
            serve.shutdown()
        except Exception as exc:  # a failed start may leave nothing to shut down
            logger.debug("serve.shutdown: %s", exc)
        ray.shutdown()
        end_leftovers(ours)
    return code


def check_checkpoint(kind: str, name: str) -> None:
    """Raise ``ValueError`` naming the problem when ``name`` (``--gen`` / ``--stream``) cannot be that guard's
    checkpoint: a path that does not exist (and is no hub id), a folder without ``config.json``, or a
    checkpoint of the other kind."""
    path = Path(name).expanduser()
    if not path.exists():
        if _HUB_ID.fullmatch(name):
            return
        raise ValueError(f"--{kind} {name}: no such folder (nor a hub id such as Qwen/Qwen3Guard-Gen-0.6B)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--{kind} {name}: no config.json there; give a checkpoint folder")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"--{kind} {name}: config.json is not valid JSON ({exc})") from None
    # the architectures only, without importing transformers (seconds count here); the guards check the rest
    archs = config.get("architectures") or [] if isinstance(config, dict) else []
    if kind == "gen" and STREAM_ARCH in archs:
        raise ValueError(
            f"--gen {name} is a Qwen3Guard-Stream checkpoint ({STREAM_ARCH}); give it to --stream"
        )
    if kind == "gen" and archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ValueError(
            f"--gen {name} has architectures {archs}; a Qwen3Guard-Gen checkpoint is a causal LM"
        )
    if kind == "stream" and STREAM_ARCH not in archs:
        raise ValueError(
            f"--stream {name} is not a Qwen3Guard-Stream checkpoint (architectures {archs}, expected "
            f"{STREAM_ARCH}); a Gen checkpoint goes to --gen"
        )


def check_port(host: str, port: int) -> None:
    """Raise ``ValueError`` when nothing could listen on ``host:port`` (in use, or not an address here)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP servers bind it
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); is another server "
                "running there? pick another --port"
            ) from None


def failure_cause(exc: Exception) -> str:
    """One line saying why the service did not start: the failed deployment's own error where Serve has one."""
    try:
        from ray import serve

        for app in serve.status().applications.values():
            for name, deployment in app.deployments.items():
                lines = [ln.strip() for ln in str(deployment.message or "").splitlines() if ln.strip()]
                if str(deployment.status) not in ("HEALTHY", "DeploymentStatus.HEALTHY") and lines:
                    return f"{name}: {lines[-1]}"
    except Exception:  # Ray itself did not start: the exception is all there is
        pass
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"
