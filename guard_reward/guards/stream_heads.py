"""Qwen3Guard-Stream without remote code: transformers' Qwen3 backbone plus the library's own head module.

A Stream checkpoint (``architectures: ["Qwen3ForGuardModel"]``) officially loads only with
``trust_remote_code=True``, and that remote code breaks on transformers 5. The model is simple enough to
rebuild: the backbone is a stock ``Qwen3Model``; on its last hidden state ``h`` (after the final RMSNorm) sit
two pathways, response and query, each ``x = RMSNorm(W_pre h)`` followed by a risk-level head and a category
head (linear, no bias; softmax is applied by the caller). :class:`Qwen3StreamGuardModel` declares those
modules under the checkpoint's exact tensor names, so ``from_pretrained`` loads single-file and sharded
safetensors alike.

Differences from the remote code: the heads are applied only to the positions the caller asks for
(:meth:`Qwen3StreamGuardModel.response_logits` / :meth:`~Qwen3StreamGuardModel.query_logits` on gathered
hidden states) instead of to every position of every sequence, and the checkpoint is checked before loading —
a missing or mis-shaped head tensor or a non-Stream checkpoint is a clear error, never a silently random head.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3PreTrainedModel, Qwen3RMSNorm

from guard_reward.guards.stream_inputs import Encoded
from guard_reward.types import TokenRisk

logger = logging.getLogger(__name__)

STREAM_ARCHITECTURE = "Qwen3ForGuardModel"
SIZE_FIELDS = (
    "guard_inner_size",
    "num_risk_level",
    "num_category",
    "num_query_risk_level",
    "num_query_category",
)
DEFAULT_RISK_LEVELS = ("Safe", "Unsafe", "Controversial")
DEFAULT_RESPONSE_CATEGORIES = (
    "Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm", "Politically Sensitive Topics", "PII",
    "Copyright Violation", "Non-violent Illegal Acts", "Unethical Acts",
)  # fmt: skip
DEFAULT_QUERY_CATEGORIES = (*DEFAULT_RESPONSE_CATEGORIES, "Jailbreak")


class StreamCheckpointError(ValueError):
    """The folder or hub id is not a loadable Qwen3Guard-Stream checkpoint."""


class Qwen3StreamGuardModel(Qwen3PreTrainedModel):
    """Qwen3 backbone + Stream heads, with the checkpoint's tensor names.

    ``forward`` returns the backbone's last hidden state ``(B, L, H)``; the heads are separate calls so that
    only the positions that are judged pay for them.
    """

    def __init__(self, config: Qwen3Config):
        super().__init__(config)
        hidden, inner, eps = config.hidden_size, config.guard_inner_size, config.rms_norm_eps
        self.model = Qwen3Model(config)
        self.risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.risk_level_head = nn.Linear(inner, config.num_risk_level, bias=False)
        self.category_head = nn.Linear(inner, config.num_category, bias=False)
        self.query_risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.query_risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.query_risk_level_head = nn.Linear(inner, config.num_query_risk_level, bias=False)
        self.query_category_head = nn.Linear(inner, config.num_query_category, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """Backbone forward; ``kwargs`` go to ``Qwen3Model`` (``attention_mask``, ``position_ids``, the KV cache
        under :func:`~guard_reward.guards.common.cache_kwarg`'s name, ...)."""
        return self.model(input_ids=input_ids, **kwargs)

    def response_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, H)`` hidden states -> risk-level logits ``(N, num_risk_level)``, category logits ``(N,
        C)``."""
        x = self.risk_level_category_layernorm(self.risk_level_category_pre(hidden))
        return self.risk_level_head(x), self.category_head(x)

    def query_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, H)`` hidden states -> query risk logits ``(N, num_query_risk_level)``, category ``(N,
        Cq)``."""
        x = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(hidden))
        return self.query_risk_level_head(x), self.query_category_head(x)


