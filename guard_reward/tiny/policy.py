"""Tiny stand-ins for the models a recipe trains with: a Qwen3 policy and a one-logit helpfulness reward model,
both with the real Qwen tokenizer and a ChatML chat template (random weights; for smoke runs and tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from guard_reward.tiny.gen import qwen3_config
from guard_reward.tiny.tokenizer import QWEN3_VOCAB_SIZE, qwen_tokenizer

#: A minimal ChatML template (the structure of Qwen3's own, without the tool and thinking branches).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Ids the Qwen3 tokenizer can produce: 151,643 BPE ranks and 26 special tokens.
QWEN3_TOKENIZER_SIZE = 151669
_SIZES = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16)


def tiny_policy(seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a 2-layer ``Qwen3ForCausalLM`` with Qwen3's vocabulary and special ids."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.manual_seed(seed)
    # 151,936 embedding rows like a real Qwen3 (151,669 tokens, the rest padding): a random policy samples the
    # padded rows, as under-trained real ones do, and the rewards must take them
    model = Qwen3ForCausalLM(qwen3_config(**_SIZES, vocab_size=QWEN3_VOCAB_SIZE))
    model.generation_config = GenerationConfig(eos_token_id=151645, pad_token_id=151643, bos_token_id=151643)
    return model, qwen_tokenizer(CHATML)


def build_tiny_policy(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Save :func:`tiny_policy` as a checkpoint folder (what ``model_name_or_path`` can point at)."""
    model, tokenizer = tiny_policy(seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def build_tiny_reward_model(path: str | os.PathLike, *, seed: int = 1) -> Path:
    """A random ``Qwen3ForSequenceClassification`` with one label: a stand-in helpfulness reward model."""
    from transformers import Qwen3ForSequenceClassification

    torch.manual_seed(seed)
    config = qwen3_config(**_SIZES, vocab_size=QWEN3_TOKENIZER_SIZE, num_labels=1)
    config.architectures = ["Qwen3ForSequenceClassification"]
    model = Qwen3ForSequenceClassification(config)
    model.save_pretrained(path)
    qwen_tokenizer(CHATML).save_pretrained(path)
    return Path(path)
