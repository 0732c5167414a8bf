"""The offline annotation CLI: round trip, bad records kept with an error, and resuming an interrupted run."""

import json

import pytest

from guard_reward.cli import main
from guard_reward.evaluation.annotate import annotate, meta_path
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
    meta_path(partial).write_bytes(
        meta_path(full).read_bytes()
    )  # it was made by this command, for this input
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


# ----------------------------------------------------------------------------- bytes, ownership, resume rules


def _moderate(inp, out, guard_path, *extra):
    return main(["moderate", str(inp), "-o", str(out), "--guard", str(guard_path), "--no-decode", *extra])


def test_bad_bytes_bom_and_bad_values_become_error_rows(guard, tmp_path):
    inp = tmp_path / "in.jsonl"
    good = json.dumps({"id": "ok", "prompt": "hi"}).encode()
    inp.write_bytes(
        b"\xef\xbb\xbf"
        + good
        + b"\n"  # a UTF-8 BOM before the first record
        + b'{"id": "latin1", "prompt": "caf\xe9"}\n'  # not UTF-8
        + b"\n"  # blank: skipped and counted
        + json.dumps({"id": "int", "prompt": 42}).encode()
        + b"\n"
        + b"[1, 2]\n"
        + good
        + b"\n"
    )
    out = tmp_path / "out.jsonl"
    counts = annotate(guard, inp, out, decode=False, progress=False)
    rows = read_output(out)
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6] and counts["blank"] == 1
    assert rows[0]["level"] in ("Safe", "Controversial", "Unsafe") and rows[0]["id"] == "ok"
    assert rows[1]["error"].startswith("line 2: not valid UTF-8 (byte 0xe9")
    assert rows[2]["error"] == "line 4: 'prompt' must be a string or a list of messages, got a number (42)"
    assert rows[3]["error"] == "line 5: a record must be a JSON object, got a list"
    assert "level" in rows[4] and counts["errors"] == 3
    # --no-decode: what was not decoded is null, not "no category"
    assert rows[0]["categories"] is None and rows[0]["refusal"] is None and rows[0]["raw"] is None
    # a resumed run gets past the bad line: nothing is judged again, nothing is added
    counts = annotate(guard, inp, out, decode=False, progress=False)
    assert counts["skipped_done"] == 5 and counts["written"] == 0 and len(read_output(out)) == 5


def test_meta_sidecar_records_what_the_output_was_made_from(guard, tmp_path):
    from guard_reward.evaluation.annotate import meta_path

    write_input(tmp_path / "in.jsonl")
    out = tmp_path / "deep" / "er" / "out.jsonl"  # missing folders are created
    annotate(guard, tmp_path / "in.jsonl", out, decode=False, progress=False, settings={"thinking": "answer"})
    meta = json.loads(meta_path(out).read_text())
    assert meta["command"] == "guard-reward moderate" and meta["format"] == 1
    assert meta["input"]["path"] == str((tmp_path / "in.jsonl").resolve())
    assert len(meta["input"]["sha256"]) == 64 and meta["input"]["size"] > 0
    assert meta["settings"] == {
        "thinking": "answer",
        "decode": False,
        "chunk_size": 64,
        "token_budget": 16384,
    }


def test_resume_with_other_settings_or_input_is_refused(guard, tmp_path):
    from guard_reward.evaluation.annotate import OutputRefused

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp)
    annotate(guard, inp, out, decode=False, progress=False, settings={"thinking": "answer"})
    before = out.read_bytes()
    with pytest.raises(OutputRefused, match=r"thinking was 'answer', now 'separate'.*To start over, delete"):
        annotate(guard, inp, out, decode=False, progress=False, settings={"thinking": "separate"})
    with pytest.raises(OutputRefused, match="decode was False, now True"):
        annotate(guard, inp, out, decode=True, progress=False, settings={"thinking": "answer"})
    inp.write_text(inp.read_text() + json.dumps({"prompt": "one more"}) + "\n")
    with pytest.raises(OutputRefused, match="changed since"):
        annotate(guard, inp, out, decode=False, progress=False, settings={"thinking": "answer"})
    other = tmp_path / "other.jsonl"
    write_input(other)
    with pytest.raises(OutputRefused, match="input was"):
        annotate(guard, other, out, decode=False, progress=False, settings={"thinking": "answer"})
    assert out.read_bytes() == before


