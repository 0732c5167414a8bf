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


def risk_to_json(r: TokenRisk) -> dict[str, Any]:
    """All fields of a ``TokenRisk``, tensors as (nested) lists."""
    return {
        "token_ids": r.token_ids.tolist(),
        "offsets": r.offsets.tolist(),
        "p_safe": r.p_safe.tolist(),
        "p_unsafe": r.p_unsafe.tolist(),
        "p_controversial": r.p_controversial.tolist(),
        "category_probs": r.category_probs.tolist(),
        "category_names": list(r.category_names),
        "query_probs": None if r.query_probs is None else dict(r.query_probs),
        "query_category_probs": None if r.query_category_probs is None else dict(r.query_category_probs),
        "truncated": r.truncated,
        "span": None if r.span is None else list(r.span),
        "error": r.error,
        "reason": r.reason,
        "answer_missing": r.answer_missing,
    }


def risk_from_json(d: Mapping[str, Any]) -> TokenRisk:
    """Inverse of :func:`risk_to_json`: ``(T,)`` float32 probabilities, ``(T, 2)`` long offsets, ``(T, C)``
    float32 category probabilities (also for ``T == 0``)."""
    names = tuple(d.get("category_names") or ())
    return TokenRisk(
        token_ids=torch.tensor(d["token_ids"], dtype=torch.long),
        offsets=torch.tensor(d["offsets"], dtype=torch.long).reshape(-1, 2),
        p_safe=torch.tensor(d["p_safe"], dtype=torch.float32),
        p_unsafe=torch.tensor(d["p_unsafe"], dtype=torch.float32),
        p_controversial=torch.tensor(d["p_controversial"], dtype=torch.float32),
        category_probs=torch.tensor(d["category_probs"], dtype=torch.float32).reshape(-1, len(names)),
        category_names=names,
        **_sample_fields(d),
    )


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


def risks_to_bytes(risks: Sequence[TokenRisk]) -> bytes:
    """``risks`` as one safetensors file (module docstring): ``lengths`` ``(N,)`` int64, each per-token field
    concatenated over the samples (``(sum T,)``, ``offsets`` ``(sum T, 2)``, ``category_probs`` ``(sum T, C)``)."""
    from safetensors.torch import save

    width = {len(r.category_names) for r in risks}
    if len(width) > 1:
        raise ValueError(f"risks with different category counts {sorted(width)} cannot share one tensor")
    c = width.pop() if width else 0
    tensors = {"lengths": torch.tensor([len(r.p_unsafe) for r in risks], dtype=torch.long)}
    for name, dtype in TOKEN_FIELDS.items():
        parts = [getattr(r, name).to(dtype) for r in risks]
        empty = torch.zeros((0, 2) if name == "offsets" else (0, c) if name == "category_probs" else (0,))
        tensors[name] = torch.cat(parts).contiguous() if parts else empty.to(dtype)
    scalars = [{key: risk_to_json_scalar(r, key) for key in _SCALARS} for r in risks]
    return save(tensors, metadata={"risks": json.dumps(scalars)})


def risk_to_json_scalar(r: TokenRisk, key: str) -> Any:
    """One non-tensor field of a ``TokenRisk`` as :func:`risk_to_json` writes it."""
    value = getattr(r, key)
    if key in ("category_names", "span"):
        return None if value is None else list(value)
    if key in ("query_probs", "query_category_probs"):
        return None if value is None else dict(value)
    return value


def risks_from_bytes(data: bytes) -> list[TokenRisk]:
    """Inverse of :func:`risks_to_bytes`. A body that is not such a file (truncated, a wrong dtype or shape, a
    missing field, lengths that do not add up) raises ``ValueError`` naming the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
        header_len = int.from_bytes(bytes(data[:8]), "little")
        header = json.loads(bytes(data[8 : 8 + header_len]))
        scalars = json.loads((header.get("__metadata__") or {})["risks"])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a binary risks body: {exc}") from None
    lengths = tensors.get("lengths")
    if lengths is None or lengths.dtype != torch.long or lengths.dim() != 1 or len(lengths) != len(scalars):
        raise ValueError("binary risks: 'lengths' must be int64 (N,), one per sample")
    total = int(lengths.sum())
    for name, dtype in TOKEN_FIELDS.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or len(t) != total:
            got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise ValueError(f"binary risks: {name!r} must be {dtype} with {total} rows, got {got}")
    out = []
    split = {name: tensors[name].split(lengths.tolist()) for name in TOKEN_FIELDS}
    for i, d in enumerate(scalars):
        d = {**d, "category_names": tuple(d.get("category_names") or ())}
        if split["category_probs"][i].shape[-1:] != (len(d["category_names"]),) and len(lengths):
            raise ValueError(f"binary risks: sample {i} has {len(d['category_names'])} category names")
        out.append(
            TokenRisk(
                **{name: split[name][i] for name in TOKEN_FIELDS},
                category_names=d["category_names"],
                **_sample_fields(d),
            )
        )
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
