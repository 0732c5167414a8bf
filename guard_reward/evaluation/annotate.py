"""Offline dataset annotation with Qwen3Guard-Gen (``guard-reward moderate``).

Reads JSONL records line by line as bytes and writes one verdict per record in input order, appending and
flushing chunk by chunk so an interrupted run resumes where it stopped: records already in the output (by line
number) are not judged again. No record is ever lost: a line that is not UTF-8, not JSON or not a record, and
a record that cannot be judged, is written with an ``error`` naming its line and the problem.

The output is only ever appended to, and only when it is this command's own output for this input and these
settings (the sidecar ``OUT.meta.json`` and the checks of :mod:`guard_reward.evaluation.jsonl`, whose names
are also importable from here). The settings include the batching (``token_budget``, ``chunk_size``): which
records share a padded micro-batch moves low-precision probabilities in their last digits, so a resumed file
is only ever one run's numbers.

An interrupt (Ctrl-C, or SIGTERM where the caller turns it into one) stops after the rows already flushed and
raises :class:`AnnotationInterrupted` carrying the counts, so the caller can say what was written; the chunk
being judged is not written and is judged again on resume.

Accepted record shapes (one JSON object per line; a UTF-8 byte-order mark on the first line is ignored):
- conversational: ``{"messages": [{"role", "content"}, ...]}`` (``"conversation"`` is accepted too);
- prompt/response: ``{"prompt": str | messages, "response": str | messages}`` (``"completion"`` is accepted for
  ``"response"``; without a response the prompt is judged).
An ``"id"`` field is copied to the output when present. Each verdict is written as
:func:`guard_reward.wire.verdict_to_json` gives it, with ``decoded=False`` for a run that did not decode.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guard_reward.conversations import Conversation, to_conversation, validate_conversation
from guard_reward.evaluation.jsonl import (
    COMMAND,
    META_FORMAT,
    META_SUFFIX,
    OutputRefused,
    done_keys,
    fingerprint,
    meta_path,
    prepare_output,
    read_records,
    run_meta,
)
from guard_reward.faults import UNPARSEABLE
from guard_reward.types import Verdict
from guard_reward.wire import DECODED_FIELDS, verdict_to_json

__all__ = [
    "COMMAND",
    "DECODED_FIELDS",
    "META_FORMAT",
    "META_SUFFIX",
    "AnnotationInterrupted",
    "OutputRefused",
    "annotate",
    "count_records",
    "done_keys",
    "done_lines",
    "fingerprint",
    "meta_path",
    "prepare_output",
    "read_records",
    "record_to_conversation",
    "run_meta",
    "run_settings",
    "verdict_to_json",
]

logger = logging.getLogger(__name__)


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


def done_lines(output: Path) -> set[int]:
    """Line numbers already written to ``output`` (:func:`done_keys` by each row's ``line``)."""
    return done_keys(output, lambda row: int(row["line"]))


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
