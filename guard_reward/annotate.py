"""Offline dataset annotation with Qwen3Guard-Gen (``guard-reward moderate``).

Reads JSONL records, writes one verdict per record in input order, appending and flushing chunk by chunk so an
interrupted run resumes where it stopped: records already in the output (by line number) are not judged again.
No record is ever lost: a record that cannot be read or judged is written with an ``error`` field.

Accepted record shapes (one JSON object per line):
- conversational: ``{"messages": [{"role", "content"}, ...]}`` (``"conversation"`` is accepted too);
- prompt/response: ``{"prompt": str | messages, "response": str | messages}`` (``"completion"`` is accepted for
  ``"response"``; without a response the prompt is judged).
An ``"id"`` field is copied to the output when present.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guard_reward.conversations import Conversation, to_conversation, validate_conversation
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)


def record_to_conversation(record: Any) -> Conversation:
    """The conversation a record asks to judge; raises ``ValueError``/``TypeError`` naming what is wrong."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a JSON object, got {type(record).__name__}")
    for key in ("messages", "conversation"):
        if key in record:
            return validate_conversation(record[key])
    if "prompt" not in record:
        raise ValueError(
            "a record needs 'messages' (or 'conversation'), or 'prompt' with optional 'response'"
        )
    response = record.get("response", record.get("completion"))
    return validate_conversation(to_conversation(record["prompt"], response))


def verdict_to_json(verdict: Verdict) -> dict[str, Any]:
    """A verdict as a JSON-ready dict (``parts`` nested the same way)."""
    out = asdict(verdict)
    out["categories"] = list(verdict.categories)
    out["probs"] = dict(verdict.probs)
    if verdict.parts is not None:
        out["parts"] = {name: verdict_to_json(v) for name, v in verdict.parts.items()}
    return out


def done_lines(output: Path) -> set[int]:
    """Line numbers already written to ``output``. A half-written last line (a killed run) is cut off."""
    if not output.exists():
        return set()
    raw = output.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1] if not raw.endswith(b"\n") else raw
    if len(keep) != len(raw):
        logger.warning("dropping a half-written last line from %s", output)
        output.write_bytes(keep)
    return {json.loads(line)["line"] for line in keep.decode().splitlines() if line.strip()}


def read_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, record or None, read error)`` for every non-empty line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON: {exc}"


def annotate(
    guard: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    decode: bool = True,
    chunk_size: int = 64,
    progress: bool = True,
) -> Counter[str]:
    """Judge every record of ``input_path`` into ``output_path`` (resuming it if it exists).

    Returns:
        counts: ``written``, ``skipped_done`` (already in the output), ``errors`` (records written with an error),
        ``unparsed`` (verdicts with ``level=None``), ``truncated``.
    """
    from tqdm.auto import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    done = done_lines(output_path)
    counts: Counter[str] = Counter()
    pending: list[tuple[int, Any, str | None]] = []
    with (
        output_path.open("a", encoding="utf-8") as out,
        tqdm(desc="moderating", unit="rec", disable=not progress) as bar,
    ):
        for item in read_records(input_path):
            if item[0] in done:
                counts["skipped_done"] += 1
                bar.update(1)
                continue
            pending.append(item)
            if len(pending) >= chunk_size:
                _flush(guard, pending, out, decode, counts)
                bar.update(len(pending))
                pending = []
        if pending:
            _flush(guard, pending, out, decode, counts)
            bar.update(len(pending))
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
                error = str(exc)
        if error is not None:
            row["error"] = error
    for number, verdict in _judge(guard, convs, decode).items():
        if isinstance(verdict, str):
            rows[number]["error"] = verdict
        else:
            rows[number].update(verdict_to_json(verdict))
            counts["unparsed"] += not verdict.ok
            counts["truncated"] += verdict.truncated
    for number, _, _ in items:
        counts["errors"] += "error" in rows[number] and "level" not in rows[number]
        out.write(json.dumps(rows[number], ensure_ascii=False) + "\n")
    counts["written"] += len(items)
    out.flush()


def _judge(guard: Any, convs: dict[int, Conversation], decode: bool) -> dict[int, Verdict | str]:
    """Judge a chunk at once; if the guard rejects it (e.g. one input too long), judge one by one so that only
    the offending records carry the error."""
    if not convs:
        return {}
    keys = list(convs)
    try:
        return dict(zip(keys, guard.moderate([convs[k] for k in keys], decode=decode)))
    except ValueError:
        results: dict[int, Verdict | str] = {}
        for k in keys:
            try:
                results[k] = guard.moderate([convs[k]], decode=decode)[0]
            except ValueError as exc:
                results[k] = f"{type(exc).__name__}: {exc}"
        return results
