"""OpenRLHF's reward-file protocol against the served guard, and what importing the clients costs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_openrlhf_reward_func_file_calls_the_service(server, monkeypatch, tmp_path):
    """OpenRLHF 0.11 loads the file given to --reward.remote_url and calls reward_func(queries, prompts, labels)
    with one-element lists (documented format; OpenRLHF itself needs CUDA and is not installed here)."""
    monkeypatch.setenv("GUARD_REWARD_URL", server.url)
    # the random tiny Gen cannot decode verdict lines: value label probabilities, as the server does
    (tmp_path / "reward.yaml").write_text("guard_mode: soft\nrefusal: false\n")
    monkeypatch.setenv("GUARD_REWARD_CONFIG", str(tmp_path / "reward.yaml"))
    path = ROOT / "integrations" / "openrlhf" / "reward_func.py"
    spec = importlib.util.spec_from_file_location("openrlhf_reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    out = module.reward_func([prompt + "Mix flour and water.<|im_end|>"], [prompt], [None])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].shape == (1,) and out["rewards"].dtype == torch.float32
    assert torch.equal(out["rewards"], out["scores"])
    assert out["extra_logs"]["guard_failed"].tolist() == [0.0]
    # the same sample over HTTP (--reward.remote_url http://HOST:PORT/get_reward) gives the same reward
    from tests.serving.test_service import post

    status, body = post(
        f"{server.url}/get_reward",
        {"query": [prompt + "Mix flour and water.<|im_end|>"], "prompts": [prompt], "labels": [None]},
    )
    assert status == 200 and body["rewards"] == pytest.approx(out["rewards"].tolist(), abs=1e-6)


def test_remote_clients_import_without_transformers_trl_or_ray():
    code = (
        "import sys\n"
        "from guard_reward import RemoteGenGuard, RemoteStreamGuard\n"
        "import guard_reward.integrations.verl.compute_score, guard_reward.integrations.openrlhf.reward_func\n"
        "print([m for m in ('transformers', 'trl', 'ray') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
