"""Tiny policy, dataset, rewards and config for the GuardPPOTrainer tests (CPU, offline, seconds per step).

The policy is a 1-layer Qwen3 with the real Qwen3 vocabulary and a ChatML template, so completions are real
Qwen token ids (the Stream guard stand-in scores the same ids).
"""

from __future__ import annotations

from pathlib import Path

import torch

from guard_reward.types import DenseRewards

CHATML = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
POLICY_SIZES = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 16, "intermediate_size": 64}  # fmt: skip
PROMPTS = ["How do I bake bread?", "Tell me about rivers.", "How can I pick a lock?", "Write a short poem."]
TWO_PROMPTS = [PROMPTS[0], PROMPTS[2]]  # one benign, one harmful


def policy_tokenizer():
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    return qwen_tokenizer(CHATML)


def build_tiny_policy(path: Path, seed: int = 0) -> Path:
    """A random 1-layer Qwen3ForCausalLM + tokenizer, saved with ``save_pretrained`` (EOS = im_end)."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    from guard_reward.tiny.gen import qwen3_config

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(**POLICY_SIZES))
    model.generation_config = GenerationConfig(eos_token_id=151645, pad_token_id=151643, bos_token_id=151643)
    model.save_pretrained(path)
    policy_tokenizer().save_pretrained(path)
    return path


def prompt_rows(num_generations: int, prompts=PROMPTS) -> list[dict]:
    """A generation batch as GRPOTrainer's sampler yields it: each prompt ``num_generations`` times."""
    return [{"prompt": [{"role": "user", "content": p}]} for p in prompts for _ in range(num_generations)]


def dataset(n: int = 8):
    from datasets import Dataset

    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]}
    )


class LengthScore:
    """Scalar reward ``0.1 * len(completion_ids)``, ``None`` for the rows in ``skip``; records calls."""

    __name__ = "length_score"

    def __init__(self, skip: tuple[int, ...] = ()) -> None:
        self.skip = skip
        self.returned: list[list[float | None]] = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        out = [None if i in self.skip else 0.1 * len(ids) for i, ids in enumerate(completion_ids)]
        self.returned.append(out)
        return out


class TokenPenalty:
    """Dense reward: ``value`` on the token at ``position`` of every completion long enough, 0 elsewhere."""

    __name__ = "token_penalty"

    def __init__(self, position: int = 2, value: float = -1.0) -> None:
        self.position, self.value = position, value

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> DenseRewards:
        width = max(len(ids) for ids in completion_ids)
        rewards = torch.zeros(len(completion_ids), width)
        mask = torch.zeros(len(completion_ids), width, dtype=torch.bool)
        for i, ids in enumerate(completion_ids):
            mask[i, : len(ids)] = True
            if len(ids) > self.position:
                rewards[i, self.position] = self.value
        if "log_metric" in kwargs:
            kwargs["log_metric"]("guard/penalised_tokens", float((rewards != 0).sum()))
        return DenseRewards(rewards, mask)


class ZeroDense(TokenPenalty):
    __name__ = "zero_dense"

    def __init__(self) -> None:
        super().__init__(position=0, value=0.0)


def ppo_config(output_dir: Path, **overrides):
    from guard_reward.integrations.trl import GuardPPOConfig

    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=2, learning_rate=1e-3, value_learning_rate=1e-3, bf16=False, use_cpu=True, report_to="none",
        logging_steps=1, save_strategy="no", activation_checkpointing=False, beta=0.1, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return GuardPPOConfig(**kwargs)
