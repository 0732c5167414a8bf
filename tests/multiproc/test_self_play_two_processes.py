"""SelfPlayTrainer on two real processes (``torchrun --nproc_per_node 2``, gloo, CPU): the round's attacks are
gathered from both processes, so the defender's mixture and the novelty memory are the same on each; both sides'
weights stay the same on each (DDP); a fresh loop resumed from the saved state continues both trainers and the
memory (:func:`tests.multiproc.self_play_scenario.run_scenario`).

The defender is a ``ConstrainedGRPOTrainer``: its costs are gathered from both processes, so λ, the two
per-process cost windows and the counters are identical on each process after every round, each round's
checkpoint carries them, and the resumed loop's λ takes its next step from round 2's λ, not from ``lambda_init``."""

from __future__ import annotations

import itertools
import json
import math
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


def test_constrained_defender_state_is_the_same_on_both_processes_and_resumes(ranks):
    from tests.multiproc.self_play_scenario import LAMBDA_LR, THRESHOLD

    a, b = ranks
    # after rounds 1 and 2 (first loop) and round 3 (resumed loop): λ, both windows, the counters
    states = a["constraint"]
    assert len(states) == 3 and states == b["constraint"]
    for r, s in enumerate(states, 1):
        assert s["offered"] == s["updates"] == r and s["skipped"] == s["missing"] == 0, s
        # each process's 8 completions per step went to its own window: 2 windows, 8 costs more per round
        assert [len(w) for w in s["windows"]] == [8 * r, 8 * r]
    assert states[-1]["windows"][0] != states[-1]["windows"][1]  # two processes' costs, not one copied
    for before, after in itertools.pairwise(states):
        assert all(w1[: len(w0)] == w0 for w0, w1 in zip(before["windows"], after["windows"]))
    # the checkpoint of each round (read by the next round and by the resume) holds that round's state
    assert a["checkpoint_constraint"] == {"checkpoint-1": states[0], "checkpoint-2": states[1]}
    # λ left lambda_init, and each round (the resumed third too) took one step from the round before's λ on
    # the pooled windows of both processes
    assert states[0]["log_lambda"] != math.log(1.0)
    for before, after in itertools.pairwise(states):
        pooled = [c for w in after["windows"] for c in w]
        lam = math.exp(before["log_lambda"])
        expected = before["log_lambda"] + LAMBDA_LR * (sum(pooled) / len(pooled) - THRESHOLD) * lam
        assert after["log_lambda"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    lams = [math.exp(s["log_lambda"]) for s in states]
    assert [e["constraint/lambda"] for e in a["defender_log"]] == pytest.approx(lams)
    assert [e["constraint/lambda"] for e in b["defender_log"]] == pytest.approx(lams)
    assert [h["defender:constraint/lambda"] for h in a["resumed_history"]] == pytest.approx(lams)
