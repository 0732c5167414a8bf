"""Mistakes a user makes at the command line get one clear line: an output folder that is a file, a JSON line
that is cut short, a hub id while the hub cannot be reached (at once, not after the hub client's retries)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from guard_reward.cli import main
from guard_reward.evaluation.checkpoint_eval import read_results
from guard_reward.evaluation.prompts import read_prompt_set
from guard_reward.guards import common
from guard_reward.guards.common import HubUnreachableError, hub_kwargs, hub_unreachable


@pytest.mark.parametrize("under", [False, True])
def test_an_output_that_is_a_file_names_the_path_and_what_is_accepted(tmp_path, capsys, under):
    file = tmp_path / "results.txt"
    file.write_text("x")
    out = file / "run" if under else file
    args = ["eval", "--policy", str(tmp_path / "p"), "--prompts", str(tmp_path / "q.jsonl"), "--judge", "j"]
    assert main([*args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Errno" not in err and f"-o/--output {out}" in err and "writes a folder" in err
    assert ("cannot be made: " + str(file) + " is a file") in err if under else f"{file} is a file;" in err
    assert main(["eval", "--compare", str(tmp_path), str(tmp_path), "-o", str(file)]) == 1
    assert "writes a folder (comparison.md)" in capsys.readouterr().err


def test_moderate_and_plot_outputs_under_a_file_are_named(tmp_path, capsys):
    from guard_reward.evaluation.jsonl import OutputRefused, prepare_output

    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(
        OutputRefused, match=f"-o {file}/v.jsonl cannot be made: {file} is a file, not a folder"
    ):
        prepare_output(file, file / "v.jsonl", {})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "safety_curves.csv").write_text("step,reward\n1,0.5\n")
    assert main(["plot", str(tmp_path / "run"), "--output", str(file / "c.png")]) == 1
    assert f"--output {file}/c.png cannot be made: {file} is a file" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "run"), "--output", str(tmp_path)]) == 1
    assert "is a folder; give the PNG file's path" in capsys.readouterr().err


def test_json_errors_name_the_line_and_the_column_an_editor_shows(tmp_path):
    path = tmp_path / "set.jsonl"
    lines = [
        '{"prompt": "fine", "harmful": false}',
        '{"prompt": "fine too", "harmful": true}',
        '{"prompt": "cut short", "harmful": true',  # no closing brace
        '{"prompt": "unterminated}',
        '{"prompt": "c", "harmful": tru}',
    ]
    path.write_text("\r\n".join(lines) + "\n")
    prompts, errors = read_prompt_set(path)
    assert len(prompts) == 2
    assert errors == [
        "line 3: invalid JSON: Expecting ',' delimiter (column 40, at the end of the line)",
        "line 4: invalid JSON: Unterminated string starting at (column 12)",
        "line 5: invalid JSON: Expecting value (column 28)",
    ]


def test_a_results_row_that_is_not_json_is_named_by_its_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"line": 1}\n\n{"line": 2, x}\n')
    with pytest.raises(
        ValueError, match=r"results.jsonl, line 3: not a row of guard-reward eval .*column 13"
    ):
        read_results(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_down(monkeypatch):
    """The hub client pointed at a local port nobody listens on, with offline mode off (as in a user's shell)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(common, "_HUB_PROBES", {})
    return constants.ENDPOINT


def test_the_hub_probe_tells_a_listening_address_from_a_closed_one(monkeypatch):
    monkeypatch.setattr(common, "_HUB_PROBES", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert hub_unreachable(f"http://127.0.0.1:{s.getsockname()[1]}") is None
    port = _closed_port()
    assert "refused" in hub_unreachable(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # behind a proxy only the client can tell
    assert hub_unreachable(f"https://127.0.0.1:{port}") is None


def test_a_hub_id_fails_at_once_when_the_hub_is_unreachable(hub_down):
    from guard_reward import GenGuard, StreamGuard

    for cls, name in ((GenGuard, "nobody/no-such-gen"), (StreamGuard, "nobody/no-such-stream")):
        start = time.perf_counter()
        with pytest.raises(
            HubUnreachableError, match=f"'{name}'.*unreachable .*refused.*not in the local cache"
        ):
            cls.from_pretrained(name)
        # the hub client alone sleeps 23 s between its retries (1 + 2 + 4 + 8 + 8) before giving up
        assert time.perf_counter() - start < 15
    with pytest.raises(HubUnreachableError, match="cannot load the --policy model 'nobody/p'"):
        hub_kwargs("nobody/p", what="--policy model")


@pytest.mark.slow
def test_a_cached_hub_id_loads_from_the_cache_when_the_hub_is_unreachable(tiny_gen_path, tmp_path):
    """A user's hub cache holds the model: it loads, from the cache, without waiting on the hub."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-gen" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in tiny_gen_path.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    code = (
        "import time; t = time.perf_counter()\n"
        "from guard_reward import GenGuard\n"
        "g = GenGuard.from_pretrained('someone/tiny-gen')\n"
        "print('loaded', type(g).__name__, round(time.perf_counter() - t, 1))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded GenGuard" in done.stdout and "loaded from the local cache" in done.stderr
    assert "Retrying" not in done.stderr, done.stderr[-2000:]
