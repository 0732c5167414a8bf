"""The offline annotation CLI: round trip, bad records kept with an error, and resuming an interrupted run."""

import json

import pytest

from guard_reward.annotate import annotate
from guard_reward.cli import main
from guard_reward.guards.gen import GenGuard

RECORDS = [
    {"id": "a", "prompt": "How do I bake bread?"},
    {"id": "b", "prompt": "hi", "response": "Hello! How can I help?"},
    {"id": "c", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
    {
        "id": "d",
        "prompt": [{"role": "user", "content": "q2"}],
        "completion": [{"role": "assistant", "content": "r2"}],
    },
    {"id": "bad-role", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
    {"id": "no-fields", "text": "nothing to judge"},
    {"id": "e", "prompt": "What is the capital of Australia?", "response": "Canberra."},
]


def write_input(path, with_broken_line=True):
    lines = [json.dumps(r) for r in RECORDS]
    if with_broken_line:
        lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def read_output(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def guard(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path)


def test_every_record_is_written_in_order(guard, tmp_path):
    n = write_input(tmp_path / "in.jsonl")
    counts = annotate(
        guard, tmp_path / "in.jsonl", tmp_path / "out.jsonl", decode=False, chunk_size=3, progress=False
    )
    rows = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in rows] == list(range(1, n + 1))
    assert counts["written"] == n and counts["errors"] == 3
    by_id = {r.get("id"): r for r in rows}
    assert "invalid JSON" in rows[3]["error"]
    assert "last message" in by_id["bad-role"]["error"]
    assert "'prompt'" in by_id["no-fields"]["error"]
    for key in "abcde":
        assert by_id[key]["level"] in ("Safe", "Controversial", "Unsafe")
        assert abs(sum(by_id[key]["probs"].values()) - 1) < 1e-6
    assert by_id["a"]["moderation"] == "prompt" and by_id["b"]["moderation"] == "response"


def test_resume_after_interruption(guard, tmp_path):
    n = write_input(tmp_path / "in.jsonl")
    full = tmp_path / "full.jsonl"
    annotate(guard, tmp_path / "in.jsonl", full, decode=False, progress=False)
    expected = read_output(full)
    # an interrupted run: three complete lines and half of the fourth
    partial = tmp_path / "out.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:10])
    guard.stats.clear()
    counts = annotate(guard, tmp_path / "in.jsonl", partial, decode=False, progress=False)
    assert counts["skipped_done"] == 3 and counts["written"] == n - 3
    judged_records = sum(1 for r in expected[3:] if "level" in r)
    assert guard.stats["requested"] == judged_records  # finished records were not judged again
    resumed = read_output(partial)
    assert [r["line"] for r in resumed] == list(range(1, n + 1))
    for a, b in zip(resumed, expected, strict=True):
        assert a.keys() == b.keys()
        if "probs" in a:
            assert all(abs(a["probs"][k] - b["probs"][k]) < 1e-5 for k in a["probs"])


@pytest.mark.slow
def test_cli_round_trip_with_a_trained_guard(trained_gen_path, tmp_path, capsys):
    from importlib import resources

    examples = resources.files("guard_reward") / "data" / "moderation_examples.jsonl"
    records = [json.loads(line) for line in examples.read_text().splitlines()]
    (tmp_path / "in.jsonl").write_text(examples.read_text())
    out = tmp_path / "out.jsonl"
    assert (
        main(["moderate", str(tmp_path / "in.jsonl"), "-o", str(out), "--guard", str(trained_gen_path)]) == 0
    )
    assert f"{len(records)} written" in capsys.readouterr().out
    rows = read_output(out)
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    agree = sum(
        row["level"] == rec["reference"]["level"]
        and row["categories"] == rec["reference"]["categories"]
        and row["refusal"] == rec["reference"].get("refusal")
        for row, rec in zip(rows, records, strict=True)
    )
    assert agree >= 0.8 * len(records)


def test_missing_input_file(tmp_path, capsys):
    assert (
        main(["moderate", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--guard", "x"]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
