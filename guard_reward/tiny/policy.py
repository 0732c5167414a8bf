"""Tiny stand-ins for the models a recipe trains with: a Qwen3 policy and a one-logit helpfulness reward model,
both with the real Qwen tokenizer (random weights; for smoke runs and tests). The policy's tokenizer carries a
Qwen3 chat template with tool calling (``templates/qwen3_tools.jinja``) and the matching response parser, so
TRL's ``tools=`` accepts it and reads its ``<tool_call>`` blocks."""

from __future__ import annotations

import os
from importlib import resources
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
#: Qwen3's chat template with tools (system ``<tools>`` block, ``<tool_call>`` / ``<tool_response>``), written for
#: the stand-ins: on conversations without tools or reasoning it renders exactly what :data:`CHATML` renders.
QWEN3_TOOLS_TEMPLATE = (
    resources.files("guard_reward") / "tiny" / "templates" / "qwen3_tools.jinja"
).read_text()
#: How transformers' ``parse_response`` reads a generated assistant turn in that format (saved in
#: ``tokenizer_config.json``): an optional think block, the text, then any ``<tool_call>`` JSON blocks.
QWEN3_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}
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
    return model, policy_tokenizer()


def policy_tokenizer() -> Any:
    """The Qwen3 tokenizer with :data:`QWEN3_TOOLS_TEMPLATE` and :data:`QWEN3_RESPONSE_TEMPLATE`."""
    tok = qwen_tokenizer(QWEN3_TOOLS_TEMPLATE)
    tok.response_template = QWEN3_RESPONSE_TEMPLATE
    return tok


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
