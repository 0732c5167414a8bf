"""The code blocks of README.md and docs/*.md, as the documentation tests run them.

The rule (also in docs/architecture.md, "Documentation conventions"):

- A fenced block is **run** when its language is ``python`` or ``bash`` (``sh``, ``shell``), unless the line
  right before its opening fence is ``<!-- not-run: reason -->`` (the reason is required) or
  ``<!-- run-by: tests/path.py -->`` (another test runs it: that file must exist and name the page).
- Blocks that show **data or output**, not commands, are never run and need no marker: no language, ``text``,
  ``json``, ``jsonl``, ``yaml``/``yml``, ``csv``, ``toml``, ``output``.
- Any other language needs a marker: the test fails on a block it can neither run nor knows to be data.
- The Python blocks of a page run **in order, in one fresh interpreter** (later blocks may use names from
  earlier ones, as a reader continuing the page would), in an empty temporary folder, then the page's shell
  blocks run there in order (``bash -euo pipefail``, the environment's ``bin`` first on ``PATH``). Hub ids of
  the real models resolve offline to the tiny stand-ins (:mod:`guard_reward.tiny.hub_cache`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
DATA = {"", "text", "json", "jsonl", "yaml", "yml", "csv", "toml", "output"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|run-by)\s*(?::\s*(?P<text>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, the line of its opening fence (1-based), language, code (indentation of
    the fence removed) and its marker (``kind``: ``"run"``, ``"not-run"``, ``"run-by"``, ``"data"``)."""

    page: Path
    line: int
    lang: str
    code: str
    kind: str
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def pages() -> list[Path]:
    """README.md and every page in docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``; raises ``ValueError`` naming the line for an unclosed fence."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m["indent"], m["ticks"], m["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{_name(page)}:{start + 1}: code fence never closed")
        i += 1
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        if marker:
            kind, reason = marker["kind"], (marker["text"] or "").strip()
        else:
            kind, reason = ("data" if lang in DATA else "run"), ""
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", kind, reason))
    return out


def problems(block: Block) -> list[str]:
    """What is wrong with a block's marking (empty when it is fine)."""
    if block.kind == "not-run" and not block.reason:
        return [f"{block.where}: a not-run marker needs a reason (<!-- not-run: why -->)"]
    if block.kind == "run-by":
        test = ROOT / block.reason
        if not block.reason or not test.is_file():
            return [f"{block.where}: run-by names no test file of the repository ({block.reason!r})"]
        if block.page.name not in test.read_text():
            return [
                f"{block.where}: {block.reason} does not name {block.page.name}, so it cannot run this block"
            ]
    if block.kind == "run" and block.lang not in PYTHON | SHELL:
        return [
            f"{block.where}: a ```{block.lang} block cannot be run; mark it <!-- not-run: reason --> or use "
            f"one of {sorted(PYTHON | SHELL)} (or a data language: {sorted(DATA - {''})})"
        ]
    return []


def python_script(page_blocks: list[Block]) -> tuple[str, list[tuple[int, Block]]]:
    """The page's runnable Python blocks joined into one script, and where each starts in it (script line)."""
    parts, starts, line = [], [], 1
    for block in page_blocks:
        if block.kind != "run" or block.lang not in PYTHON:
            continue
        header = f"# --- {block.where}\n"
        starts.append((line + 1, block))
        parts.append(header + block.code)
        line += header.count("\n") + block.code.count("\n")
    return "".join(parts), starts


def doc_line(starts: list[tuple[int, Block]], script_line: int) -> str:
    """The page and line of the documentation that a line of :func:`python_script`'s output came from."""
    where = None
    for first, block in starts:
        if script_line >= first:
            where = f"{_name(block.page)}:{block.line + script_line - first + 1}"
    return where or f"script line {script_line}"


def stand_in_env(folder: Path) -> dict[str, str]:
    """Environment variables for a documentation snippet: the smoke stand-ins (cached across sessions, see
    ``guard_reward.tiny.smoke``) laid out in a fresh Hugging Face cache in ``folder`` under the real models' hub
    ids, offline, and the test environment's ``bin`` first on ``PATH`` (``guard-reward``, ``trl``)."""
    import os
    import sys

    from guard_reward.tiny.hub_cache import build_hub_cache, hub_cache_env
    from guard_reward.tiny.smoke import smoke_assets

    assets = smoke_assets({"guard_stream": True, "tools": True}, progress=False)
    env = hub_cache_env(build_hub_cache(folder / "hub", assets))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return env


def run_shell(code: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """A shell block as a reader would paste it: ``bash -euo pipefail``, output captured."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
