"""The sandbox policy: a tiny ``Qwen3ForCausalLM`` pre-trained in-process on synthetic chats.

Pre-training (supervised, loss on the answer tokens) runs until the policy writes fluent sentences of the language
and its risk depends on the request: it answers harmful requests unsafely far more often than benign ones, as an
unaligned instruction-tuned model would. Safety RL then has a real job (cut the unsafe answers) and a real way to
fail (refuse everything, or stop answering). Chats are drawn fresh at every step, so the policy never memorises
a fixed set of answers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from guard_reward.sandbox.language import Language
from guard_reward.sandbox.tokenizer import IM_END, IM_START, PAD, sandbox_tokenizer
from guard_reward.sandbox.word_classes import init_word_classes
from guard_reward.tiny.training import Example, causal_lm_loss, lm_example, train_loop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySize:
    """Sizes of the policy model and of its pre-training."""

    hidden_size: int = 96
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 24
    intermediate_size: int = 192
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    class_init: float = 2.0


def qwen3_sandbox_config(tokenizer, **sizes: int):
    """A ``Qwen3Config`` for the sandbox vocabulary (tied embeddings, Qwen3's norm eps and RoPE base)."""
    from transformers import Qwen3Config

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    # Eager attention: at these sizes on CPU, SDPA with a padding mask trains several times slower.
    config._attn_implementation = "eager"
    return config


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of ``[{"role": "user", "content": p}]`` through the policy's chat template with the generation
    prompt, for many prompts at once (equal to ``apply_chat_template``, without rendering Jinja per prompt)."""
    head = tokenizer.convert_tokens_to_ids([IM_START, "user", "\n"])
    tail = tokenizer.convert_tokens_to_ids([IM_END, "\n", IM_START, "assistant", "\n"])
    return [[*head, *ids, *tail] for ids in tokenizer(prompts)["input_ids"]]


def pretrain_policy(
    language: Language, size: PolicySize = PolicySize(), seed: int = 0, progress: bool = True
) -> tuple[torch.nn.Module, object]:
    """Build and pre-train the sandbox policy; returns ``(model, tokenizer)`` (model in eval mode, float32)."""
    from transformers import Qwen3ForCausalLM

    tokenizer = sandbox_tokenizer()
    torch.manual_seed(seed)
    sizes = {k: getattr(size, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    sizes |= {k: getattr(size, k) for k in ("num_key_value_heads", "head_dim", "intermediate_size")}
    model = Qwen3ForCausalLM(qwen3_sandbox_config(tokenizer, **sizes))
    model.generation_config = _generation_config(tokenizer)
    init_word_classes(model, tokenizer, scale=size.class_init, seed=seed)
    end = tokenizer.convert_tokens_to_ids(IM_END)

    def examples(rng: random.Random, n: int) -> list[Example]:
        chats = [language.chat(rng, harmful=rng.random() < 0.5) for _ in range(n)]
        prompts = prompt_ids(tokenizer, [c.prompt for c in chats])
        answers = tokenizer([c.response for c in chats])["input_ids"]
        return [lm_example(p, [*a, end]) for p, a in zip(prompts, answers, strict=True)]

    n_params = sum(p.numel() for p in model.parameters())
    logger.info("policy: Qwen3ForCausalLM, %d parameters, pre-training %d steps x %d chats", n_params, size.steps,
                size.batch_size)  # fmt: skip
    train_loop(
        model,
        examples,
        loss_fn=causal_lm_loss,
        steps=size.steps,
        batch_size=size.batch_size,
        lr=size.lr,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        desc="policy pre-training",
        progress=progress,
    )
    return model, tokenizer
