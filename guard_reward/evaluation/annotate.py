"""Offline dataset annotation with Qwen3Guard-Gen (``guard-reward moderate``).

Reads JSONL records line by line as bytes and writes one verdict per record in input order, appending and
flushing chunk by chunk so an interrupted run resumes where it stopped: records already in the output (by line
number) are not judged again. No record is ever lost: a line that is not UTF-8, not JSON or not a record, and
a record that cannot be judged, is written with an ``error`` naming its line and the problem.

The output is only ever appended to, and only when it is this command's own output for this input and these
settings: next to ``OUT`` a sidecar ``OUT.meta.json`` records what it was made from (see :func:`run_meta`).
A resume whose input or settings differ, an ``OUT`` without a sidecar (a foreign file) and an ``OUT`` equal to
the input are refused before anything is written. The settings include the batching (``token_budget``,
``chunk_size``): which records share a padded micro-batch moves low-precision probabilities in their last
digits, so a resumed file is only ever one run's numbers.

An interrupt (Ctrl-C, or SIGTERM where the caller turns it into one) stops after the rows already flushed and
raises :class:`AnnotationInterrupted` carrying the counts, so the caller can say what was written; the chunk
being judged is not written and is judged again on resume.

Accepted record shapes (one JSON object per line; a UTF-8 byte-order mark on the first line is ignored):
- conversational: ``{"messages": [{"role", "content"}, ...]}`` (``"conversation"`` is accepted too);
- prompt/response: ``{"prompt": str | messages, "response": str | messages}`` (``"completion"`` is accepted for
  ``"response"``; without a response the prompt is judged).
An ``"id"`` field is copied to the output when present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guard_reward.conversations import Conversation, to_conversation, validate_conversation
from guard_reward.faults import UNPARSEABLE
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"
META_FORMAT = 1
COMMAND = "guard-reward moderate"
#: Verdict fields only decoding fills: ``null`` in the output when the run did not decode (not "none found").
DECODED_FIELDS = ("categories", "refusal", "p_refusal", "raw")
_BOM = b"\xef\xbb\xbf"


class OutputRefused(ValueError):
    """The output path cannot be written or resumed (it is the input, a foreign file, or made otherwise)."""


class AnnotationInterrupted(KeyboardInterrupt):
    """The run was interrupted; ``counts`` says what it had written (every row written is complete)."""

    def __init__(self, counts: Counter[str], cause: KeyboardInterrupt) -> None:
        super().__init__(str(cause))
        self.counts = counts
        self.cause = cause


def record_to_conversation(record: Any) -> Conversation:
    """The conversation a record asks to judge; raises ``ValueError``/``TypeError`` naming what is wrong."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a JSON object, got {_json_type(record)}")
    for key in ("messages", "conversation"):
        if key in record:
            return validate_conversation(record[key])
    if "prompt" not in record:
        raise ValueError(
            "a record needs 'messages' (or 'conversation'), or 'prompt' with optional 'response'"
        )
    response_key = "response" if "response" in record else "completion"
    response = record.get(response_key)
    for key, value in (("prompt", record["prompt"]), (response_key, response)):
        if value is not None and not isinstance(value, (str, list)):
            raise TypeError(
                f"'{key}' must be a string or a list of messages, got {_json_type(value)} ({value!r:.40})"
            )
    return validate_conversation(to_conversation(record["prompt"], response))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def verdict_to_json(verdict: Verdict, decoded: bool = True) -> dict[str, Any]:
    """A verdict as a JSON-ready dict (``parts`` nested the same way). Without decoding, the fields only
    decoding fills (:data:`DECODED_FIELDS`) are ``None``: not decoded is not the same as "no category"."""
    out = asdict(verdict)
    out["categories"] = list(verdict.categories)
    out["probs"] = dict(verdict.probs)
    if verdict.parts is not None:
        out["parts"] = {name: verdict_to_json(v, decoded) for name, v in verdict.parts.items()}
    if not decoded:
        out.update(dict.fromkeys(DECODED_FIELDS))
    return out


# ----------------------------------------------------------------------------------------- input


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
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"line {number}: invalid JSON: {exc.msg} (column {exc.colno})"


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------------------- output ownership


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


def run_settings(
    settings: Mapping[str, Any] | None, *, decode: bool, chunk_size: int, guard: Any = None
) -> dict[str, Any]:
    """The settings recorded for a run: the caller's (guard, thinking, dtype, ...) plus ``decode``,
    ``chunk_size`` and the guard's ``token_budget`` (when the caller did not give it and ``guard`` has one)."""
    out = {**(settings or {}), "decode": decode, "chunk_size": chunk_size}
    if "token_budget" not in out and getattr(guard, "token_budget", None) is not None:
        out["token_budget"] = guard.token_budget
    return out


def count_records(path: Path) -> int:
    """Non-blank lines of ``path`` (the progress bar's total), read as bytes in one pass."""
    with path.open("rb") as handle:
        return sum(1 for raw in handle if raw.strip())


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


