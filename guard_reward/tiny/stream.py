"""Tiny Qwen3Guard-Stream stand-ins, written in the on-disk format of the real checkpoints.

A real Stream checkpoint is a Qwen3 backbone (``model.*`` tensors) plus eight head tensors
(``risk_level_category_pre``, ``risk_level_category_layernorm``, ``risk_level_head``, ``category_head`` and
their ``query_`` twins), a ``config.json`` with ``architectures: ["Qwen3ForGuardModel"]``, the guard size
fields, the label maps (string keys) and an ``auto_map`` that points at remote code shipped next to it. The
stand-in writes all of that — except the remote code, which ``guard_reward`` never needs — with random
weights, as one ``model.safetensors`` or as index-linked shards. The tensors are written with ``safetensors``
directly, not through the library's own model class, so loading them is a real test of the loader.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from guard_reward.guards.stream_heads import (
    DEFAULT_QUERY_CATEGORIES,
    DEFAULT_RESPONSE_CATEGORIES,
    DEFAULT_RISK_LEVELS,
)
from guard_reward.tiny.gen import qwen3_config
from guard_reward.tiny.tokenizer import qwen_tokenizer

# The label orders the real checkpoints use (the loader's documented defaults), written into every stand-in.
RISK_LEVEL_NAMES = DEFAULT_RISK_LEVELS
RESPONSE_CATEGORY_NAMES = DEFAULT_RESPONSE_CATEGORIES
QUERY_CATEGORY_NAMES = DEFAULT_QUERY_CATEGORIES
#: The remote-code classes named by the real ``auto_map`` (the files are deliberately absent).
STREAM_AUTO_MAP = {
    "AutoConfig": "configuration_qwen3.Qwen3Config",
    "AutoModel": "modeling_qwen3_guard.Qwen3ForGuardModel",
}

LabelMaps = Literal["prefixed", "plain", "none"]


def stream_chat_template() -> str:
    """The stand-in chat template (stock Qwen3 structure) shipped with the tiny Stream checkpoints."""
    return (resources.files("guard_reward.tiny") / "templates" / "qwen3_stream.jinja").read_text()


def _index_map(names: Sequence[str]) -> dict[str, str]:
    return {str(i): name for i, name in enumerate(names)}


def stream_config_json(
    config_dict: dict, *, guard_inner_size: int, label_maps: LabelMaps, category_names: Sequence[str]
) -> dict:
    """Add the Qwen3Guard-Stream fields to a Qwen3 ``config.json`` dict."""
    out = dict(config_dict)
    out["architectures"] = ["Qwen3ForGuardModel"]
    out["auto_map"] = dict(STREAM_AUTO_MAP)
    out.update(
        guard_inner_size=guard_inner_size,
        num_risk_level=len(RISK_LEVEL_NAMES),
        num_category=len(category_names),
        num_query_risk_level=len(RISK_LEVEL_NAMES),
        num_query_category=len(QUERY_CATEGORY_NAMES),
    )
    if label_maps == "prefixed":
        out["response_risk_level_map"] = _index_map(RISK_LEVEL_NAMES)
        out["response_category_map"] = _index_map(category_names)
        out["query_risk_level_map"] = _index_map(RISK_LEVEL_NAMES)
        out["query_category_map"] = _index_map(QUERY_CATEGORY_NAMES)
    elif label_maps == "plain":
        out["risk_level_map"] = _index_map(RISK_LEVEL_NAMES)
        out["category_map"] = _index_map(category_names)
    elif label_maps != "none":
        raise ValueError(f"label_maps={label_maps!r} is not accepted; use 'prefixed', 'plain' or 'none'")
    return out


def head_tensors(
    hidden_size: int, inner: int, num_category: int, *, generator: torch.Generator, head_scale: float = 3.0
) -> dict[str, torch.Tensor]:
    """Random head tensors with the checkpoint's names and shapes.

    ``head_scale`` sets the spread of the risk/category logits (about ``head_scale`` standard deviations), so
    a random guard still changes its mind from token to token instead of sitting at a uniform 1/3.
    """

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    out: dict[str, torch.Tensor] = {}
    for prefix, n_cat in (("", num_category), ("query_", len(QUERY_CATEGORY_NAMES))):
        out[f"{prefix}risk_level_category_pre.weight"] = normal(
            inner, hidden_size, std=1 / math.sqrt(hidden_size)
        )
        out[f"{prefix}risk_level_category_layernorm.weight"] = 1.0 + normal(inner, std=0.1)
        out[f"{prefix}risk_level_head.weight"] = normal(
            len(RISK_LEVEL_NAMES), inner, std=head_scale / math.sqrt(inner)
        )
        out[f"{prefix}category_head.weight"] = normal(n_cat, inner, std=head_scale / math.sqrt(inner))
    return out


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards <= 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    # Backbone tensors spread over the shards in order; response heads in the first shard, query heads in the
    # last, so a loader has to follow the index across files to find all eight.
    backbone = [k for k in tensors if k.startswith("model.")]
    groups: list[list[str]] = [[] for _ in range(shards)]
    per = math.ceil(len(backbone) / shards)
    for i, key in enumerate(backbone):
        groups[i // per].append(key)
    for key in tensors:
        if not key.startswith("model."):
            groups[-1 if key.startswith("query_") else 0].append(key)
    weight_map, total = {}, 0
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(path / name), metadata={"format": "pt"})
        for k in keys:
            weight_map[k] = name
            total += tensors[k].numel() * tensors[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_tiny_stream(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    shards: int = 1,
    guard_inner_size: int = 32,
    label_maps: LabelMaps = "prefixed",
    category_names: Sequence[str] = RESPONSE_CATEGORY_NAMES,
    head_scale: float = 3.0,
    chat_template: str | None = None,
    **config_kw: object,
) -> Path:
    """Write a random-weight Qwen3Guard-Stream-shaped checkpoint to ``path`` and return it.

    ``shards > 1`` writes ``model-0000k-of-0000n.safetensors`` files plus ``model.safetensors.index.json``;
    ``label_maps`` picks the ``response_*``/``query_*`` spelling, the plain
    ``risk_level_map``/``category_map`` one, or none (the loader's defaults apply); ``config_kw`` overrides
    the backbone sizes of :func:`~guard_reward.tiny.gen.qwen3_config` (e.g. ``max_position_embeddings``).
    """
    from transformers import Qwen3Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = qwen3_config(**config_kw)  # type: ignore[arg-type]
    backbone = Qwen3Model(config)
    tensors = {f"model.{k}": v.detach().clone() for k, v in backbone.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    tensors.update(
        head_tensors(
            config.hidden_size,
            guard_inner_size,
            len(category_names),
            generator=generator,
            head_scale=head_scale,
        )
    )
    _write_safetensors(path, tensors, shards)
    config_dict = stream_config_json(
        config.to_dict(),
        guard_inner_size=guard_inner_size,
        label_maps=label_maps,
        category_names=category_names,
    )
    (path / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    qwen_tokenizer(stream_chat_template() if chat_template is None else chat_template).save_pretrained(path)
    return path
