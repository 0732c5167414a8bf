"""The environment a local Ray for the service starts with (``guard-reward serve --proxy``), and finding the
processes a stopped Ray left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from guard_reward.serving import ray_env
from guard_reward.serving.ray_env import alive, descendants, end_leftovers

KEYS = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_SERVE_HAPROXY_BINARY_PATH", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
        "RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for key in KEYS:  # the serving conftest set them for this session's server
        monkeypatch.delenv(key, raising=False)


def test_haproxy_front_with_its_own_stats_ports(clean_env):
    assert ray_env.haproxy_available()  # ray[serve] ships the binary on Linux
    env = ray_env.serve_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    shutil.rmtree(os.path.dirname(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]))
    assert len(ports) == 2 and not ports & {8404, 9101}  # not the fixed defaults two services would share


def test_python_proxy_and_fallback_without_a_binary(clean_env, monkeypatch, caplog):
    assert ray_env.serve_env("python") == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    monkeypatch.setattr(ray_env, "haproxy_available", lambda: False)
    assert ray_env.serve_env("haproxy") == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert "no HAProxy binary" in caplog.text
    with pytest.raises(ValueError, match="proxy must be one of haproxy, python"):
        ray_env.serve_env("nginx")


def test_variables_already_set_win(clean_env, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    used = ray_env.use_serve_env("haproxy")
    assert used["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"  # the unset ones are filled in


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process trees are read from /proc")
def test_an_orphaned_grandchild_is_found_and_stopped():
    """What Ray's shutdown leaves: HAProxy, started by a worker that was killed first, running on under init."""
    others = set(descendants())  # e.g. a Ray another test of this process started
    parent = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    ours = {pid: started for pid, started in descendants().items() if pid not in others}
    assert {parent.pid, grandchild} <= set(ours)
    parent.kill()  # the worker dies; its child lives on
    parent.wait()
    assert alive(ours) == [grandchild]
    assert end_leftovers(ours, grace_s=5) == 1
    assert alive(ours) == []
    assert end_leftovers(ours) == 0  # nothing left: nothing signalled (a reused pid is not ours)


def test_a_loopback_host_keeps_ray_and_haproxy_on_loopback(clean_env):
    assert (
        ray_env.is_loopback("127.0.0.1") and ray_env.is_loopback("::1") and ray_env.is_loopback("localhost")
    )
    assert not ray_env.is_loopback("0.0.0.0") and not ray_env.is_loopback("10.1.2.3")
    wide = ray_env.serve_env("haproxy", "0.0.0.0")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in wide and "RAY_SERVE_HAPROXY_BINARY_PATH" not in wide
    local = ray_env.serve_env("haproxy", "127.0.0.1")
    assert local["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # the node's address is 127.0.0.1
    folder = os.path.dirname(local["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    assert folder != os.path.dirname(wide["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])  # one folder per service
    assert (
        len(folder) + 57 + len("/metrics.sock") <= 97
    )  # HAProxy's socket path limit, with Serve's subfolder
    assert ray_env.serve_env("python", "::1") == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    for env in (wide, local):
        shutil.rmtree(os.path.dirname(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]))
    assert ray_env.ray_init_kwargs("0.0.0.0") == {}
    hook = ray_env.ray_init_kwargs("127.0.0.1")["runtime_env"]["worker_process_setup_hook"]
    assert hook == "guard_reward.serving.ray_env.replica_grpc_on_loopback"


def test_the_haproxy_start_script_moves_the_stats_and_metrics_ports_to_loopback(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "frontend prometheus\n    bind :9101\nfrontend http_frontend\n    bind 127.0.0.1:8000\n"
        "listen stats\n  bind *:8404\n"
    )
    script = ray_env.loopback_haproxy(str(tmp_path))
    out = subprocess.run([script, "-f", str(config), "-v"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "HAProxy version" in out.stdout + out.stderr  # the real binary ran
    binds = [line.split()[1] for line in config.read_text().splitlines() if "bind" in line]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]


def test_the_replica_grpc_server_binds_loopback(monkeypatch):
    pytest.importorskip("ray.serve")
    from ray.serve._private import replica

    bound = []
    monkeypatch.setattr(
        replica, "add_port_to_grpc_server", lambda server, address: bound.append(address) or 1
    )
    ray_env.replica_grpc_on_loopback()
    ray_env.replica_grpc_on_loopback()  # twice (a reused worker): wrapped once
    assert replica.add_port_to_grpc_server(None, "[::]:0") == 1
    replica.add_port_to_grpc_server(None, "10.0.0.5:7000")  # an address asked for stays
    assert bound == ["127.0.0.1:0", "10.0.0.5:7000"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process command lines are read from /proc")
def test_processes_using_a_folder_are_found_by_their_command_line(tmp_path):
    marker = str(tmp_path / "grhap_x")
    proc = subprocess.Popen(["sh", "-c", "sleep 300", marker])
    try:
        deadline = time.monotonic() + 10  # the child's command line is the new one only once it has exec'd
        while not ray_env.processes_using(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = ray_env.processes_using(marker)
        assert list(found) == [proc.pid]
        assert ray_env.processes_using("") == {}
        assert ray_env.end_leftovers(found, grace_s=5) == 1 and ray_env.alive(found) == []
    finally:
        proc.kill()
        proc.wait()
