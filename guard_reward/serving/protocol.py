"""Request bodies of the judging routes: checked whole (a malformed body is a 400 naming the problem) and
judged item by item (a bad item gets its own ``error``, never failing the others).

No ray here: the ingress parses bodies with these functions and the guard replicas judge merged calls with
:func:`judge_gen_calls` / :func:`judge_stream_calls`, one guard call per group of compatible calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from guard_reward.conversations import THINKING_MODES, moderation_of, validate_conversation
from guard_reward.faults import GUARD_UNAVAILABLE, INVALID_INPUT, SampleError
from guard_reward.wire import (
    MAX_REQUEST_BYTES,
    check_fields,
    failed_risk,
    failed_verdict,
    risks_to_bytes,
    risks_to_json_bytes,
    verdict_to_json,
)

logger = logging.getLogger(__name__)

STREAM_THINKING = ("answer", "include")
#: The most items one request may carry (clients split larger calls into chunks).
MAX_ITEMS = 4096
#: Request bytes merged into one guard call at most (a single larger request still goes, alone).
MAX_BATCH_BYTES = 16 * 2**20


class RequestTooLarge(ValueError):
    """The request body is over :data:`MAX_REQUEST_BYTES` (HTTP 413)."""


def check_body_size(size: int, route: str) -> None:
    """Raise :class:`RequestTooLarge` when a body of ``size`` bytes is over :data:`MAX_REQUEST_BYTES`."""
    if size > MAX_REQUEST_BYTES:
        raise RequestTooLarge(
            f"{route}: the request body has {size} bytes; at most {MAX_REQUEST_BYTES} "
            f"({MAX_REQUEST_BYTES // 2**20} MiB) per request: split it into smaller requests"
        )


class BadRequest(ValueError):
    """The request body as a whole is unusable (HTTP 400)."""


def _object(body: Any, route: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{route}: the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"{route}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")
    return body


def _items(body: dict[str, Any], key: str, route: str) -> list[Any]:
    if key not in body:
        raise BadRequest(f"{route}: missing field {key!r}")
    items = body[key]
    if not isinstance(items, list):
        raise BadRequest(f"{route}: {key!r} must be a list, got {type(items).__name__}")
    if len(items) > MAX_ITEMS:
        raise BadRequest(f"{route}: {len(items)} items in {key!r}; at most {MAX_ITEMS} per request")
    return items


def _thinking(body: dict[str, Any], route: str, allowed: Sequence[str]) -> str | None:
    value = body.get("thinking")
    if value is not None and value not in allowed:
        raise BadRequest(
            f"{route}: thinking={value!r} is not accepted; use one of {', '.join(allowed)} or null"
        )
    return value


def parse_gen(body: Any) -> dict[str, Any]:
    """``{"conversations": [...], "decode": bool, "thinking": str | null}`` -> the same, checked."""
    route = "/v1/gen/moderate"
    body = _object(body, route, ("conversations", "decode", "thinking"))
    decode = body.get("decode", False)
    if not isinstance(decode, bool):
        raise BadRequest(f"{route}: decode must be true or false, got {decode!r}")
    return {
        "conversations": _items(body, "conversations", route),
        "decode": decode,
        "thinking": _thinking(body, route, THINKING_MODES),
    }


def _fields(body: dict[str, Any], route: str) -> tuple[str, ...] | None:
    """The per-token fields a Stream request asks for (``None``: all of them)."""
    if body.get("fields") is None:
        return None
    try:
        return check_fields(body["fields"])
    except ValueError as exc:
        raise BadRequest(f"{route}: {exc}") from None


def parse_score(body: Any) -> dict[str, Any]:
    """``{"conversations": [...], "thinking": str | null, "fields": [str, ...] | null}``."""
    route = "/v1/stream/score"
    body = _object(body, route, ("conversations", "thinking", "fields"))
    return {
        "conversations": _items(body, "conversations", route),
        "thinking": _thinking(body, route, STREAM_THINKING),
        "fields": _fields(body, route),
    }


def parse_score_ids(body: Any) -> dict[str, Any]:
    """``{"prompts": [...], "completion_ids": [[int, ...], ...], "thinking": str | null, "fields": [str, ...] |
    null}``."""
    route = "/v1/stream/score_ids"
    body = _object(body, route, ("prompts", "completion_ids", "thinking", "fields"))
    prompts = _items(body, "prompts", route)
    ids = _items(body, "completion_ids", route)
    if len(prompts) != len(ids):
        raise BadRequest(f"{route}: {len(prompts)} prompts but {len(ids)} completion_ids; one per sample")
    return {
        "prompts": prompts,
        "completion_ids": ids,
        "thinking": _thinking(body, route, STREAM_THINKING),
        "fields": _fields(body, route),
    }


# --------------------------------------------------------------------------------------------- judging


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SampleError):
        return exc.reason
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return INVALID_INPUT
    return GUARD_UNAVAILABLE


def judge_isolated(
    run: Callable[[list[Any]], list[Any]],
    items: Sequence[Any],
    check: Callable[[Any, int], None],
    fail: Callable[[Any, BaseException], Any],
) -> list[Any]:
    """``run`` over the items that pass ``check``, in ONE call; an item that fails ``check``, or makes the
    merged call raise (then each item is retried alone to find it), gets ``fail(item, exc)`` instead."""
    out: list[Any] = [None] * len(items)
    good = []
    for i, item in enumerate(items):
        try:
            check(item, i)
            good.append(i)
        except Exception as exc:
            out[i] = fail(item, exc)
    if not good:
        return out
    try:
        results = run([items[i] for i in good])
        for i, result in zip(good, results, strict=True):
            out[i] = result
    except Exception as exc:
        logger.warning("a merged call of %d items failed (%s); judging them one by one", len(good), exc)
        for i in good:
            try:
                out[i] = run([items[i]])[0]
            except Exception as item_exc:
                out[i] = fail(items[i], item_exc)
    return out


def _check_conversation(conv: Any, i: int) -> None:
    validate_conversation(conv, i)


def _gen_failure(conv: Any, exc: BaseException) -> Any:
    try:
        moderation = moderation_of(conv)
    except Exception:
        moderation = "response"
    return failed_verdict(moderation, _reason(exc), f"{type(exc).__name__}: {exc}")


def _groups(calls: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(tuple(call[k] for k in keys), []).append(i)
    return groups


def judge_gen_calls(guard: Any, calls: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Several parsed ``/v1/gen/moderate`` calls (from concurrent requests) judged together: one
    ``guard.moderate`` per ``(decode, thinking)`` group, so the guard's micro-batching, prefix sharing and
    dedupe work across requests. Returns each call's verdicts as JSON, in order."""
    out: list[list[dict[str, Any]]] = [[] for _ in calls]
    for (decode, thinking), members in _groups(calls, ("decode", "thinking")).items():
        items = [conv for m in members for conv in calls[m]["conversations"]]
        verdicts = judge_isolated(
            lambda convs, d=decode, t=thinking: guard.moderate(convs, decode=d, thinking=t, on_error="skip"),
            items,
            _check_conversation,
            _gen_failure,
        )
        _scatter(out, members, calls, "conversations", [verdict_to_json(v) for v in verdicts])
    return out


