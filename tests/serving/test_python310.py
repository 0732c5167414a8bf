"""Python 3.10, the oldest interpreter ``requires-python`` admits (verl's and OpenRLHF's environments often run
it): the library's sources compile under it, and the ingress's request merging — plain asyncio, where 3.10 and
3.11 differ (``asyncio.TimeoutError`` is not the builtin ``TimeoutError`` before 3.11) — runs under it.

Runs where a 3.10 interpreter is on the machine (``python3.10`` on PATH or a pyenv 3.10); skipped, saying so,
elsewhere. The rest of the suite needs torch, which is installed for the project's own interpreter only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python310() -> str | None:
    candidates = [
        shutil.which("python3.10"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10"))),
    ]
    for path in candidates:
        if path and subprocess.run([path, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
                                   capture_output=True).returncode == 0:  # fmt: skip
            return path
    return None


PY310 = python310()
pytestmark = pytest.mark.skipif(PY310 is None, reason="no Python 3.10 interpreter on this machine")


def test_every_source_file_compiles_under_python_310():
    code = (
        "import pathlib, sys\n"
        "bad = []\n"
        "for root in sys.argv[1:]:\n"
        "    for f in sorted(pathlib.Path(root).rglob('*.py')):\n"
        "        try:\n"
        "            compile(f.read_text(encoding='utf-8'), str(f), 'exec')\n"
        "        except SyntaxError as exc:\n"
        "            bad.append(f'{f}:{exc.lineno}: {exc.msg}')\n"
        "print(len(bad), *bad, sep='\\n')\n"
    )
    roots = [str(ROOT / "guard_reward"), str(ROOT / "integrations"), str(ROOT / "tests")]
    out = subprocess.run([PY310, "-c", code, *roots], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split("\n")[0] == "0", out.stdout + out.stderr


def test_request_merging_answers_every_caller_under_python_310(tmp_path):
    """Concurrent callers, batches sealed by the quiet gap and the wait limit (the timeout path of the wait
    loop), a second burst after the first: every caller gets its own result. Under 3.10 the old
    ``suppress(TimeoutError)`` let ``asyncio.TimeoutError`` kill the worker and every caller hung."""
    script = tmp_path / "merge310.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, importlib.util, sys
            assert sys.version_info[:2] == (3, 10), sys.version
            spec = importlib.util.spec_from_file_location("batcher", {str(ROOT / "guard_reward/serving/batcher.py")!r})
            batcher = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(batcher)
            calls = []

            async def run(items):
                calls.append(len(items))
                await asyncio.sleep(0.01)
                return [2 * x for x in items]

            async def main():
                b = batcher.RequestBatcher(run, max_batch_size=4, max_wait_s=0.05, quiet_s=0.02)
                first = await asyncio.gather(*(b.submit(i) for i in range(10)))
                await asyncio.sleep(0.1)
                second = await asyncio.gather(*(b.submit(i) for i in range(10, 13)))
                return first + second

            results = asyncio.run(asyncio.wait_for(main(), 20))
            assert results == [2 * i for i in range(13)], results
            assert sum(calls) == 13 and max(calls) <= 4, calls
            print("ok", calls)
            """
        )
    )
    out = subprocess.run([PY310, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
