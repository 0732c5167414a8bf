"""Two GRPO ranks (torchrun, CPU, gloo) whose rewards all point at one served guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard_reward.serving.ray_env import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_train_against_one_server(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "tests.serving.grpo_ranks", server.url, str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["global_step"] == 1
        assert r["gen_requests"] > 0 and r["stream_requests"] > 0  # every rank asked the one server
        assert r["slow_unavailable"] > 0  # the timed-out guard's samples were counted, the step completed
        assert "rewards/safety/mean" in r["logged"]
