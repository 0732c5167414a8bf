"""Safety curves: the PNG is drawn from trainer histories and CSVs, with the expected series."""

from __future__ import annotations

import json

import pytest

from guard_reward.evaluation import plots


def _history(n=5):
    rows = []
    for step in range(1, n + 1):
        rows.append(
            {
                "step": step,
                "loss": 0.5,
                "reward": 0.1 * step,
                "rewards/safety/mean": 0.1 * step,
                "guard/safe_rate": 0.5 + 0.05 * step,
                "guard/unsafe_rate": 0.5 - 0.05 * step,
                "guard/controversial_rate": 0.0,
                "guard/refusal_rate_benign": 0.1,
                "guard/category/violent": 0.2,
            }
        )
    rows.append({"step": n, "train_runtime": 12.0})
    return rows


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_from_history(tmp_path):
    out = plots.plot_safety_curves(_history(), tmp_path / "sub" / "curves.png", title="run")
    assert _is_png(out) and out.stat().st_size > 10_000


def test_plot_series_are_read_per_key(tmp_path):
    xs, ys = plots._series(_history(3), "guard/unsafe_rate")
    assert xs == [1.0, 2.0, 3.0]
    assert ys == pytest.approx([0.45, 0.4, 0.35])


def test_plot_rejects_history_without_steps(tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        plots.plot_safety_curves([{"loss": 1.0}], tmp_path / "x.png")


def test_plot_run_prefers_trainer_state_then_checkpoints_then_csv(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": _history(2)}))
    (run / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": _history(4)}))
    assert len(plots.load_log_history(run)) == 5  # newest checkpoint (numeric order, not lexicographic)
    (run / "trainer_state.json").write_text(json.dumps({"log_history": _history(6)}))
    assert len(plots.load_log_history(run)) == 7
    out = plots.plot_run(run)
    assert out == run / "safety_curves.png" and _is_png(out)


def test_load_from_csv_and_missing(tmp_path):
    (tmp_path / "safety_curves.csv").write_text("step,guard/unsafe_rate,reward\n1,0.5,\n2,0.25,0.3\n")
    rows = plots.load_log_history(tmp_path)
    assert rows == [
        {"step": 1.0, "guard/unsafe_rate": 0.5},
        {"step": 2.0, "guard/unsafe_rate": 0.25, "reward": 0.3},
    ]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        plots.load_log_history(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"trainer_state\.json.*safety_curves\.csv"):
        plots.load_log_history(tmp_path / "empty")


def test_eval_and_constraint_rows_are_drawn_with_integer_steps(tmp_path):

    history = _history(4)
    history += [
        {"step": 0, "eval_safety/unsafe_rate_harmful": 0.4, "eval_safety/alarm/length_drift": 0.0},
        {"step": 4, "eval_safety/unsafe_rate_harmful": 0.1, "eval_safety/alarm/length_drift": 1.0},
        {"step": 4, "eval_loss": 0.3},  # the trainer's own evaluation: not a curve
    ]
    for row, lam in zip(history[:4], (1.0, 1.5, 2.0, 2.5)):
        row |= {"constraint/lambda": lam, "constraint/threshold": 0.02}
    assert plots._alarm_steps(history) == {"length_drift": 4.0}
    drawn = []
    original = plots._panel

    def spy(ax, rows, keys, title, *a):
        n = original(ax, rows, keys, title, *a)
        drawn.append((title, n, all(float(t).is_integer() for t in ax.get_xticks())))
        return n

    plots._panel = spy
    try:
        out = plots.plot_safety_curves(history, tmp_path / "c.png")
    finally:
        plots._panel = original
    assert _is_png(out)
    by_title = {t: (n, integer) for t, n, integer in drawn}
    assert by_title["Held-out evaluation"][0] == 1 and by_title["Constraint"][0] == 2
    assert all(integer for _, integer in by_title.values())
