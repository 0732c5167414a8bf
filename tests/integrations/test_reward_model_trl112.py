"""GuardRewardModel against TRL 1.12.0's own ``get_reward`` and ``PPOTrainer``, in a separate interpreter.

TRL 1.12.0 is installed once (``pip install --no-deps --target .venv-trl112 trl==1.12.0``, ~1 MB, a few
seconds) and put in front of the main environment on ``PYTHONPATH``, so it runs with exactly the pinned torch,
transformers and accelerate of ``.venv`` while ``.venv`` itself keeps trl 1.16.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRL_OLD = "1.12.0"
REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / ".venv-trl112"
SCRIPT = Path(__file__).with_name("trl112_ppo_check.py")


@pytest.fixture(scope="session")
def trl112_overlay() -> Path:
    """The folder holding trl 1.12.0 (built on first use; reused while its dist-info is there)."""
    if (OVERLAY / f"trl-{TRL_OLD}.dist-info").is_dir():
        return OVERLAY
    staging = OVERLAY.with_name(OVERLAY.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(staging), f"trl=={TRL_OLD}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"could not install trl=={TRL_OLD} for the compatibility test: {done.stderr[-500:]}")
    shutil.rmtree(OVERLAY, ignore_errors=True)
    staging.rename(OVERLAY)
    return OVERLAY


@pytest.mark.slow
def test_guard_reward_model_in_trl112_ppo_trainer(trl112_overlay, tiny_gen_path, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(trl112_overlay), str(REPO)]),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(tiny_gen_path)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])

    assert result["trl_version"] == TRL_OLD
    assert result["trl_file"].startswith(str(trl112_overlay))

    # TRL's get_reward on hand-built ids reads, at each row's last real token, what the reward function
    # returned; the function saw the original messages, the response text and the response ids (EOS included).
    direct = result["direct"]
    expected_ids = direct["expected_completion_ids"]
    assert direct["call"]["prompts"] == result["prompts"][:2]
    assert direct["call"]["completions"] == [
        [{"role": "assistant", "content": "Use a wrench."}],
        [{"role": "assistant", "content": "Ask a shop"}],
    ]
    assert direct["call"]["completion_ids"] == expected_ids
    assert direct["scores"] == [len(ids) + 0.5 for ids in expected_ids]
    assert direct["dtype"] == "torch.float32"
    assert direct["last_metrics"] == {"guard/test_rate": 0.25}

    # A PPO run scored by SafetyReward (tiny Gen guard): one guard call per update, and the score PPOTrainer
    # logged is the mean of what the guard reward returned for that batch.
    calls, logged = result["ppo_calls"], result["logged_scores"]
    assert len(calls) == len(logged) == 2
    for call, score in zip(calls, logged, strict=True):
        assert all(p in result["prompts"] for p in call["prompts"])
        assert all(-1.0 <= s <= 1.0 for s in call["scores"])
        assert score == pytest.approx(sum(call["scores"]) / len(call["scores"]), rel=1e-5)
