"""The core library resolves together with verl 0.9.1 (transformers <5.11) without pulling TRL: pip's own
resolver, ``--dry-run``, against verl's pins (skipped, with the reason, when no package index answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_core_install_into_a_verl_environment_keeps_verls_pins(tmp_path):
    report = tmp_path / "report.json"
    torch_pin = f"torch=={torch.__version__}"  # the torch a verl CPU environment already has
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "verl==0.9.1", torch_pin, str(ROOT)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and (
        "No matching distribution" in proc.stderr or "connection" in proc.stderr.lower()
    ):
        pytest.skip(f"no package index for the resolver: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert chosen["guard-reward"] and chosen["verl"] == "0.9.1"
    major, minor = (int(x) for x in chosen["transformers"].split(".")[:2])
    assert (major, minor) < (5, 11), chosen["transformers"]  # verl's pin holds
    assert "trl" not in chosen  # the core does not drag TRL in
