"""``guard-reward eval`` end to end on the sandbox's tiny policy and guards: report, resume, refusals, errors,
comparison."""

from __future__ import annotations

import json

import pytest

from guard_reward.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory, eval_world):
    path = tmp_path_factory.mktemp("prompts") / "set.jsonl"
    lines = [
        json.dumps({"prompt": p, "harmful": h, "category": "trigger" if h else "plain"})
        for p, h in eval_world.heldout[:8]
    ]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"prompt": 7}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(world, judge2, prompts, out, *extra):
    return ["eval", "--policy", str(world.policy_path), "--prompts", str(prompts), "--judge", str(judge2),
            "--judge2", str(world.gen_path), "-n", "2", "--max-new-tokens", "12", "-o", str(out), "--chunk-size", "6",
            "--no-progress", *extra]  # fmt: skip


def test_report_rows_and_per_line_errors(
    eval_world, second_judge_path, prompt_file, tmp_path, capsys, caplog
):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="guard_reward.evaluation.checkpoint_eval"):
        assert main(_args(eval_world, second_judge_path, prompt_file, out)) == 0
    # what the run costs is said before it is done: at the start, a few steps in, after the first chunk
    logged = caplog.text
    assert "16 answers to write (8 prompts x 2), up to 12 new tokens each" in logged
    assert "s per token step (batches of 6): up to" in logged and "for all 3 batches" in logged
    assert "first 6 answers in" in logged and "for the remaining 10" in logged
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {(r["line"], r["sample"]) for r in rows} == {
        (n, k) for n in (1, 2, 3, 5, 7, 8, 9, 10) for k in (0, 1)
    }
    assert {"judge", "judge2", "answer", "tokens", "entropy"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "| unsafe, harmful prompts |" in report and "Cohen's kappa" in report
    assert "line 4: invalid JSON" in report and "line 6: 'prompt' must be a string" in report
    assert "| trigger |" in report  # per category
    harmful = [r for r in rows if r["harmful"]]
    unsafe = sum(r["judge"]["level"] == "Unsafe" for r in harmful)
    assert f"({unsafe}/{len(harmful)})" in report.split("| unsafe, harmful prompts |")[1].split("\n")[0]
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "answers/s" in printed
    # the answers that ran to the limit are counted, in the rows, the report and the line printed
    cut = sum(r["stopped_at_limit"] for r in rows)
    assert (
        f"{cut} of 16 stopped at max_new_tokens" in report and f"{cut} stopped at --max-new-tokens" in printed
    )
    assert all(r["tokens"] == 12 for r in rows if r["stopped_at_limit"])


def test_resume_writes_only_what_is_missing_and_other_settings_are_refused(
    eval_world, second_judge_path, prompt_file, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(_args(eval_world, second_judge_path, prompt_file, out)) == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-3]) + lines[-3][:10])  # killed mid-row
    assert main(_args(eval_world, second_judge_path, prompt_file, out)) == 0
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(rows) == 16 and len({(r["line"], r["sample"]) for r in rows}) == 16
    capsys.readouterr()
    assert main(_args(eval_world, second_judge_path, prompt_file, out, "--temperature", "0.5")) == 1
    assert "temperature was 1.0, now 0.5" in capsys.readouterr().err


def test_a_judge_that_cannot_load_fails_before_generation(eval_world, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    broken = tmp_path / "broken_judge"
    broken.mkdir()
    assert main(_args(eval_world, broken, prompt_file, out)) == 1
    err = capsys.readouterr().err
    assert "judge" in err and str(broken) in err
    assert not (out / "results.jsonl").exists() or (out / "results.jsonl").read_text() == ""


def test_a_set_without_harmful_prompts_says_what_it_cannot_give(eval_world, second_judge_path, tmp_path):
    path = tmp_path / "benign.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": p, "harmful": False}) + "\n" for p, h in eval_world.heldout[:12] if not h
        )
    )
    out = tmp_path / "run"
    assert main(_args(eval_world, second_judge_path, path, out, "-n", "1")) == 0
    report = (out / "report.md").read_text()
    assert "the unsafe rate on harmful prompts cannot be given" in report
    assert "| unsafe, harmful prompts | n/a (n=0)" in report


def test_baseline_and_compare_give_newcombe_differences(eval_world, second_judge_path, prompt_file, tmp_path):
    out = tmp_path / "cmp"
    args = _args(
        eval_world, second_judge_path, prompt_file, out, "--baseline", str(eval_world.policy_path), "--greedy"
    )
    assert main(args) == 0
    table = (out / "comparison.md").read_text()
    # the same policy, greedy: identical answers, every difference exactly 0 and never significant
    assert "| unsafe, harmful prompts |" in table and "**yes**" not in table
    assert "+0.0 [" in table
    policy_report = (out / "policy" / "report.md").read_text()
    assert "Reward-hacking alarms" in policy_report and "| alarms |" not in policy_report
    assert (
        "| length_drift | mean answer length, policy / baseline | 1.000x | outside 0.5-2x | no |"
        in policy_report
    )
    assert "Alarms that fired: none." in policy_report
    # every judge is compared, each in its own table
    assert "## judge: `" in table and "## second judge: `" in table
    assert (
        main(["eval", "--compare", str(out / "policy"), str(out / "baseline"), "-o", str(tmp_path / "c2")])
        == 0
    )
    assert (tmp_path / "c2" / "comparison.md").read_text().count("\n") == table.count("\n")
