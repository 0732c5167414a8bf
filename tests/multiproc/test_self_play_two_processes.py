"""SelfPlayTrainer on two real processes (``torchrun --nproc_per_node 2``, gloo, CPU): the round's attacks are
gathered from both processes, so the defender's mixture and the novelty memory are the same on each; both sides'
weights stay the same on each (DDP); a fresh loop resumed from the saved state continues both trainers and the
memory (:func:`tests.multiproc.self_play_scenario.run_scenario`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, trained_gen_path) -> list[dict]:
    from tests.integrations.ppo_tiny import build_tiny_policy

    root = tmp_path_factory.mktemp("self_play_2p")
    spec = {"policy": str(build_tiny_policy(root / "policy")), "gen": str(trained_gen_path), "stream": "",
            "out": str(root / "out"), "scenarios": ["self_play"]}  # fmt: skip
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "multiproc" / "worker.py"), str(root / "spec.json")]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"2-process self-play did not finish in {LAUNCH_TIMEOUT_S}s:\n{(exc.stderr or '')[-3000:]}"
        )
    if proc.returncode != 0:
        pytest.fail(f"2-process self-play failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    print(f"2-process self-play: {time.perf_counter() - start:.0f} s wall")
    out = root / "out" / "self_play"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_both_processes_train_on_the_same_mixture_and_memory(ranks):
    a, b = ranks
    assert a["mixtures"] == b["mixtures"] and len(a["mixtures"]) == 2
    # 8 prompts per round over both processes: 4 attack slots, 2 benign, the rest fixed harmful prompts
    assert all(len(m) == 8 and sum(s == "benign" for _, s in m) == 2 for m in a["mixtures"])
    assert a["memory"] == b["memory"]
    # the round's attacks were gathered: 8 seeds x 2 generations per step over both processes
    assert [r["attacks"] for r in a["history"]] == [16.0, 16.0]


def test_weights_stay_in_sync_and_a_resumed_loop_continues(ranks):
    a, b = ranks
    assert a["digests"] == b["digests"] and a["resumed_digests"] == b["resumed_digests"]
    assert a["resumed_digests"] != a["digests"]  # the third round trained both sides
    assert a["resumed_steps"] == b["resumed_steps"] == [3, 3]
    assert a["resumed_memory"][: len(a["memory"])] == a["memory"]
    assert len(a["attacker_log"]) == 3 and all("attack/success_rate" in e for e in a["attacker_log"])
    assert len(a["defender_log"]) == 3 and all("guard/unsafe_rate" in e for e in a["defender_log"])
