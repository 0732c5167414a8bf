"""The documentation holds together: every relative link and anchor in README.md and docs/ resolves, and the
README stays a short front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/demo_report.md is a copy of a demo run's report: its links point into that run's folder, not into docs/.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "demo_report.md")]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (code fences skipped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.+)$", text, re.M)
    }


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_door_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12 * 1024, "README.md should stay under 12 KB: put details in docs/"
    linked = {Path(t.partition("#")[0]).name for t in links(ROOT / "README.md")}
    pages = {p.name for p in PAGES[1:]}
    assert pages <= linked, f"docs pages not linked from README.md: {sorted(pages - linked)}"
    assert "make demo" in readme and "make test" in readme