def judge_stream_calls(guard: Any, calls: Sequence[dict[str, Any]]) -> list[bytes]:
    """Like :func:`judge_gen_calls` for Stream: calls with ``conversations`` go to ``guard.score``, calls with
    ``completion_ids`` to ``guard.score_ids``, one call per ``(kind, thinking)`` group. Each call gets its risks
    encoded, with the per-token ``fields`` it asked for: one :func:`~guard_reward.wire.risks_to_bytes` body when
    marked ``binary`` (the client accepts :data:`~guard_reward.wire.BINARY_MEDIA_TYPE`), else the JSON array of
    :func:`~guard_reward.wire.risks_to_json_bytes`. Bytes either way: the hop back to the ingress carries one
    buffer per request, never lists of Python floats."""
    out: list[list[Any]] = [[] for _ in calls]
    names = tuple(guard.category_names)

    def fail(_item: Any, exc: BaseException) -> Any:
        return failed_risk(names, _reason(exc), f"{type(exc).__name__}: {exc}", None)

    for (kind, thinking), members in _groups(
        [{**c, "kind": "ids" if "completion_ids" in c else "text"} for c in calls], ("kind", "thinking")
    ).items():
        if kind == "text":
            items = [conv for m in members for conv in calls[m]["conversations"]]
            risks = judge_isolated(
                lambda convs, t=thinking: guard.score(convs, thinking=t, on_error="skip"),
                items,
                _check_conversation,
                fail,
            )
            _scatter(out, members, calls, "conversations", list(risks))
        else:
            items = [pair for m in members for pair in zip(calls[m]["prompts"], calls[m]["completion_ids"])]
            risks = judge_isolated(
                lambda pairs, t=thinking: guard.score_ids(
                    [p for p, _ in pairs], [ids for _, ids in pairs], thinking=t, on_error="skip"
                ),
                items,
                _check_ids_item,
                fail,
            )
            _scatter(out, members, calls, "prompts", list(risks))
    return [
        (risks_to_bytes if c.get("binary") else risks_to_json_bytes)(o, c.get("fields"))
        for c, o in zip(calls, out)
    ]


def _check_ids_item(item: Any, i: int) -> None:
    prompt, ids = item
    if not isinstance(prompt, (str, list)):
        raise TypeError(f"prompt {i}: expected a string or a list of messages, got {type(prompt).__name__}")
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise TypeError(f"completion_ids {i}: expected a list of integer token ids")


def _scatter(
    out: list[list[Any]], members: list[int], calls: Sequence[dict[str, Any]], key: str, flat: list[Any]
) -> None:
    """Hand a group's flat results back to its calls, each its own slice, in order."""
    k = 0
    for m in members:
        n = len(calls[m][key])
        out[m] = flat[k : k + n]
        k += n
    if k != len(flat):  # a guard returning the wrong count must never shift results onto other samples
        raise RuntimeError(f"the guard returned {len(flat)} results for {k} items")
