"""Tiny Qwen3Guard-Gen stand-ins: a small ``Qwen3ForCausalLM`` saved with the real Qwen tokenizer and a chat
template of the documented Gen structure, exactly as ``save_pretrained`` lays out a real checkpoint
(``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json`` with the ``chat_template``)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from guard_reward.tiny.tokenizer import QWEN3_VOCAB_SIZE, qwen_tokenizer


def gen_chat_template() -> str:
    """The stand-in Qwen3Guard-Gen chat template (both moderation branches)."""
    return (resources.files("guard_reward.tiny") / "templates" / "qwen3guard_gen.jinja").read_text()


def qwen3_config(
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    vocab_size: int = QWEN3_VOCAB_SIZE,
    max_position_embeddings: int = 4096,
    **extra: object,
):
    """A Qwen3 config with Qwen3's token ids (bos/eos/pad) and the given sizes."""
    from transformers import Qwen3Config

    return Qwen3Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        **extra,
    )


def build_tiny_gen(
    path: str | os.PathLike, *, seed: int = 0, chat_template: str | None = None, **config_kw: object
) -> Path:
    """Write a random-weight Qwen3Guard-Gen-shaped checkpoint to ``path`` and return it.

    ``config_kw`` overrides the sizes of :func:`qwen3_config` (e.g. ``max_position_embeddings``).
    """
    from transformers import GenerationConfig, Qwen3ForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    config = qwen3_config(**config_kw)  # type: ignore[arg-type]
    config.architectures = ["Qwen3ForCausalLM"]
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False
    )
    model.save_pretrained(path)
    qwen_tokenizer(gen_chat_template() if chat_template is None else chat_template).save_pretrained(path)
    return path
