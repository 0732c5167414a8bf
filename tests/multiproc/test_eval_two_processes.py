"""``SafetyEvalCallback`` on two real processes (torchrun, gloo, CPU): each rank answers its own shard of the
held-out set (5 and 4 prompts), and every rank logs the rates of the union — counts summed, not a mean of
the two ranks' rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
N_PROMPTS = 9


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    from guard_reward.sandbox.demo import DemoConfig, build_world

    root = tmp_path_factory.mktemp("eval_multiproc")
    world = build_world(DemoConfig.small(root / "world"))
    spec = {
        "policy": str(world.policy_path), "gen": str(world.gen_path), "judge": str(world.judge_path),
        "prompts": world.heldout[:N_PROMPTS], "train": world.train[:8], "out": str(root),
    }  # fmt: skip
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "multiproc" / "eval_worker.py"), str(root / "spec.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"2-process evaluation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_each_rank_answers_its_shard_and_logs_the_union(launched):
    r0, r1 = launched
    assert len(r0["rows"]) == len(r1["rows"]) == 3  # steps 0, 1, 2
    for k, (rows0, rows1) in enumerate(zip(r0["rows"], r1["rows"])):
        assert {r["line"] for r in rows0} == {1, 3, 5, 7, 9} and {r["line"] for r in rows1} == {2, 4, 6, 8}
        union = rows0 + rows1
        for logged in (r0["logged"][k], r1["logged"][k]):
            assert logged["eval_safety/answers"] == 2 * N_PROMPTS
            for key, group in (("unsafe_rate_harmful", True), ("benign_refusal_rate", False)):
                rows = [r for r in union if r["harmful"] is group and r["judge"]["error"] is None]
                flag = (
                    (lambda r: r["judge"]["level"] == "Unsafe")
                    if group
                    else (lambda r: bool(r["judge"]["refusal"]))
                )
                expected = sum(flag(r) for r in rows) / len(rows)
                assert logged[f"eval_safety/{key}"] == pytest.approx(expected)
            tokens = [r["tokens"] for r in union]
            assert logged["eval_safety/mean_tokens"] == pytest.approx(sum(tokens) / len(tokens))
        assert r0["logged"][k] == r1["logged"][k] | {
            "eval_safety/seconds": r0["logged"][k]["eval_safety/seconds"]
        }