def test_foreign_output_and_output_equal_to_input_are_refused_untouched(tiny_gen_path, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_input(inp)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_bytes(b'{"a":1}\n{"important":"data"}')  # no final newline
    assert _moderate(inp, foreign, tiny_gen_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: -o ") and "not an output of guard-reward moderate" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert foreign.read_bytes() == b'{"a":1}\n{"important":"data"}'
    original = inp.read_bytes()
    assert _moderate(inp, inp, tiny_gen_path) == 1
    assert "is the input file" in capsys.readouterr().err and inp.read_bytes() == original


def test_cli_checks_paths_before_loading_the_model(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_input(inp)
    # the guard folder does not exist: a clear message, not a hub error; and no output was created
    assert _moderate(inp, tmp_path / "new" / "out.jsonl", "./ckpt/does_not_exist") == 1
    assert "error: no such folder: ./ckpt/does_not_exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_creates_missing_output_folders_and_resumes(tiny_gen_path, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    n = write_input(inp)
    out = tmp_path / "a" / "b" / "out.jsonl"
    assert _moderate(inp, out, tiny_gen_path) == 0
    assert len(read_output(out)) == n
    assert _moderate(inp, out, tiny_gen_path) == 0
    assert f"0 written, {n} already done" in capsys.readouterr().out
    assert _moderate(inp, out, tiny_gen_path, "--thinking", "whole") == 1
    assert "thinking was 'answer', now 'whole'" in capsys.readouterr().err


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_input(inp)
    args = ["moderate", str(inp), "-o", str(tmp_path / "o.jsonl"), "--guard", "./nope"]
    assert main(args) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(FileNotFoundError, match="no such folder"):
        main([*args, "--debug"])


# ----------------------------------------------------------------------------- numbers, settings, signals


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--token-budget", "0", "--token-budget must be a positive integer, got 0"),
        ("--chunk-size", "0", "--chunk-size must be a positive integer, got 0"),
        ("--chunk-size", "-5", "--chunk-size must be a positive integer, got -5"),
        ("--token-budget", "many", "--token-budget must be a positive integer, got 'many'"),
    ],
)
def test_number_options_are_checked_before_anything_loads(tmp_path, capsys, option, value, message):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp)
    with pytest.raises(SystemExit) as exit_info:
        # the guard folder does not exist: the number is refused before the guard is even looked at
        _moderate(inp, out, "./no/such/guard", option, value)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.jsonl.meta.json").exists()


def test_a_resume_with_another_token_budget_names_it(tiny_gen_path, tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp)
    assert _moderate(inp, out, tiny_gen_path, "--token-budget", "4096", "--no-progress") == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert _moderate(inp, out, tiny_gen_path, "--no-progress") == 1
    err = capsys.readouterr().err
    assert "token_budget was 4096, now 16384" in err and err.count("\n") == 1
    assert _moderate(inp, out, tiny_gen_path, "--token-budget", "4096", "--chunk-size", "2") == 1
    assert "chunk_size was 64, now 2" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_sigterm_writes_whole_rows_says_how_to_resume_and_the_rerun_finishes(tiny_gen_path, tmp_path, capsys):
    import os
    import signal

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = write_input(inp, with_broken_line=False)
    real = GenGuard.moderate
    calls = []

    def moderate_then_terminated(self, conversations, **kw):
        calls.append(len(conversations))
        if len(calls) == 2:  # as a scheduler would, while the second chunk is being judged
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, conversations, **kw)

    before = signal.getsignal(signal.SIGTERM)  # another test's library (Ray) may have set one
    GenGuard.moderate = moderate_then_terminated
    try:
        status = _moderate(inp, out, tiny_gen_path, "--chunk-size", "2", "--no-progress")
    finally:
        GenGuard.moderate = real
    err = capsys.readouterr().err
    assert status == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM: 2 written" in err and "Run the same command again to resume" in err
    assert [r["line"] for r in read_output(out)] == [1, 2]  # the first chunk, whole; not the second
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert _moderate(inp, out, tiny_gen_path, "--chunk-size", "2", "--no-progress") == 0
    assert f"{n - 2} written, 2 already done" in capsys.readouterr().out
    assert [r["line"] for r in read_output(out)] == list(range(1, n + 1))


def test_empty_answers_are_counted_apart_from_unparsed_verdicts(guard, tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "Hi", "response": "   "},
        {"prompt": "Hi", "response": "<think>never closed"},
        {"prompt": "Hi", "response": "Hello!"},
    ]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = annotate(guard, inp, tmp_path / "out.jsonl", decode=False, progress=False)
    assert counts["empty"] == 1 and counts["no_answer"] == 1
    assert counts["unparsed"] == 0 and counts["written"] == 3


def test_a_run_where_nothing_could_be_judged_fails(tiny_gen_path, tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("{not json\n[1, 2]\n")
    assert _moderate(inp, out, tiny_gen_path, "--no-progress") == 1
    captured = capsys.readouterr()
    assert "2 written" in captured.out and "error: no record could be judged (2 errors)" in captured.err
    assert len(read_output(out)) == 2  # the error rows are still written, one per line


def test_progress_shows_the_total_of_records(guard, tmp_path, capsys):
    from guard_reward.evaluation.annotate import count_records

    inp = tmp_path / "in.jsonl"
    n = write_input(inp)
    inp.write_text(inp.read_text() + "\n  \n")  # blank lines are not records
    assert count_records(inp) == n
    annotate(guard, inp, tmp_path / "out.jsonl", decode=False, progress=True)
    assert f"{n}/{n}" in capsys.readouterr().err
