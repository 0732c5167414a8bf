"""The evaluation report on hand-made judged rows: denominators explained, every judge compared, 0% bars drawn,
a short title, the alarms table without a stray row, and a word when answers ran to ``max_new_tokens``."""

from __future__ import annotations

from pathlib import Path

from guard_reward.evaluation.alarms import Alarms
from guard_reward.evaluation.answering import eval_metrics
from guard_reward.evaluation.checkpoint_eval import EvalRun, limit_message
from guard_reward.evaluation.report import write_comparison, write_report
from guard_reward.evaluation.report_plot import ZERO_BAR, rates_figure
from guard_reward.evaluation.stats import wilson
from guard_reward.evaluation.summary import count_rows


def _gen(level: str, refusal: bool | None) -> dict:
    return {"level": level, "refusal": refusal, "categories": [], "error": None, "empty": False}


def _rows(unsafe_harmful: int, cut: int) -> list[dict]:
    """12 benign answers (the Gen judge wrote a Refusal line for 3 of them) and 12 harmful ones;
    ``unsafe_harmful`` of the harmful ones unsafe; the first ``cut`` answers ran to the token limit."""
    rows = []
    for i in range(24):
        harmful = i >= 12
        level = "Unsafe" if harmful and i - 12 < unsafe_harmful else "Safe"
        refusal = (i == 0) if i < 3 else None if not harmful else False
        rows.append({
            "line": i + 1, "sample": 0, "harmful": harmful, "category": "violent" if harmful else None,
            "prompt": f"p{i}", "answer": f"a{i}", "tokens": 256 if i < cut else 40, "stopped_at_limit": i < cut,
            "entropy": 1.0, "ref_nll": 2.0, "judge": _gen(level, refusal),
            "judge2": {"level": "Unsafe" if harmful else "Safe", "refusal": None, "categories": [], "error": None,
                       "empty": False},
        })  # fmt: skip
    return rows


def _run(tmp_path: Path, name: str, unsafe_harmful: int = 0, cut: int = 20) -> EvalRun:
    rows = _rows(unsafe_harmful, cut)
    judges = ["judge", "judge2"]
    out = tmp_path / name
    out.mkdir()
    settings = {"policy": f"/home/me/.cache/guard_reward/smoke-abc/{name}-3d5a", "prompts": "p.jsonl",
                "samples": 1, "max_new_tokens": 256, "do_sample": True, "temperature": 1.0}  # fmt: skip
    return EvalRun(out, dict(count_rows(rows, judges)), judges, {"judge": "/m/gen-1", "judge2": "/m/stream-2"},
                   settings, rows=rows, judge_kinds={"judge": "gen", "judge2": "stream"})  # fmt: skip


def test_the_report_explains_its_denominators_and_the_token_limit(tmp_path):
    run = _run(tmp_path, "policy")
    report = write_report(run).read_text()
    assert report.startswith("# Safety evaluation: policy-3d5a\n")  # the folder's name, not its path
    refusal_row = next(line for line in report.splitlines() if line.startswith("| refusal, benign prompts"))
    assert "(1/3)" in refusal_row and "n/a (a Stream judge gives no refusal)" in refusal_row
    assert "judge: wrote no `Refusal:` line for 9 of 12 benign answers" in report
    assert "second judge: a Qwen3Guard-Stream judges safety token by token and gives no refusal" in report
    assert "20 of 24 stopped at max_new_tokens" in report
    assert "**20 of 24 answers stopped at --max-new-tokens=256 before the policy ended its turn" in report
    assert "(Qwen3Guard-Stream)" in report


def test_the_limit_is_named_only_when_most_answers_reach_it():
    assert limit_message(count_rows(_rows(0, 12), []), 256) is None  # half: no word
    assert limit_message(count_rows(_rows(0, 13), []), 64).startswith("13 of 24 answers stopped at")
    assert limit_message(count_rows([{"tokens": 5}], []), 64) is None  # rows written before it was recorded


def test_alarms_table_has_no_stray_row_and_says_what_fired(tmp_path):
    base, policy = _run(tmp_path, "baseline"), _run(tmp_path, "policy", cut=0)
    policy.counts["tokens_sum"] = policy.counts["tokens_n"] * 600  # answers 2.4x+ longer than the baseline's
    checker = Alarms()
    checker.check(0, eval_metrics(base.counts, base.judges))
    alarms = checker.check(1, eval_metrics(policy.counts, policy.judges))
    report = write_report(policy, alarms, role="policy").read_text()
    assert "| alarms |" not in report and "| alarm/" not in report
    assert "| length_drift | mean answer length, policy / baseline |" in report
    assert "| guard_judge_gap |" in report and "n/a (needs --train-guard)" in report
    assert "Alarms that fired: length_drift." in report
    assert report.startswith("# Safety evaluation: policy-3d5a (policy)")


def test_comparison_compares_every_judge(tmp_path):
    a, b = _run(tmp_path, "policy", unsafe_harmful=6), _run(tmp_path, "baseline", unsafe_harmful=0)
    table = write_comparison(a, b, tmp_path / "comparison.md").read_text()
    assert "## judge: `gen-1` (Qwen3Guard-Gen)" in table
    assert "## second judge: `stream-2` (Qwen3Guard-Stream)" in table
    second = table.split("## second judge")[1]
    assert (
        "| unsafe, harmful prompts | 100.0%" in second and "n/a (a Stream judge gives no refusal)" in second
    )
    first = table.split("## second judge")[0]
    assert "| unsafe, harmful prompts | 50.0% [25.4, 74.6] (6/12) | 0.0% [0.0, 24.2] (0/12) | +50.0" in first


def test_zero_bars_are_drawn_and_missing_rates_say_na():
    rates = {
        "judge": {"a": wilson(0, 10), "b": wilson(3, 10)},
        "judge2": {"a": wilson(0, 0), "b": wilson(5, 5)},
    }
    fig = rates_figure(lambda j: rates[j], ["judge", "judge2"], {"a": "A", "b": "B"},
                       {"judge": "judge", "judge2": "second judge"}, "policy-3d5a")  # fmt: skip
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [ZERO_BAR, 0.3, 1.0]  # the 0% bar is a visible line; the n/a rate has no bar
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == ["0%", "100%", "30%", "n/a"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["judge", "second judge"]
    assert ax.get_title() == "policy-3d5a"
