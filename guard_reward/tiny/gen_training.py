"""Teach a tiny Qwen3Guard-Gen stand-in to answer in the verdict format.

A random-weight stand-in tests the maths but never emits a parseable verdict. Fine-tuning it on labelled
conversations (the bundled examples' reference verdicts) until it reproduces them makes it emit real
``Safety:`` / ``Categories:`` / ``Refusal:`` lines, so decoding, parsing and the offline annotation CLI are
exercised end to end. It reuses the training loop of :mod:`guard_reward.tiny.training`; the loss is taken on
the verdict tokens only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Fine-tune the checkpoint in ``path`` on ``(conversation, verdict text)`` pairs and save it in place
    (``progress``: a progress bar over the ``steps`` ceiling).

    Training stops early once every example's verdict tokens are the model's greedy choice under teacher
    forcing (so greedy decoding reproduces them); ``steps`` is the ceiling.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard_reward.tiny.training import Example, lm_example, train_loop

    path = Path(path)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    pool: list[Example] = [
        lm_example(
            tok.encode(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False),
            [*tok.encode(target, add_special_tokens=False), end],
        )
        for conv, target in examples
    ]
    compact = _CompactVocabulary(model, sorted({i for e in pool for i in e.ids} | {tok.pad_token_id}))
    train_loop(
        compact,
        [compact.remap(e) for e in pool],
        loss_fn=_verdict_loss,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        pad_id=compact.index[tok.pad_token_id],
        seed=seed,
        desc="tiny Gen stand-in",
        progress=progress,
        # the gate is the real model: every verdict token the argmax over the whole vocabulary
        validate=lambda _: _all_verdicts_greedy(compact.write_back(), pool, tok.pad_token_id),
        target=1.0,
        check_every=25,
        min_steps=50,
    )
    compact.write_back().save_pretrained(path)
    return path


class _CompactVocabulary(torch.nn.Module):
    """The model restricted to the tokens its training examples use: ``(U, H)`` trainable embedding rows (tied
    input/output, as in Qwen3's small checkpoints) instead of all 151,936.

    The full table made every step pay a 151,936-way softmax, a dense ``(V, H)`` gradient and AdamW over it
    (~0.4 s a step, minutes in all); here a step costs the transformer's layers. The other rows keep their
    random initialisation: their logits stay small next to the trained ones, and the early-stopping gate checks
    greedy decoding over the whole vocabulary on the real model.
    """

    def __init__(self, model: torch.nn.Module, used: list[int]) -> None:
        super().__init__()
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise ValueError("the tiny Gen stand-in's training expects tied input/output embeddings")
        self.model = model
        model.get_input_embeddings().weight.requires_grad_(False)
        self.used = torch.tensor(used)
        self.index = {t: i for i, t in enumerate(used)}
        self.rows = torch.nn.Parameter(model.get_input_embeddings().weight[self.used].clone())

    def remap(self, example: Any) -> Any:
        """``example`` with token ids as indices into the used rows (targets too; ``-100`` kept)."""
        ids = [self.index[i] for i in example.ids]
        labels = tuple([t if t == -100 else self.index[t] for t in seq] for seq in example.labels)
        return type(example)(ids, labels)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.model(inputs_embeds=self.rows[ids], attention_mask=mask).last_hidden_state

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.rows.T

    def write_back(self) -> torch.nn.Module:
        """The model with the trained rows copied into its embedding table (tied, so the head too)."""
        with torch.no_grad():
            self.model.get_input_embeddings().weight[self.used] = self.rows
        return self.model


def _verdict_logits(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, V)`` at the ``N`` labelled positions of a right-padded batch, and their targets ``(N,)``.

    The LM head runs on those positions only: over ~300 template tokens the 151,936-row head would otherwise
    dominate the cost.
    """
    targets = labels[0]
    where = targets != -100
    if isinstance(model, _CompactVocabulary):
        return model.head(model.hidden(ids, mask)[where]).float(), targets[where]
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[where]
    return model.lm_head(hidden).float(), targets[where]


def _verdict_loss(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: list[torch.Tensor]
) -> torch.Tensor:
    logits, targets = _verdict_logits(model, ids, mask, labels)
    return torch.nn.functional.cross_entropy(logits, targets)


def _all_verdicts_greedy(model: torch.nn.Module, pool: Sequence[Any], pad_id: int) -> float:
    """Fraction of examples whose every verdict token is the argmax under teacher forcing."""
    from guard_reward.tiny.training import batch_tensors

    exact = 0
    for example in pool:
        ids, mask, labels = batch_tensors([example], pad_id)
        logits, targets = _verdict_logits(model, ids, mask, labels)
        exact += bool((logits.argmax(-1) == targets).all())
    return exact / len(pool)


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


def build_trained_tiny_gen(
    path: str | os.PathLike, *, steps: int = 300, seed: int = 0, progress: bool = False, **config_kw: object
) -> Path:
    """A tiny Gen stand-in that has learned the bundled examples' verdicts (for demos and decode tests).
    ``config_kw`` overrides sizes as in :func:`~guard_reward.tiny.gen.build_tiny_gen` (e.g. ``head_dim=32``,
    the smallest head size vLLM's CPU attention takes)."""
    from guard_reward.tiny.gen import build_tiny_gen

    build_tiny_gen(path, seed=seed, **config_kw)
    return train_tiny_gen(path, bundled_examples(), steps=steps, seed=seed, progress=progress)
