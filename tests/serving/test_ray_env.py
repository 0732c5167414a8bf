"""The environment a local Ray for the service starts with (``guard-reward serve --proxy``), and finding the
processes a stopped Ray left behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from guard_reward.serving import ray_env
from guard_reward.serving.ray_env import alive, descendants, end_leftovers

KEYS = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for key in KEYS:  # the serving conftest set them for this session's server
        monkeypatch.delenv(key, raising=False)


def test_haproxy_front_with_its_own_stats_ports(clean_env):
    assert ray_env.haproxy_available()  # ray[serve] ships the binary on Linux
    env = ray_env.serve_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
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