def done_lines(output: Path) -> set[int]:
    """Line numbers already written to ``output`` (this command's own output: :func:`prepare_output` has
    checked the sidecar). A half-written last line (a killed run) is cut off; any other unreadable row means
    the file was edited by hand, and is refused rather than rewritten."""
    return done_keys(output, lambda row: int(row["line"]))


def done_keys(output: Path, key: Any, command: str = COMMAND) -> set[Any]:
    """:func:`done_lines` with another row key: ``key(row)`` for every complete row of ``output`` (raising
    ``ValueError``/``KeyError``/``TypeError`` for a row that is not the command's own)."""
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


# ----------------------------------------------------------------------------------------- the run


def annotate(
    guard: Any,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    decode: bool = True,
    chunk_size: int = 64,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> Counter[str]:
    """Judge every record of ``input_path`` into ``output_path`` (resuming it if it is this run's output).

    ``settings`` are recorded in the sidecar next to the output with ``decode``, ``chunk_size`` and the guard's
    ``token_budget`` (:func:`run_settings`); the CLI passes the guard and its options. Returns counts:
    ``written``, ``skipped_done`` (already in the output), ``errors`` (records written with an error), and
    among the verdicts without a label: ``empty`` (empty answer, not judged), ``no_answer`` (reasoning cut off
    before its answer), ``unparsed`` (verdict text that could not be read), ``failed`` (any other reason);
    plus ``truncated`` and ``blank`` (blank lines skipped).

    Raises:
        AnnotationInterrupted: on Ctrl-C (or SIGTERM turned into an interrupt); its ``counts`` are this run's.
    """
    from tqdm.auto import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    meta = run_meta(input_path, run_settings(settings, decode=decode, chunk_size=chunk_size, guard=guard))
    prepare_output(input_path, output_path, meta)
    done = done_lines(output_path)
    counts: Counter[str] = Counter()
    pending: list[tuple[int, Any, str | None]] = []
    total = count_records(input_path) if progress else None
    try:
        with (
            output_path.open("a", encoding="utf-8") as out,
            tqdm(desc="moderating", unit="rec", total=total, initial=len(done), disable=not progress) as bar,
        ):
            for item in read_records(input_path, counts):
                if item[0] in done:
                    counts["skipped_done"] += 1  # counted in the bar's start, so the ETA is this run's rate
                    continue
                pending.append(item)
                if len(pending) >= chunk_size:
                    _flush(guard, pending, out, decode, counts)
                    bar.update(len(pending))
                    pending = []
            if pending:
                _flush(guard, pending, out, decode, counts)
                bar.update(len(pending))
    except KeyboardInterrupt as exc:
        logger.warning("moderation interrupted: %s", dict(counts))
        raise AnnotationInterrupted(counts, exc) from exc
    if counts["blank"]:
        logger.info("%d blank lines skipped", counts["blank"])
    logger.info("moderation finished: %s", dict(counts))
    return counts


def _flush(
    guard: Any, items: list[tuple[int, Any, str | None]], out: Any, decode: bool, counts: Counter
) -> None:
    rows: dict[int, dict[str, Any]] = {}
    convs: dict[int, Conversation] = {}
    for number, record, error in items:
        row: dict[str, Any] = {"line": number}
        if isinstance(record, dict) and "id" in record:
            row["id"] = record["id"]
        rows[number] = row
        if error is None:
            try:
                convs[number] = record_to_conversation(record)
            except (TypeError, ValueError) as exc:
                error = f"line {number}: {exc}"
        if error is not None:
            row["error"] = error
    for number, verdict in _judge(guard, convs, decode).items():
        if isinstance(verdict, str):
            rows[number]["error"] = f"line {number}: {verdict}"
        else:
            rows[number].update(verdict_to_json(verdict, decode))
            if not verdict.ok:
                counts[_unlabelled_kind(verdict)] += 1
            counts["truncated"] += verdict.truncated
    for number, _, _ in items:
        counts["errors"] += "error" in rows[number] and "level" not in rows[number]
        out.write(json.dumps(rows[number], ensure_ascii=False) + "\n")
    counts["written"] += len(items)
    out.flush()


def _unlabelled_kind(verdict: Verdict) -> str:
    """Why a verdict has no label, as a count name (an empty answer is not a parsing failure)."""
    if verdict.empty:
        return "empty"
    if verdict.answer_missing:
        return "no_answer"
    return "unparsed" if verdict.reason == UNPARSEABLE else "failed"


def _judge(guard: Any, convs: dict[int, Conversation], decode: bool) -> dict[int, Verdict | str]:
    """Judge a chunk at once; if the guard rejects it (e.g. one input too long), judge one by one so that only
    the offending records carry the error."""
    if not convs:
        return {}
    keys = list(convs)
    try:
        return dict(zip(keys, guard.moderate([convs[k] for k in keys], decode=decode)))
    except (TypeError, ValueError):
        results: dict[int, Verdict | str] = {}
        for k in keys:
            try:
                results[k] = guard.moderate([convs[k]], decode=decode)[0]
            except (TypeError, ValueError) as exc:
                results[k] = f"{type(exc).__name__}: {exc}"
        return results
