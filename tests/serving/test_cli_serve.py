"""``guard-reward serve`` as a user runs it: a separate process that prints its URL once the service answers and
shuts down cleanly on SIGTERM; bad options fail before Ray starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from guard_reward import RemoteStreamGuard
from guard_reward.cli import main
from guard_reward.serving.ray_env import free_port
from tests.guards import stream_ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_serve_without_a_guard_or_with_a_bad_reward_config_fails_early(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "give at least one guard" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text("modus: soft\n")
    assert main(["serve", "--stream", "x", "--reward-config", str(tmp_path / "r.yaml")]) == 2
    assert "unknown field 'modus'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("proxy", ["haproxy", "python"])
def test_serve_prints_its_url_answers_and_stops_on_sigterm(proxy):
    port = free_port()
    shell = {
        k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")
    }  # not the session server's
    env = {**shell, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "guard_reward.cli", "serve", "--stream", str(stream_ckpt.path("single")),
           "--port", str(port), "--cpus-per-replica", "0.5", "--device", "cpu", "--dtype", "float32",
           "--proxy", proxy]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        line = ""
        while time.monotonic() < deadline and "serving at" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the server exited before answering"
        assert f"serving at http://127.0.0.1:{port} (stream)" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:
            assert resp.status == 200
        risks = RemoteStreamGuard(f"http://127.0.0.1:{port}").score(
            [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]]
        )
        assert risks[0].error is None and len(risks[0].p_unsafe) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert "shutting down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
