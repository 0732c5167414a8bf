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
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from guard_reward.guards.gen_spec import is_server_spec, parse_server_spec
from guard_reward.serving.ray_env import (
    HAPROXY_FOLDER_PREFIX,
    PROXIES,
    alive,
    descendants,
    end_leftovers,
    is_loopback,
    processes_using,
    quiet_shutdown_notice,
    ray_init_kwargs,
    remove_session_folder,
    session_folder,
    use_serve_env,
)

logger = logging.getLogger(__name__)

#: The architecture of a Qwen3Guard-Stream checkpoint (``guards.stream_heads.STREAM_ARCHITECTURE``).
STREAM_ARCH = "Qwen3ForGuardModel"
#: ``org/name``: a model hub id, resolved inside the replica (no hub is asked here).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: The longest a stop waits for Serve's own shutdown (replicas drained, HAProxy stopped) before it stops the
#: processes (a signal to the process group leaves it nothing to talk to).
GRACEFUL_S = 15.0
#: What a local Ray started for a non-loopback ``--host`` listens on beyond the service's port (docs/serving.md).
EXPOSED = (
    "the service's port and Ray's own ports (GCS, raylet, object manager, workers, dashboard agent, HAProxy "
    "stats and metrics) to the network; Ray's ports run work for anyone who reaches them: firewall every port "
    "but --port (or use --host 127.0.0.1)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the guards over HTTP on Ray Serve (one guard for every rank)")
    p.add_argument(
        "--gen",
        default=None,
        help="Qwen3Guard-Gen hub id, checkpoint folder, or a served Gen (openai+http://HOST:PORT/v1?model=NAME, "
        "e.g. a vllm serve of it: the replicas batch requests for that engine)",
    )
    p.add_argument("--stream", default=None, help="Qwen3Guard-Stream hub id or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="replicas per guard")
    p.add_argument(
        "--ingress-replicas",
        type=int,
        default=1,
        help="replicas of the HTTP ingress (CPU: parsing, /get_reward)",
    )
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
        use_serve_env(args.proxy, args.host)
        if not is_loopback(args.host):
            print(f"warning: --host {args.host} exposes {EXPOSED}", file=sys.stderr, flush=True)
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
            ingress_replicas=args.ingress_replicas,
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
    ours = descendants()  # and, while it runs, every process Ray starts (HAProxy is orphaned when it stops)
    stop = threading.Event()
    hurry = threading.Event()  # a second signal: stop the processes without waiting for Serve's shutdown
    session = None  # the local Ray's session folder (logs, sockets), removed when it stops
    quiet_shutdown_notice()
    try:
        # without --address: always a fresh local Ray, never one that happens to run on this machine
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(address="local", **ray_init_kwargs(args.host))
            session = session_folder()
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own handlers
            signal.signal(sig, lambda *_: hurry.set() if stop.is_set() else stop.set())
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        options = ServeOptions(**options_kw, gpus_per_replica=gpus)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(options), name="guard_reward", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        health = wait_healthy(url)
        print(f"guard-reward serving at {url} ({', '.join(health['guards'])})", flush=True)
        while not stop.wait(1.0):
            ours.update(descendants())
        code = 0
    except Exception as exc:
        logger.debug("serve failed", exc_info=True)
        print(f"error: {failure_cause(exc)}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("shutting down", flush=True)
        lost = shut_down(serve, ray, ours, local=args.address is None, hurry=hurry)
        remove_session_folder(session)  # this service's own; a joined cluster's stays
    if lost:  # Ray's exit hooks would wait a minute for the GCS that is gone
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def shut_down(serve, ray, ours: dict[int, str], local: bool, hurry: threading.Event | None = None) -> bool:
    """Stop Serve and Ray, then every process of ``ours`` (and this service's HAProxy) still running; whether
    Ray could not be shut down in order (its exit hooks must then be skipped).

    A signal to the whole process group (``kill -- -PGID``, Slurm, systemd) stops a local Ray's GCS and raylet
    with this process: Serve's graceful shutdown would then wait 30 s for a controller that is gone, and the
    driver a minute for the GCS. So Serve's shutdown runs aside, and once the GCS or raylet is gone, or after
    :data:`GRACEFUL_S`, or once ``hurry`` is set (a second signal), only the processes are stopped."""
    ours.update(descendants())
    folder = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""))
    marker = folder if os.path.basename(folder).startswith(HAPROXY_FOLDER_PREFIX) else ""
    daemons = {pid: t for pid, t in ours.items() if _comm(pid) in ("gcs_server", "raylet")}
    done = threading.Event()

    def graceful() -> None:
        try:
            serve.shutdown()
        except Exception as exc:  # a failed start may leave nothing to shut down
            logger.debug("serve.shutdown: %s", exc)
        done.set()

    threading.Thread(target=graceful, name="serve-shutdown", daemon=True).start()
    deadline = time.monotonic() + GRACEFUL_S
    lost = False
    while not done.wait(0.1) and not lost:
        lost = (
            (local and node_stopping(ray, daemons))
            or time.monotonic() > deadline
            or (hurry is not None and hurry.is_set())
        )
    if lost:
        logger.warning("Ray is stopping or did not stop within %.0f s: stopping its processes", GRACEFUL_S)
    else:
        try:
            ray.shutdown()
        except Exception as exc:
            logger.debug("ray.shutdown: %s", exc)
    end_leftovers({**ours, **descendants(), **processes_using(marker)})
    if marker:  # HAProxy's config, sockets and start script, this service's alone
        shutil.rmtree(marker, ignore_errors=True)
    return lost


def node_stopping(ray, daemons: dict[int, str], timeout_s: float = 1.0) -> bool:
    """Whether the local Ray is going down by itself: its GCS or raylet has exited, or the GCS lists the node
    as dead (a raylet that got SIGTERM says so at once, then drains for some 10 s) or does not answer."""
    if len(alive(daemons)) < len(daemons):
        return True
    answer: list[bool] = []
    probe = threading.Thread(
        target=lambda: answer.append(all(node.get("Alive") for node in ray.nodes())), daemon=True
    )
    probe.start()
    probe.join(timeout_s)
    return not (answer and answer[0])


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def check_checkpoint(kind: str, name: str) -> None:
    """Raise ``ValueError`` naming the problem when ``name`` (``--gen`` / ``--stream``) cannot be that guard's
    checkpoint: a path that does not exist (and is no hub id), a folder without ``config.json``, or a
    checkpoint of the other kind. A served Gen (``openai+http://…``) is checked by its guard at the first call."""
    if kind == "gen" and is_server_spec(name):
        parse_server_spec(name)  # a malformed spec fails here, before Ray starts
        return
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
