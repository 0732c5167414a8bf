"""notebooks/quickstart.ipynb runs top to bottom and shows what it says it shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes_with_the_expected_outputs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # verdicts with probabilities for both moderation kinds, and the raw verdict lines
    assert "prompt" in text and "response" in text and "Unsafe" in text
    assert "Safety: Unsafe\nCategories: Violent\nRefusal: No" in text
    # per-token risk and the evaluation summary
    assert "p(Unsafe):" in text and "before RL" in text and "dense" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # token heatmap, comparison curves, the guard-logged curves
    assert (tmp_path / "runs" / "quickstart" / "report.md").exists()


def test_the_notebook_claims_no_time_a_slow_machine_misses():
    import re

    text = (Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb").read_text()
    assert "about a minute" not in text
    for claim in re.findall(r"[^.\n]*\bminutes?\b[^.\n]*", text):
        assert "2-core" in claim, f"a timing claim names the machine it was measured on: {claim}"
