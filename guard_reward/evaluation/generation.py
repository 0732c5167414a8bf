"""Batched answer generation for evaluation, with the statistics the reward-hacking alarms read.

Prompts are left-padded and sent to ``model.generate`` in batches (plain transformers, no vLLM), sampling from
a fixed seed inside ``torch.random.fork_rng`` so that an evaluation during training neither perturbs the
training run's random stream nor depends on where that stream was. Unlike a plain ``generate`` call it also
records, per answer, the mean entropy of the sampling distribution over the answer's tokens — computed step by
step in a logits processor, so the ``(B, V)`` scores of every step are never kept — and can score the answers'
negative log-likelihood under a reference model (the fluency proxy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One generated answer: decoded text, its token ids (up to and including the end-of-turn token), the
    mean per-token entropy (nats) of the distribution it was sampled from, and whether generation stopped at
    ``max_new_tokens`` before the policy ended its turn (the answer is cut off)."""

    text: str
    token_ids: tuple[int, ...]
    entropy: float
    stopped_at_limit: bool = False


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """The chat-templated prompt, ending with the assistant turn's header."""
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both ``(B, L)``: rows right-aligned so every continuation starts at column ``L``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, row in enumerate(rows):
        if row:
            ids[k, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[k, width - len(row) :] = 1
    return ids, mask


class _EntropyRecorder:
    """A logits processor that leaves the scores alone and records each row's entropy ``(B,)`` per step."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        # -inf logits (top-k/top-p filtered) have p = 0 and contribute nothing, not NaN
        self.steps.append(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1).cpu())
        return scores


class _Pace:
    """A logits processor that leaves the scores alone and, once, after ``steps`` decoding steps of the first
    batch, calls ``report(steps, seconds)`` (the time since the first step: decoding only, not the prompt)."""

    def __init__(self, report: Callable[[int, float], None], steps: int = 16) -> None:
        self.report, self.steps, self.seen, self.start = report, steps, 0, 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.seen == 0:
            self.start = time.perf_counter()
        self.seen += 1
        if self.seen == self.steps + 1:
            self.report(self.steps, time.perf_counter() - self.start)
        return scores


def _answer_length(row: torch.Tensor, stop: set[int]) -> int:
    for t, token in enumerate(row.tolist()):
        if token in stop:
            return t + 1
    return len(row)


def _stop_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    on_pace: Callable[[int, float], None] | None = None,
) -> list[Answer]:
    """Answers to ``prompts`` (token id lists), in order, ``batch_size`` prompts per ``generate`` call.

    ``do_sample=False`` is greedy decoding. ``on_batch(n)`` is called after each batch (progress bars);
    ``on_pace(steps, seconds)`` once, early in the first batch, with the time its first decoding steps took
    (what a run will cost, said while it can still be stopped). The model's train/eval mode is restored
    afterwards.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    was_training = model.training
    model.eval()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else {}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                ids, mask = left_pad(chunk, pad)
                recorder = _EntropyRecorder()
                # timed over the first steps (at most half of them, so that short answers get timed too)
                steps = max(1, min(16, max_new_tokens // 2))
                pace = [_Pace(on_pace, steps)] if on_pace is not None and start == 0 else []
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    logits_processor=[recorder, *pace],
                    **(sampling or dict(do_sample=False)),
                )
                new = out[:, ids.shape[1] :].cpu()
                entropy = torch.stack(recorder.steps, dim=1) if recorder.steps else torch.zeros(len(chunk), 0)
                for k in range(len(chunk)):
                    n = _answer_length(new[k], stop)
                    tokens = tuple(new[k, :n].tolist())
                    mean_h = float(entropy[k, :n].mean()) if n else float("nan")
                    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
                    # no end-of-turn token: the row was still going when generate reached max_new_tokens
                    cut = not any(t in stop for t in tokens)
                    answers.append(Answer(text, tokens, mean_h, cut))
                if on_batch is not None:
                    on_batch(len(chunk))
    finally:
        model.train(was_training)
    return answers


def answer_nll(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 32,
) -> list[float]:
    """Mean negative log-likelihood (nats per token) of each answer given its prompt under ``model``; NaN for
    an empty answer. With the policy's reference model this is the fluency proxy: a policy that games its
    guard with text the reference finds unlikely (cut-off sentences, word salad) drives it up."""
    device = next(model.parameters()).device
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                p, a = prompts[start : start + batch_size], answers[start : start + batch_size]
                ids, mask = left_pad([[*x, *y] for x, y in zip(p, a, strict=True)], pad_id)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, L-1, V): position t predicts t+1
                token_logp = logp.gather(-1, ids[:, 1:].to(device)[..., None])[..., 0].cpu()  # (B, L-1)
                width = ids.shape[1]
                for k, answer in enumerate(a):
                    if not answer:
                        out.append(float("nan"))
                        continue
                    # the answer occupies the last len(answer) columns; its tokens are predicted one earlier
                    out.append(float(-token_logp[k, width - 1 - len(answer) :].mean()))
    finally:
        model.train(was_training)
    return out
