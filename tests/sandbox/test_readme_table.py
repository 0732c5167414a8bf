"""The sandbox page's demo table is the committed demo report's own table, and that report is the current demo's."""

from __future__ import annotations

from pathlib import Path

from guard_reward.sandbox.demo import DemoConfig
from guard_reward.sandbox.figures import ARM_TITLES

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "demo_report.md"
SANDBOX_PAGE = ROOT / "docs" / "sandbox.md"


def table_after(text: str, heading: str) -> list[str]:
    """The markdown table that follows ``heading`` (its contiguous ``|`` lines)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows


def test_sandbox_page_demo_table_equals_the_committed_report():
    report = REPORT.read_text()
    table = table_after(report, "## Before and after")
    assert len(table) >= 8
    assert "\n".join(table) in SANDBOX_PAGE.read_text(), (
        "docs/sandbox.md's demo table differs from docs/demo_report.md: copy the report's 'Before and after' table"
    )


def test_committed_report_has_the_default_arms_and_stage_times():
    report = REPORT.read_text()
    header = table_after(report, "## Before and after")[0]
    assert header == "| | before RL | " + " | ".join(ARM_TITLES[a] for a in DemoConfig().arms) + " |"
    assert "| stage | wall s | CPU s |" in report
    assert "## Safety as a constraint" in report
