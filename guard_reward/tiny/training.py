"""A small supervised training loop for tiny models: the sandbox's policy and guards, the trained tiny Gen.

Plain PyTorch loops rather than ``transformers.Trainer``: the sandbox models have a few hundred thousand
parameters and train in seconds, where the Trainer's set-up would cost as much as the training. Examples are
tokenized once and right-padded per batch; the loss is masked to the target positions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training sequence.

    Attributes:
        ids: ``(L,)`` token ids.
        labels: one or more ``(L,)`` label sequences (the next token for a language model; risk level,
            category, ... for the Stream heads); ``-100`` where no loss is taken.
    """

    ids: list[int]
    labels: tuple[list[int], ...]


def lm_example(prompt_ids: Sequence[int], target_ids: Sequence[int]) -> Example:
    """A causal-LM example that learns ``target_ids`` after ``prompt_ids`` (loss on the targets only).

    Labels are shifted here (``targets[t]`` is the token that follows position ``t``), so the loop compares
    position-wise logits with targets without shifting.
    """
    ids = [*prompt_ids, *target_ids]
    targets = [-100] * (len(prompt_ids) - 1) + list(target_ids) + [-100]
    return Example(ids, (targets,))


def batch_tensors(
    examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Right-pad a batch: ``ids (B, L)``, ``attention_mask (B, L)`` and each label sequence ``(B, L)``."""
    width = max(len(e.ids) for e in examples)
    n_labels = len(examples[0].labels)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = [torch.full((len(examples), width), -100, dtype=torch.long) for _ in range(n_labels)]
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        for k in range(n_labels):
            labels[k][i, :n] = torch.tensor(e.labels[k])
    return ids, mask, labels


def train_loop(
    model: torch.nn.Module,
    examples: Sequence[Example] | Callable[[random.Random, int], list[Example]],
    *,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int = 0,
    warmup: float = 0.05,
    weight_decay: float = 0.01,
    desc: str = "train",
    progress: bool = True,
    validate: Callable[[torch.nn.Module], float] | None = None,
    target: float = 1.0,
    check_every: int = 50,
    min_steps: int = 0,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay over ``steps``; returns the loss of every step taken.

    ``examples`` is either a fixed pool (batches are drawn from it at random) or a function ``(rng, n)``
    producing ``n`` fresh examples (an endless stream of synthetic data). ``loss_fn(model, ids, mask, labels)``
    returns the mean loss over the labelled positions. With ``validate`` (model -> accuracy on held-out data),
    training stops early once it reaches ``target`` (checked every ``check_every`` steps from ``min_steps`` on): small models learn
    these tasks in sudden jumps whose timing varies from seed to seed, so a fixed budget is either wasteful or
    sometimes too short.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    n_warm = max(1, int(warmup * steps))

    def schedule(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    score, scored_at = None, -1
    for step in bar:
        if callable(examples):
            batch = examples(rng, batch_size)
        else:
            batch = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        ids, mask, labels = batch_tensors(batch, pad_id)
        loss = loss_fn(model, ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        done = step + 1
        if validate is not None and done >= min_steps and done % check_every == 0 and done < steps:
            model.eval()
            with torch.no_grad():
                score, scored_at = validate(model), done
            model.train()
            if score >= target:
                break
    model.eval()
    if validate is not None and scored_at != len(losses):  # not validated since the last step
        with torch.no_grad():
            score = validate(model)
    tail = losses[-max(1, len(losses) // 10) :]
    logger.info(
        "%s: %d steps, final loss %.4f%s",
        desc,
        len(losses),
        sum(tail) / len(tail),
        "" if score is None else f", held-out accuracy {100 * score:.1f}%",
    )
    return losses


def causal_lm_loss(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: list[torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy of the next-token logits against the pre-shifted targets ``labels[0]`` ``(B, L)``; the LM
    head runs on the labelled positions only."""
    targets = labels[0]
    keep = targets != -100
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]  # (N, H)
    return torch.nn.functional.cross_entropy(model.lm_head(hidden).float(), targets[keep])
