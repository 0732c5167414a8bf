"""The service's JSON wire format: ``Verdict`` and ``TokenRisk`` as plain JSON objects, and back.

Shared by the server and the remote clients, so it imports neither transformers, trl nor ray; a verdict's
JSON is also the row format of ``guard-reward moderate``. A ``TokenRisk`` travels with its tensors as lists
(``offsets`` and ``category_probs`` as lists of rows); float32 values survive the round trip exactly (a
float32 widened to a JSON double and narrowed back is the same number).

The binary form of a list of ``TokenRisk`` (:func:`risks_to_bytes`, media type :data:`BINARY_MEDIA_TYPE`) is one
safetensors file: every per-token field of all samples concatenated into one tensor (``p_unsafe`` ``(sum T,)``
float32, ``category_probs`` ``(sum T, C)``, ...) with the samples' lengths ``(N,)`` int64, and the per-sample
scalars (span, error, query verdict, ...) as JSON in its metadata. Safetensors holds tensors only (loading it
runs no code, unlike pickle) and reads back with one copy per field; float32 stays float32, so the numbers are
the same bits as the JSON form's.

Either form may carry only some per-token fields (:func:`check_fields`, e.g. :data:`SHAPING_FIELDS`); the others
read back as :func:`placeholder` s: the right shape and dtype, NaN or -1, no memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch

from guard_reward.types import TokenRisk, Verdict

#: Version prefix of every judging route.
API_VERSION = "v1"

#: The largest request body, in bytes (a larger one is a 413). A Stream answer is about 40 times its request's
#: text (15 numbers per token), so this keeps one request's answer well under a gRPC message's 2 GiB cap.
MAX_REQUEST_BYTES = 16 * 2**20

_VERDICT_FIELDS = tuple(f.name for f in fields(Verdict))
#: Verdict fields only decoding fills: ``null`` in a verdict that was not decoded (not "none found").
DECODED_FIELDS = ("categories", "refusal", "p_refusal", "raw")


def verdict_to_json(v: Verdict, decoded: bool = True) -> dict[str, Any]:
    """All fields of a ``Verdict`` (``parts`` and ``turns`` recursively), JSON-ready.

    ``decoded=False`` (``guard-reward moderate --no-decode``) writes the fields only decoding fills
    (:data:`DECODED_FIELDS`) as ``None`` at every level: not decoded is not the same as "no category".
    """
    out: dict[str, Any] = {name: getattr(v, name) for name in _VERDICT_FIELDS}
    out["probs"] = {k: float(p) for k, p in v.probs.items()}
    out["categories"] = list(v.categories)
    out["parts"] = None if v.parts is None else {k: verdict_to_json(p, decoded) for k, p in v.parts.items()}
    out["turns"] = [verdict_to_json(t, decoded) for t in v.turns]
    out["tool_calls"] = list(v.tool_calls)
    if not decoded:
        out.update(dict.fromkeys(DECODED_FIELDS))
    return out


def verdict_from_json(d: Mapping[str, Any]) -> Verdict:
    """Inverse of :func:`verdict_to_json`; unknown keys (a newer server) are ignored."""
    kw = {name: d[name] for name in _VERDICT_FIELDS if name in d}
    kw["probs"] = {k: float(p) for k, p in (d.get("probs") or {}).items()}
    kw["categories"] = tuple(d.get("categories") or ())
    parts = d.get("parts")
    kw["parts"] = None if parts is None else {k: verdict_from_json(p) for k, p in parts.items()}
    kw["turns"] = tuple(verdict_from_json(t) for t in d.get("turns") or ())
    kw["tool_calls"] = tuple(int(n) for n in d.get("tool_calls") or ())
    return Verdict(**kw)


def failed_verdict(moderation: str, reason: str, error: str) -> Verdict:
    """A verdict that carries only a failure (``level=None``), e.g. for a guard that did not answer."""
    return Verdict(level=None, probs={}, moderation=moderation, error=error, reason=reason)  # type: ignore[arg-type]


def risk_to_json(r: TokenRisk, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """All fields of a ``TokenRisk``, tensors as (nested) lists; ``fields`` (checked names of
    :data:`TOKEN_FIELDS`): only these per-token fields (the per-sample ones always)."""
    wanted = TOKEN_FIELDS if fields is None else fields
    out: dict[str, Any] = {name: getattr(r, name).tolist() for name in TOKEN_FIELDS if name in wanted}
    out.update({key: risk_to_json_scalar(r, key) for key in _SCALARS})
    return out


def risk_from_json(d: Mapping[str, Any]) -> TokenRisk:
    """Inverse of :func:`risk_to_json`: ``(T,)`` float32 probabilities, ``(T, 2)`` long offsets, ``(T, C)``
    float32 category probabilities (also for ``T == 0``); a per-token field the answer leaves out (it was not
    asked for) is a :func:`placeholder`. An answer with none of them raises ``ValueError``."""
    names = tuple(d.get("category_names") or ())
    present = [name for name in TOKEN_FIELDS if name in d]
    if not present:
        raise ValueError(f"a risk needs at least one of {', '.join(TOKEN_FIELDS)}; got keys {sorted(d)}")
    shapes = {"offsets": (-1, 2), "category_probs": (-1, len(names))}
    tensors = {
        name: torch.tensor(d[name], dtype=TOKEN_FIELDS[name]).reshape(shapes.get(name, (-1,)))
        for name in present
    }
    t = len(tensors[present[0]])
    for name in TOKEN_FIELDS:
        if name not in tensors:
            tensors[name] = placeholder(name, t, len(names))
    return TokenRisk(**tensors, category_names=names, **_sample_fields(d))


def failed_risk(
    category_names: tuple[str, ...], reason: str, error: str, span: tuple[int, int] | None
) -> TokenRisk:
    """An empty ``TokenRisk`` (``T == 0``) that carries only a failure."""
    empty = torch.zeros(0, dtype=torch.float32)
    return TokenRisk(
        token_ids=torch.zeros(0, dtype=torch.long),
        offsets=torch.zeros(0, 2, dtype=torch.long),
        p_safe=empty,
        p_unsafe=empty.clone(),
        p_controversial=empty.clone(),
        category_probs=torch.zeros(0, len(category_names), dtype=torch.float32),
        category_names=category_names,
        span=span,
        error=error,
        reason=reason,
    )


#: The media type of :func:`risks_to_bytes` (a client asks for it with ``Accept``).
BINARY_MEDIA_TYPE = "application/vnd.guard-reward.risks+safetensors"
#: Per-token fields of a ``TokenRisk`` and their dtypes in the binary form.
TOKEN_FIELDS = {
    "token_ids": torch.long,
    "offsets": torch.long,
    "p_safe": torch.float32,
    "p_unsafe": torch.float32,
    "p_controversial": torch.float32,
    "category_probs": torch.float32,
}
_SCALARS = ("category_names", "query_probs", "query_category_probs", "truncated", "span", "error", "reason",
            "answer_missing")  # fmt: skip
#: The per-token fields ``TokenSafetyPenalty`` reads: the three levels (its value and the debounced flag) and,
#: when it scores text, ``offsets`` (to carry the risk onto the policy's tokens). 28 of 72 bytes per token.
SHAPING_FIELDS = ("offsets", "p_safe", "p_unsafe", "p_controversial")


def check_fields(fields: Any) -> tuple[str, ...]:
    """``fields`` (``None``: every per-token field) as a tuple in :data:`TOKEN_FIELDS` order; anything else than
    a non-empty list of those names raises ``ValueError`` naming what was wrong and what is accepted."""
    if fields is None:
        return tuple(TOKEN_FIELDS)
    if isinstance(fields, (str, bytes)) or not isinstance(fields, (list, tuple)) or not fields:
        raise ValueError(f"fields must be a non-empty list of field names, got {fields!r}; accepted: "
                         f"{', '.join(TOKEN_FIELDS)}")  # fmt: skip
    unknown = [f for f in fields if not isinstance(f, str) or f not in TOKEN_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(TOKEN_FIELDS)}"
        )
    return tuple(name for name in TOKEN_FIELDS if name in fields)


def placeholder(name: str, tokens: int, categories: int) -> torch.Tensor:
    """What a per-token field not asked for holds: the right dtype and shape (``(T,)``, ``(T, 2)`` or ``(T, C)``),
    every value NaN (float fields) or -1 (long fields), so reading it by mistake shows; an expanded scalar, so it
    costs no memory."""
    shape = (
        (tokens, 2) if name == "offsets" else (tokens, categories) if name == "category_probs" else (tokens,)
    )
    dtype = TOKEN_FIELDS[name]
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full((), fill, dtype=dtype).expand(shape)


def risks_to_bytes(risks: Sequence[TokenRisk], fields: Sequence[str] | None = None) -> bytes:
    """``risks`` as one safetensors file (module docstring): ``lengths`` ``(N,)`` int64, each per-token field
    concatenated over the samples (``(sum T,)``, ``offsets`` ``(sum T, 2)``, ``category_probs`` ``(sum T, C)``);
    ``fields`` (checked names of :data:`TOKEN_FIELDS`, default all): only these per-token fields."""
    from safetensors.torch import save

    width = {len(r.category_names) for r in risks}
    if len(width) > 1:
        raise ValueError(f"risks with different category counts {sorted(width)} cannot share one tensor")
    c = width.pop() if width else 0
    wanted = tuple(TOKEN_FIELDS) if fields is None else tuple(fields)
    tensors = {"lengths": torch.tensor([len(r.p_unsafe) for r in risks], dtype=torch.long)}
    for name in wanted:
        dtype = TOKEN_FIELDS[name]
        parts = [getattr(r, name).to(dtype) for r in risks]
        empty = torch.zeros((0, 2) if name == "offsets" else (0, c) if name == "category_probs" else (0,))
        tensors[name] = torch.cat(parts).contiguous() if parts else empty.to(dtype)
    scalars = [{key: risk_to_json_scalar(r, key) for key in _SCALARS} for r in risks]
    return save(tensors, metadata={"risks": json.dumps(scalars), "fields": json.dumps(list(wanted))})


def risks_to_json_bytes(risks: Sequence[TokenRisk], fields: Sequence[str] | None = None) -> bytes:
    """The JSON array of :func:`risk_to_json` of ``risks``, encoded: what a replica hands the ingress for a JSON
    answer (bytes, so the hop between them pickles no lists of floats)."""
    return json.dumps([risk_to_json(r, fields) for r in risks]).encode()


def risk_to_json_scalar(r: TokenRisk, key: str) -> Any:
    """One non-tensor field of a ``TokenRisk`` as :func:`risk_to_json` writes it."""
    value = getattr(r, key)
    if key in ("category_names", "span"):
        return None if value is None else list(value)
    if key in ("query_probs", "query_category_probs"):
        return None if value is None else dict(value)
    return value


def risks_from_bytes(data: bytes) -> list[TokenRisk]:
    """Inverse of :func:`risks_to_bytes` (fields left out are :func:`placeholder` s). A body that is not such a
    file (truncated, a wrong dtype or shape, a missing or unknown field, lengths that do not add up) raises
    ``ValueError`` naming the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
        header_len = int.from_bytes(bytes(data[:8]), "little")
        header = json.loads(bytes(data[8 : 8 + header_len]))
        meta = header.get("__metadata__") or {}
        scalars = json.loads(meta["risks"])
        fields = check_fields(json.loads(meta["fields"]) if "fields" in meta else None)
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a binary risks body: {exc}") from None
    lengths = tensors.get("lengths")
    if lengths is None or lengths.dtype != torch.long or lengths.dim() != 1 or len(lengths) != len(scalars):
        raise ValueError("binary risks: 'lengths' must be int64 (N,), one per sample")
    total = int(lengths.sum())
    for name in fields:
        t, dtype = tensors.get(name), TOKEN_FIELDS[name]
        if t is None or t.dtype != dtype or len(t) != total:
            got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise ValueError(f"binary risks: {name!r} must be {dtype} with {total} rows, got {got}")
    out = []
    sizes = lengths.tolist()
    split = {name: tensors[name].split(sizes) for name in fields}
    for i, d in enumerate(scalars):
        names = tuple(d.get("category_names") or ())
        if "category_probs" in split and split["category_probs"][i].shape[-1:] != (len(names),):
            raise ValueError(f"binary risks: sample {i} has {len(names)} category names")
        per_token = {
            name: split[name][i] if name in split else placeholder(name, sizes[i], len(names))
            for name in TOKEN_FIELDS
        }
        out.append(TokenRisk(**per_token, category_names=names, **_sample_fields(d)))
    return out


def _sample_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """The per-sample (non-tensor) fields of a ``TokenRisk`` from its JSON form or binary metadata."""
    span = d.get("span")
    return {
        "query_probs": d.get("query_probs"),
        "query_category_probs": d.get("query_category_probs"),
        "truncated": bool(d.get("truncated", False)),
        "span": None if span is None else (int(span[0]), int(span[1])),
        "error": d.get("error"),
        "reason": d.get("reason"),
        "answer_missing": bool(d.get("answer_missing", False)),
    }
