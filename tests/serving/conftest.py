"""One real local Ray Serve application for the whole serving test session (startup costs ~15 s).

A real local Ray (``ray.init(num_cpus=2)``), all of it on loopback, started as ``guard-reward serve`` starts it (HAProxy in
front), with the tiny Gen and Stream checkpoints: Serve's local testing mode has neither HTTP nor replicas to kill.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pytest

from guard_reward.serving.ray_env import HAPROXY_FOLDER_PREFIX, free_port, ray_init_kwargs, use_serve_env
from tests.guards import stream_ckpt

use_serve_env(
    host="127.0.0.1"
)  # the HTTP front `guard-reward serve` starts with; read when Ray's processes (this one too) start
pytest.importorskip("ray.serve", reason="the serving tests need ray[serve] (the serve extra)")


@dataclass
class Server:
    url: str
    gen_path: str
    stream_path: str
    options: object = None
    port: int = 0

    def restart(self) -> None:
        """Stop Serve (proxy and replicas) and start the same application on the same port again."""
        from ray import serve

        from guard_reward.serving.app import build, wait_healthy

        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build(self.options), name="guard_reward", route_prefix="/")
        wait_healthy(self.url, timeout=120)


@pytest.fixture(scope="session")
def server(tiny_gen_path) -> Server:
    pytest.importorskip("ray.serve", reason="the serving tests need ray[serve] (the serve extra)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build, wait_healthy

    stream_path = stream_ckpt.path("single")
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        **ray_init_kwargs("127.0.0.1"),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = ServeOptions(
        gen=str(tiny_gen_path),
        stream=str(stream_path),
        cpus_per_replica=0.5,
        max_batch_size=32,
        batch_wait_ms=20,
        device="cpu",
        dtype="float32",
        torch_threads=1,
        # the random tiny Gen cannot decode verdict lines, so /get_reward values label probabilities
        reward_config={"guard_mode": "soft", "refusal": False},
    )
    serve.run(build(options), name="guard_reward", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=120)
    yield Server(url, str(tiny_gen_path), str(stream_path), options, port)
    serve.shutdown()
    ray.shutdown()
    folder = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""))
    if os.path.basename(folder).startswith(HAPROXY_FOLDER_PREFIX):  # this session's HAProxy files
        shutil.rmtree(folder, ignore_errors=True)