def head_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The eight head tensors a checkpoint with this ``config.json`` must hold, with their shapes."""
    hidden, inner = int(config["hidden_size"]), int(config["guard_inner_size"])
    return {
        "risk_level_category_pre.weight": (inner, hidden),
        "risk_level_category_layernorm.weight": (inner,),
        "risk_level_head.weight": (int(config["num_risk_level"]), inner),
        "category_head.weight": (int(config["num_category"]), inner),
        "query_risk_level_category_pre.weight": (inner, hidden),
        "query_risk_level_category_layernorm.weight": (inner,),
        "query_risk_level_head.weight": (int(config["num_query_risk_level"]), inner),
        "query_category_head.weight": (int(config["num_query_category"]), inner),
    }


def check_stream_config(config: Mapping[str, Any], where: str) -> None:
    """Fail clearly when ``config.json`` does not describe a Qwen3Guard-Stream checkpoint."""
    architectures = config.get("architectures") or []
    missing = [f for f in SIZE_FIELDS if f not in config]
    if STREAM_ARCHITECTURE not in architectures or missing:
        detail = f"architectures={architectures}" + (f", missing config fields {missing}" if missing else "")
        raise StreamCheckpointError(
            f"{where} is not a Qwen3Guard-Stream checkpoint ({detail}); expected architectures "
            f"[{STREAM_ARCHITECTURE!r}] and the fields {', '.join(SIZE_FIELDS)}. "
            "A Qwen3Guard-Gen checkpoint is loaded with GenGuard instead."
        )
    if config.get("model_type", "qwen3") != "qwen3":
        raise StreamCheckpointError(
            f"{where}: model_type={config.get('model_type')!r}; the Stream backbone must be 'qwen3'"
        )


def _safetensors_header(file: Path) -> dict[str, Any]:
    """Tensor names -> ``{"shape", "dtype", ...}`` from a safetensors header, without reading the tensor
    data."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _resolve(name_or_path: str | os.PathLike, filename: str, **hub_kw: Any) -> Path | None:
    """A checkpoint file as a local path (downloaded for hub ids), or ``None`` when it does not exist."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / filename if (path / filename).exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename, **hub_kw))
    except EntryNotFoundError:
        return None


def check_head_tensors(name_or_path: str | os.PathLike, config: Mapping[str, Any], **hub_kw: Any) -> None:
    """Check that every head tensor is stored with the shape ``config.json`` implies (headers only).

    Follows ``model.safetensors.index.json`` to the shards that hold the heads, else reads
    ``model.safetensors``.
    """
    expected = head_shapes(config)
    index_file = _resolve(name_or_path, "model.safetensors.index.json", **hub_kw)
    if index_file is not None:
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        files = sorted({weight_map[k] for k in expected if k in weight_map})
    else:
        weight_map, files = {}, ["model.safetensors"]
    found: dict[str, tuple[int, ...]] = {}
    for name in files:
        file = _resolve(name_or_path, name, **hub_kw)
        if file is None:
            raise StreamCheckpointError(
                f"{name_or_path}: weight file {name} is missing (only safetensors is read)"
            )
        for key, meta in _safetensors_header(file).items():
            if key in expected:
                found[key] = tuple(meta["shape"])
    missing = [k for k in expected if k not in found]
    if missing:
        raise StreamCheckpointError(
            f"{name_or_path}: Stream head tensor(s) missing from the checkpoint: {', '.join(missing)}; "
            f"a Qwen3Guard-Stream checkpoint stores all of {', '.join(expected)}"
        )
    wrong = [
        f"{k} has shape {list(found[k])}, expected {list(v)}" for k, v in expected.items() if found[k] != v
    ]
    if wrong:
        raise StreamCheckpointError(
            f"{name_or_path}: Stream head tensor(s) do not match config.json ({'; '.join(wrong)}); "
            f"sizes come from hidden_size and {', '.join(SIZE_FIELDS)}"
        )


def _read_map(config: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, Mapping[str, Any]] | None:
    for name in names:
        value = config.get(name)
        if value:
            return name, value
    return None


def _ordered(field: str, mapping: Mapping[Any, Any], size: int, where: str) -> tuple[str, ...]:
    """``{"0": "Safe", ...}`` (string or int keys) -> names in index order; must cover exactly
    ``0..size-1``."""
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError) as exc:
        raise StreamCheckpointError(
            f"{where}: {field} keys must be integers (as strings), got {mapping!r}"
        ) from exc
    if sorted(by_index) != list(range(size)):
        raise StreamCheckpointError(
            f"{where}: {field} has indices {sorted(by_index)}, "
            f"but its head has {size} outputs (0..{size - 1})"
        )
    # One official script writes '"Violent"' with literal quotes; the label is the text inside them.
    return tuple(by_index[i].strip().strip('"') for i in range(size))


@dataclass(frozen=True)
class LabelMaps:
    """Label names in head order, from ``config.json`` or the documented defaults."""

    risk_levels: tuple[str, ...]
    categories: tuple[str, ...]
    query_risk_levels: tuple[str, ...]
    query_categories: tuple[str, ...]


def label_maps(config: Mapping[str, Any], where: str = "config.json") -> LabelMaps:
    """Read the four label maps.

    Response maps: ``response_risk_level_map`` / ``response_category_map``, else the plain
    ``risk_level_map`` / ``category_map`` spelling, else the defaults (risk 0 Safe, 1 Unsafe, 2 Controversial;
    the 8 response categories in Stream order). Query maps: ``query_*``, else the plain risk map, else the
    defaults (the 9 query categories end with ``Jailbreak``). A default must match the head size, else loading
    fails.
    """
    specs = {
        "risk_levels": (("response_risk_level_map", "risk_level_map"), "num_risk_level", DEFAULT_RISK_LEVELS),
        "categories": (
            ("response_category_map", "category_map"),
            "num_category",
            DEFAULT_RESPONSE_CATEGORIES,
        ),
        "query_risk_levels": (
            ("query_risk_level_map", "risk_level_map"),
            "num_query_risk_level",
            DEFAULT_RISK_LEVELS,
        ),
        "query_categories": (("query_category_map",), "num_query_category", DEFAULT_QUERY_CATEGORIES),
    }
    out: dict[str, tuple[str, ...]] = {}
    for attr, (fields, size_field, default) in specs.items():
        size = int(config[size_field])
        found = _read_map(config, fields)
        if found is not None:
            out[attr] = _ordered(found[0], found[1], size, where)
            continue
        if len(default) != size:
            raise StreamCheckpointError(
                f"{where}: {size_field}={size} but no {' / '.join(fields)} is given and the default has "
                f"{len(default)} labels; add the map to config.json"
            )
        logger.info("%s: no %s, using the documented default order", where, " / ".join(fields))
        out[attr] = default
    for attr in ("risk_levels", "query_risk_levels"):
        unknown = set(out[attr]) - set(DEFAULT_RISK_LEVELS)
        if unknown or len(set(out[attr])) != len(out[attr]):
            raise StreamCheckpointError(
                f"{where}: risk-level labels {out[attr]} must be distinct names among {DEFAULT_RISK_LEVELS}"
            )
    return LabelMaps(**out)


def load_stream_model(
    name_or_path: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    **hub_kw: Any,
) -> tuple[Qwen3StreamGuardModel, dict[str, Any]]:
    """Check and load a Stream checkpoint (local folder or hub id) in eval mode; returns the model and the raw
    ``config.json``. ``trust_remote_code`` is never used: ``auto_map`` is ignored."""
    from guard_reward.guards.common import read_config_json

    raw = read_config_json(name_or_path, **hub_kw)
    check_stream_config(raw, str(name_or_path))
    check_head_tensors(name_or_path, raw, **hub_kw)
    config = Qwen3Config.from_pretrained(name_or_path, **hub_kw)
    model = Qwen3StreamGuardModel.from_pretrained(
        name_or_path, config=config, dtype=dtype, attn_implementation=attn_implementation, **hub_kw
    )
    return model.to(device).eval(), raw


def token_risks(
    model: Qwen3StreamGuardModel,
    maps: LabelMaps,
    batch: Sequence[Encoded],
    response_hidden: torch.Tensor,
    query_hidden: torch.Tensor | None,
) -> list[TokenRisk]:
    """Apply the heads to gathered hidden states, softmax in float32, and split the result per item.

    Args:
        batch: the items, in order; item ``b`` owns ``len(batch[b].token_ids)`` rows of ``response_hidden``.
        response_hidden: ``(N, H)`` hidden states of all judged tokens, item after item.
        query_hidden: ``(Q, H)`` hidden states at the query positions of the items that have one, in order.
    """
    q_risk = q_cat = None
    risk_logits, cat_logits = model.response_logits(response_hidden)
    p_risk = risk_logits.float().softmax(-1).cpu()  # (N, R)
    p_cat = cat_logits.float().softmax(-1).cpu()  # (N, C)
    if query_hidden is not None and query_hidden.shape[0]:
        ql, qc = model.query_logits(query_hidden)
        q_risk, q_cat = ql.float().softmax(-1).cpu(), qc.float().softmax(-1).cpu()  # (Q, R), (Q, Cq)
    levels = {name: k for k, name in enumerate(maps.risk_levels)}
    out, row, q = [], 0, 0
    for e in batch:
        n = len(e.token_ids)
        p = p_risk[row : row + n]

        def level(name: str, p: torch.Tensor = p) -> torch.Tensor:
            # A checkpoint without this level gives it probability 0 (it cannot predict it).
            return p[:, levels[name]] if name in levels else torch.zeros(p.shape[0])

        query_probs = query_cats = None
        if e.query_pos is not None and q_risk is not None and q_cat is not None:
            query_probs = dict.fromkeys(("Safe", "Controversial", "Unsafe"), 0.0)
            query_probs.update({name: float(q_risk[q, k]) for k, name in enumerate(maps.query_risk_levels)})
            query_cats = {name: float(q_cat[q, k]) for k, name in enumerate(maps.query_categories)}
            q += 1
        out.append(
            TokenRisk(
                token_ids=torch.tensor(e.token_ids, dtype=torch.long),
                offsets=e.offsets.reshape(-1, 2),
                p_safe=level("Safe"),
                p_unsafe=level("Unsafe"),
                p_controversial=level("Controversial"),
                category_probs=p_cat[row : row + n],
                category_names=maps.categories,
                query_probs=query_probs,
                query_category_probs=query_cats,
                truncated=e.truncated,
                span=e.span,
                answer_missing=e.answer_missing,
            )
        )
        row += n
    return out
