"""Resumable JSONL files: input lines read as bytes, output rows appended only to the command's own output.

Shared by ``guard-reward moderate`` (:mod:`guard_reward.evaluation.annotate`) and ``guard-reward eval``
(:mod:`guard_reward.evaluation.checkpoint_eval`). Input lines are read as bytes, so one line that is not UTF-8
or not JSON becomes an error for that line only (:func:`read_records`).

An output is only ever appended to, and only when it is the command's own output for this input and these
settings: next to ``OUT`` a sidecar ``OUT.meta.json`` records what it was made from (see :func:`run_meta`).
A resume whose input or settings differ, an ``OUT`` without a sidecar (a foreign file) and an ``OUT`` equal to
the input are refused before anything is written (:func:`prepare_output`). A resumed run skips the rows
already written (:func:`done_keys`), and a half-written last row (a killed run) is cut off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"
META_FORMAT = 1
#: The command a sidecar names when the caller does not say (``guard-reward eval`` passes its own).
COMMAND = "guard-reward moderate"
_BOM = b"\xef\xbb\xbf"


class OutputRefused(ValueError):
    """The output path cannot be written or resumed (it is the input, a foreign file, or made otherwise)."""


def read_records(path: Path, counts: Counter[str] | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, record or None, read error)`` for every non-blank line, read as bytes so that one bad
    line (not UTF-8, not JSON) becomes an error for that line only. Blank lines are counted in ``counts``."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    None,
                    f"line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})",
                )
                continue
            if not line.strip():
                if counts is not None:
                    counts["blank"] += 1
                continue
            yield number, *_parse_line(line, number)


def _parse_line(line: str, number: int) -> tuple[Any, str | None]:
    """``(record, None)`` or ``(None, "line N: invalid JSON: ... (column C)")`` for one decoded line.

    The line ending is cut off first: parsed with it, a line cut short (``{"prompt": "a"`` without its ``}``)
    is reported at column 1 of the *next* line, and an unterminated string at the newline. Columns count
    characters from 1, as editors do; a problem found past the last character is said to be at the end.
    """
    text = line.rstrip("\r\n")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" + (", at the end of the line" if exc.pos >= len(text) else "")
        return None, f"line {number}: invalid JSON: {exc.msg} ({where})"


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + META_SUFFIX)


def run_meta(
    input_path: str | os.PathLike, settings: Mapping[str, Any], command: str = COMMAND
) -> dict[str, Any]:
    """What an output is made from: the sidecar ``OUT.meta.json``.

    ``{"command": "guard-reward moderate", "format": 1, "input": {"path", "size", "sha256"},
    "settings": {"guard", "decode", "thinking", "dtype", "token_budget", "chunk_size", ...}}``: every setting
    that can change an output row (see :func:`run_settings`). ``command`` names the writer (``guard-reward
    eval`` reuses this resumable output with rows of its own).
    """
    path = Path(input_path)
    return {
        "command": command,
        "format": META_FORMAT,
        "input": {"path": str(path.resolve()), **fingerprint(path)},
        "settings": dict(settings),
    }


def prepare_output(
    input_path: str | os.PathLike, output_path: str | os.PathLike, meta: Mapping[str, Any]
) -> bool:
    """Check that ``output_path`` may be written for this run, before any model is loaded; create its folder
    and write its sidecar. Returns whether an earlier run is resumed.

    Raises:
        OutputRefused: the output is the input, a folder, a file this command did not write, or an output made
            from another input or with other settings (the message says how to start over).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    sidecar = meta_path(output_path)
    command = meta.get("command", COMMAND)
    if output_path.is_dir():
        raise OutputRefused(f"-o {output_path} is a folder; give a file path for the verdicts")
    blocking = next((p for p in output_path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # mkdir would say only "[Errno 17] File exists"
        raise OutputRefused(f"-o {output_path} cannot be made: {blocking} is a file, not a folder")
    if output_path.exists() and input_path.exists() and os.path.samefile(output_path, input_path):
        raise OutputRefused(f"-o {output_path} is the input file; write the verdicts to another file")
    resume = False
    if output_path.exists() and output_path.stat().st_size > 0:
        if not sidecar.exists():
            raise OutputRefused(
                f"-o {output_path} exists and is not an output of {command} (no {sidecar.name} next to it); "
                "it is left untouched: choose another output file, or delete it first"
            )
        old = _read_meta(sidecar, command)
        differences = _differences(old, meta)
        if differences:
            raise OutputRefused(
                f"-o {output_path} was made from other input or settings ({'; '.join(differences)}); it is "
                f"left untouched. To start over, delete {output_path} and {sidecar} (or choose another output "
                "file); to resume it, rerun with the settings it was made with"
            )
        resume = True
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(sidecar)
    return resume


def _read_meta(sidecar: Path, command: str = COMMAND) -> dict[str, Any]:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputRefused(
            f"{sidecar} is not a readable sidecar ({exc}); delete it and the output to start over"
        ) from None
    if not isinstance(data, dict) or data.get("command") != command:
        raise OutputRefused(f"{sidecar} was not written by {command}")
    return data


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    old_in, new_in = old.get("input", {}), new.get("input", {})
    if old_in.get("path") != new_in.get("path"):
        out.append(f"input was {old_in.get('path')}, now {new_in.get('path')}")
    elif old_in.get("sha256") != new_in.get("sha256"):
        out.append(
            f"input {new_in.get('path')} changed since (size {old_in.get('size')} -> {new_in.get('size')})"
        )
    old_set, new_set = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_set) | set(new_set)):
        if old_set.get(key) != new_set.get(key):
            out.append(f"{key} was {old_set.get(key)!r}, now {new_set.get(key)!r}")
    return out


def done_keys(output: Path, key: Any, command: str = COMMAND) -> set[Any]:
    """``key(row)`` for every complete row already written to ``output`` (the command's own output:
    :func:`prepare_output` has checked the sidecar; ``key`` raises ``ValueError``, ``KeyError`` or ``TypeError``
    for a row that is not the command's own). A half-written last line (a killed run) is cut off; any other
    unreadable row means the file was edited by hand, and is refused rather than rewritten."""
    if not output.exists():
        return set()
    raw = output.read_bytes()
    keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
    done: set[Any] = set()
    for number, line in enumerate(keep.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(key(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            raise OutputRefused(
                f"{output}, row {number} is not a row of {command} (edited by hand?); it is left "
                f"untouched: delete it and {meta_path(output).name} to start over"
            ) from None
    if len(keep) != len(raw):
        logger.warning("dropping a half-written last line from %s (an interrupted run)", output)
        with output.open("r+b") as handle:
            handle.truncate(len(keep))
    return done
