"""Judges of an evaluation: a Qwen3Guard-Gen (local or served) or a Qwen3Guard-Stream, behind one call that
turns answers into JSON-ready judgements.

A judgement is ``{"level": "Safe"|"Controversial"|"Unsafe"|None, "refusal": bool|None, "categories": [...],
"error": str|None, "empty": bool}``. Gen judges decode their verdict lines (``decode=True``), which is what
gives the ``Refusal:`` line; a Stream judge gives the response-level label of Qwen3Guard's own debounce rule
(two consecutive non-Safe tokens) and no refusal. One answer the judge cannot read is a judgement with an
``error`` (``on_error="skip"``), never a dropped row. Unlike training rewards, nothing here is shaped: the
judgement is the guard's verdict as it stands.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guard_reward.conversations import Conversation

logger = logging.getLogger(__name__)

JudgeKind = Literal["gen", "stream", "remote"]
JUDGE_KINDS = ("gen", "stream", "remote")


@dataclass
class Judge:
    """A loaded judge: ``guard`` is a ``GenGuard``/``RemoteGenGuard`` (``kind`` ``"gen"``/``"remote"``) or a
    ``StreamGuard`` (``"stream"``); ``name`` is what the report calls it (its path, id or URL)."""

    guard: Any
    kind: JudgeKind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in JUDGE_KINDS:
            raise ValueError(f"Judge kind {self.kind!r} is not accepted; use one of {', '.join(JUDGE_KINDS)}")

    def __call__(self, conversations: Sequence[Conversation]) -> list[dict[str, Any]]:
        """One judgement per conversation (its last message is the answer judged)."""
        if not conversations:
            return []
        if self.kind == "stream":
            return [_from_risk(r) for r in self.guard.score(list(conversations), on_error="skip")]
        verdicts = self.guard.moderate(list(conversations), decode=True, on_error="skip")
        return [_from_verdict(v) for v in verdicts]


def _from_verdict(v: Any) -> dict[str, Any]:
    return {
        "level": v.level,
        "refusal": v.refusal,
        "categories": list(v.categories),
        "error": None if v.empty else v.error,
        "empty": bool(v.empty),
    }


def _from_risk(risk: Any) -> dict[str, Any]:
    from guard_reward.guards.debounce import debounce

    if risk.error is not None:
        return {"level": None, "refusal": None, "categories": [], "error": risk.error, "empty": False}
    _, label = debounce(risk)
    return {"level": label, "refusal": None, "categories": [], "error": None, "empty": len(risk) == 0}


def load_judge(
    spec: str | os.PathLike, kind: JudgeKind, *, device: str | None = None, dtype: str | None = None
) -> Judge:
    """Load a judge, failing with the path (or URL) and the reason when it cannot be loaded or reached."""
    name = os.fspath(spec)
    try:
        if kind == "remote":
            from guard_reward.guards.remote import RemoteGenGuard

            guard: Any = RemoteGenGuard(name)
            guard.health()  # reach it now, not after generating every answer
        elif kind == "stream":
            from guard_reward.guards.stream import StreamGuard

            guard = StreamGuard.from_pretrained(name, device=device, dtype=dtype)
        elif kind == "gen":
            from guard_reward.guards.gen_spec import is_server_spec, load_gen_guard

            guard = load_gen_guard(name, device=device, dtype=dtype)  # a checkpoint or openai+http://…
            if is_server_spec(name):
                guard.connect()  # reach and check the server now, not after generating every answer
        else:
            raise ValueError(f"judge kind {kind!r} is not accepted; use one of {', '.join(JUDGE_KINDS)}")
    except Exception as exc:
        what = "Qwen3Guard-Stream" if kind == "stream" else "Qwen3Guard-Gen"
        raise RuntimeError(f"the {what} judge {name} could not be loaded: {exc}") from exc
    logger.info("judge %s (%s) loaded", name, kind)
    return Judge(guard, kind, name)
