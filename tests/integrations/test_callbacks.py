"""SafetyCurvesCallback: CSV rows per logging step (header widened when a metric appears), PNG at the end."""

from __future__ import annotations

import csv

from transformers import TrainerControl, TrainerState, TrainingArguments

from guard_reward.integrations.trl import SafetyCurvesCallback


def test_csv_and_png(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    cb = SafetyCurvesCallback(plot_every=2)
    cb.on_train_begin(args, state, control)
    state.global_step = 1
    cb.on_log(args, state, control, logs={"loss": 1.0, "guard/unsafe_rate": 0.5, "reward": 0.1})
    state.global_step = 2
    cb.on_log(args, state, control, logs={"guard/unsafe_rate": 0.25, "guard/refusal_rate_benign": 0.1})
    png = tmp_path / "run" / "safety_curves.png"
    assert png.exists()  # plot_every=2
    png.unlink()
    state.global_step = 3
    cb.on_log(args, state, control, logs={"train_runtime": 3.0})  # nothing to keep: no row
    cb.on_log(args, state, control, logs={"guard/unsafe_rate": 0.0, "reward": 0.4})
    cb.on_train_end(args, state, control)
    assert png.exists()
    with open(tmp_path / "run" / "safety_curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1.0", "2.0", "3.0"]
    assert [r["guard/unsafe_rate"] for r in rows] == ["0.5", "0.25", "0.0"]
    assert [r["guard/refusal_rate_benign"] for r in rows] == ["", "0.1", ""]
    assert [r["reward"] for r in rows] == ["0.1", "", "0.4"]
    assert "loss" not in rows[0]


def test_other_ranks_write_nothing(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    state = TrainerState()
    state.is_world_process_zero = False
    cb = SafetyCurvesCallback(tmp_path / "curves")
    cb.on_log(args, state, TrainerControl(), logs={"guard/unsafe_rate": 0.5})
    cb.on_train_end(args, state, TrainerControl())
    assert not (tmp_path / "curves").exists()
