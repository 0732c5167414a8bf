"""Teach a tiny Qwen3Guard-Gen stand-in to answer in the verdict format.

A random-weight stand-in tests the maths but never emits a parseable verdict. Fine-tuning it for a few hundred
steps on conversations labelled by a simple rule makes it emit real ``Safety:`` / ``Categories:`` / ``Refusal:``
lines, so decoding, parsing and the offline annotation CLI are exercised end to end. The loss is taken on the
verdict tokens only, and the language-model head is applied to those positions only (the 151,936-row head over
~300 template tokens would otherwise dominate the cost).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from guard_reward.conversations import Conversation


def verdict_text(level: str, categories: Sequence[str], refusal: bool | None) -> str:
    """The verdict lines a Qwen3Guard-Gen model writes (2 lines for prompts, 3 for responses)."""
    lines = [f"Safety: {level}", f"Categories: {', '.join(categories) if categories else 'None'}"]
    if refusal is not None:
        lines.append(f"Refusal: {'Yes' if refusal else 'No'}")
    return "\n".join(lines)


def train_tiny_gen(
    path: str | os.PathLike,
    examples: Sequence[tuple[Conversation, str]],
    *,
    steps: int = 150,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Fine-tune the checkpoint in ``path`` on ``(conversation, verdict text)`` pairs and save it in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    encoded = []
    for conv, target in examples:
        prompt = tok.encode(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)
        answer = [*tok.encode(target, add_special_tokens=False), end]
        encoded.append((prompt, answer))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        loss = _verdict_loss(model, [encoded[i] for i in picks], tok.pad_token_id)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(path)
    return path


def _verdict_loss(
    model: torch.nn.Module, batch: list[tuple[list[int], list[int]]], pad_id: int
) -> torch.Tensor:
    """Mean cross-entropy over the verdict tokens of a right-padded batch."""
    width = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, (prompt, answer) in enumerate(batch):
        ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[i, : len(prompt) + len(answer)] = 1
        rows += [i] * len(answer)
        cols += range(len(prompt) - 1, len(prompt) + len(answer) - 1)  # positions predicting the verdict
        targets += answer
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]  # (N, H)
    return torch.nn.functional.cross_entropy(model.lm_head(hidden).float(), torch.tensor(targets))


def bundled_examples() -> list[tuple[Conversation, str]]:
    """The bundled example records (``guard_reward/data/moderation_examples.jsonl``) as ``(conversation, verdict
    text)`` pairs, the verdict taken from each record's ``reference`` field."""
    import json
    from importlib import resources

    text = (resources.files("guard_reward") / "data" / "moderation_examples.jsonl").read_text()
    pairs = []
    for line in text.splitlines():
        record = json.loads(line)
        conv: Conversation = [{"role": "user", "content": record["prompt"]}]
        if "response" in record:
            conv.append({"role": "assistant", "content": record["response"]})
        ref = record["reference"]
        pairs.append((conv, verdict_text(ref["level"], ref["categories"], ref.get("refusal"))))
    return pairs


def build_trained_tiny_gen(path: str | os.PathLike, *, steps: int = 150, seed: int = 0) -> Path:
    """A tiny Gen stand-in that has learned the bundled examples' verdicts (for demos and decode tests)."""
    from guard_reward.tiny.gen import build_tiny_gen

    build_tiny_gen(path, seed=seed)
    return train_tiny_gen(path, bundled_examples(), steps=steps, seed=seed)
