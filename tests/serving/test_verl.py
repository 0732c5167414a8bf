"""verl 0.9.1 itself (installed next to .venv in ``.venv-verl091``: its transformers pin conflicts with ours)
running its reward loop on a hand-built DataProto against the served guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / ".venv-verl091"
#: verl and the pins of its own that differ from ours (the rest of its imports are satisfied by .venv).
PACKAGES = [
    "verl==0.9.1", "transformers==5.10.4", "tokenizers==0.22.2", "huggingface_hub==1.16.0", "tensordict==0.10.0",
    "pyvers==0.2.3", "omegaconf==2.4.0", "hydra-core==1.3.8", "antlr4-python3-runtime==4.9.3", "codetiming==1.4.0",
    "pylatexenc==2.11", "httpx==0.28.1", "httpcore==1.0.9", "cloudpickle==3.1.1", "orjson==3.13.0",
]  # fmt: skip


def verl_env() -> Path:
    if (TARGET / "verl-0.9.1.dist-info").exists() or list(TARGET.glob("verl-0.9.1.dist-info")):
        return TARGET
    partial = TARGET.with_name(TARGET.name + ".partial")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(partial),
        *PACKAGES,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"could not install verl 0.9.1 into {TARGET} (no package index?): {proc.stderr[-500:]}")
    partial.rename(TARGET)
    return TARGET


def test_verl_reward_loop_with_guard_manager_and_compute_score(server, tmp_path):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.rewards.safety import SafetyReward
    from guard_reward.tiny.tokenizer import qwen_tokenizer
    from tests.tiny_policy import CHATML

    target = verl_env()
    qwen_tokenizer(CHATML).save_pretrained(tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.serving.verl_check", server.url, str(tmp_path / "tok")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["transformers"] == "5.10.4"  # verl's own pin, not ours
    local = SafetyReward(
        GenGuard.from_pretrained(server.gen_path, device="cpu", dtype="float32"), mode="soft", refusal=False
    )
    for key, manager in (("manager", "GuardRewardManager"), ("compute_score", "NaiveRewardManager")):
        got = out[key]
        assert got["manager"] == manager
        want = local(
            prompts=[[{"role": "user", "content": p}] for p in out["prompts"]], completions=out["responses"]
        )
        assert got["scores"] == pytest.approx(want, abs=1e-5)
        assert all(e["guard_failed"] == 0.0 and 0.0 <= e["p_unsafe"] <= 1.0 for e in got["extra"])
        for row, score in zip(got["rm_scores"], got["scores"], strict=True):  # the score at the last token
            nonzero = [v for v in row if v != 0.0]
            assert nonzero == pytest.approx([score])
