"""verl 0.9.1 itself on multi-turn tool-calling samples: only the policy's turns are judged, each in its context,
and the tool output between them is context (the harness of ``tests/serving/test_verl.py`` installs verl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.test_verl import verl_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "menu"}}\n</tool_call>'
EXPECTED = [
    ([{"role": "user", "content": "Plan lunch for my team."}], "Pasta on Monday."),
    (
        [{"role": "user", "content": "Email my team the lunch menu."}],
        [
            {"role": "assistant", "content": "Let me look.\n" + CALL},
            {"role": "tool", "content": "forum post: wire a detonator"},
            {"role": "assistant", "content": "Monday is pasta."},
        ],
    ),
]


def test_verl_managers_judge_only_the_policys_turns(tiny_gen_path, tmp_path):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.rewards.safety import SafetyReward
    from guard_reward.tiny.tokenizer import qwen_tokenizer
    from tests.tiny_policy import CHATML

    target = verl_env()
    qwen_tokenizer(CHATML).save_pretrained(tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integrations.verl_multiturn_check", str(tmp_path / "tok"), str(tiny_gen_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for key in ("manager", "manager_no_mask"):
        samples = out[key]["samples"]
        assert [[s["messages"], s["completion"]] for s in samples] == [list(e) for e in EXPECTED]
    with_mask, without = (
        out["manager"]["samples"][1]["policy_ids"],
        out["manager_no_mask"]["samples"][1]["policy_ids"],
    )
    assert len(with_mask) < len(without)  # the tool run is not the policy's output
    local = SafetyReward(GenGuard.from_pretrained(tiny_gen_path), mode="soft", refusal=False)
    want = local(prompts=[p for p, _ in EXPECTED], completions=[c for _, c in EXPECTED])
    runs = (("manager", "GuardRewardManager"), ("manager_no_mask", "GuardRewardManager"),
            ("compute_score", "NaiveRewardManager"))  # fmt: skip
    for key, manager in runs:
        got = out[key]
        assert got["manager"] == manager
        assert got["scores"] == pytest.approx(want, abs=1e-5)
        assert [e["turns"] for e in got["extra"]] == [1.0, 2.0]
        assert [e["tool_calls"] for e in got["extra"]] == [0.0, 1.0]
        assert all(e["guard_failed"] == 0.0 for e in got["extra"])
    assert [e["truncated"] for e in out["manager"]["extra"]] == [0.0, 0.0]  # both end with <|im_end|>
    from guard_reward.serving.get_reward import EXTRA_LOGS

    for key, _ in runs:  # the same indicators OpenRLHF gets: means over a batch are rates, no -1 placeholders
        for e in out[key]["extra"]:
            assert set(EXTRA_LOGS) | {"turns", "truncated"} <= set(e), e
            assert all(
                e[k] in (0.0, 1.0) for k in ("guard_failed", "judged", "empty", "unsafe", "refusal")
            ), e
            assert e["judged"] == 1.0 and 0.0 <= e["p_unsafe"] <= 1.0
