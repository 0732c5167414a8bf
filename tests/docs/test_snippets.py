"""Every code block of README.md and docs/*.md that a user would run is run here, as written, on the tiny
stand-ins (the rule: tests/docs/snippets.py and docs/architecture.md#documentation-conventions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.snippets import PYTHON, SHELL, blocks, doc_line, pages, problems, python_script, run_shell

RUNNABLE = [p for p in pages() if any(b.kind == "run" for b in blocks(p))]


def test_every_block_is_run_or_marked_with_a_reason():
    found = [problem for page in pages() for block in blocks(page) for problem in problems(block)]
    assert not found, "\n".join(found)


def test_the_rule_rejects_unmarked_unknown_languages_and_markers_without_reasons(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```ini\n[x]\n```\n\n<!-- not-run: -->\n```python\nx = 1\n```\n\n<!-- not-run: needs a GPU -->\n"
        "```bash\nnvidia-smi\n```\n\n```text\nan output\n```\n\n  ```python\n  y = 2\n  ```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.kind) for b in found] == [
        ("ini", "run"),
        ("python", "not-run"),
        ("bash", "not-run"),
        ("text", "data"),
        ("python", "run"),
    ]
    assert found[4].code == "y = 2\n"  # a fence indented in a list: the indentation is not the code's
    assert "cannot be run" in problems(found[0])[0]
    assert "needs a reason" in problems(found[1])[0]
    assert problems(found[2]) == problems(found[3]) == problems(found[4]) == []
    script, starts = python_script(found)
    assert script.splitlines()[1] == "y = 2" and doc_line(starts, 2) == "page.md:20"


def run_page(page: Path, env: dict[str, str], cwd: Path) -> str:
    """Run ``page``'s Python blocks in one interpreter, then its shell blocks; the combined output. A failure
    names the documentation line it came from."""
    page_blocks = [b for b in blocks(page) if b.kind == "run"]
    script, starts = python_script(page_blocks)
    env = {**os.environ, **env}
    output = ""
    if script:
        (cwd / "snippets.py").write_text(script)
        done = subprocess.run(
            [sys.executable, "snippets.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
        )
        output += done.stdout + done.stderr
        if done.returncode:
            lines = [int(n) for n in re.findall(r'File "[^"]*snippets\.py", line (\d+)', done.stderr)]
            where = doc_line(starts, lines[-1]) if lines else "?"
            pytest.fail(f"the Python of {page.name} failed at {where}:\n{output[-6000:]}")
    for block in (b for b in page_blocks if b.lang in SHELL):
        done = run_shell(block.code, cwd, env, timeout=900)
        output += done.stdout + done.stderr
        if done.returncode:
            pytest.fail(f"the shell block at {block.where} failed ({done.returncode}):\n{output[-6000:]}")
    return output


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_the_page_runs_as_written(page, doc_env, tmp_path):
    start = time.perf_counter()
    run_page(page, doc_env, tmp_path)
    runnable = [b for b in blocks(page) if b.kind == "run" and b.lang in PYTHON | SHELL]
    print(f"{page.name}: {len(runnable)} blocks in {time.perf_counter() - start:.1f} s")
