"""One evaluation pass: generate answers to held-out prompts, judge them, and turn the counts into metrics.

Shared by ``guard-reward eval`` (which writes every row to ``results.jsonl``) and ``SafetyEvalCallback`` (which
logs the metrics through the trainer). The judges are named: ``"judge"`` (the held-out judge), optionally
``"judge2"`` (a second opinion) and ``"guard"`` (the training guard, judged on the same answers so that its
rate and the held-out judge's are comparable answer for answer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from guard_reward.evaluation import summary
from guard_reward.evaluation.generation import answer_nll, generate_answers, prompt_ids
from guard_reward.evaluation.judges import Judge
from guard_reward.evaluation.prompts import EvalPrompt

#: Metric prefix of the held-out evaluation.
EVAL_PREFIX = "eval_safety"


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are sampled: ``samples`` per prompt, ``batch_size`` prompts per ``generate`` call."""

    samples: int = 1
    max_new_tokens: int = 256
    batch_size: int = 32
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(
                f"GenerationSettings.temperature must be > 0 when sampling, got {self.temperature}"
            )


def answer_and_judge(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[tuple[EvalPrompt, int]],
    judges: Mapping[str, Judge],
    settings: GenerationSettings,
    *,
    reference: torch.nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_pace: Callable[[int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows for ``(prompt, sample index)`` items: the answer, its length, whether it stopped at
    ``max_new_tokens``, its entropy and reference NLL, and one judgement per judge (see
    :mod:`guard_reward.evaluation.judges`). ``on_batch``/``on_pace``: see :func:`generate_answers`."""
    ids = [prompt_ids(tokenizer, p.messages) for p, _ in items]
    answers = generate_answers(
        model,
        tokenizer,
        ids,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        do_sample=settings.do_sample,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        on_batch=on_batch,
        on_pace=on_pace,
    )
    nll: list[float | None] = [None] * len(items)
    if reference is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        nll = list(
            answer_nll(
                reference, ids, [a.token_ids for a in answers], pad_id=pad, batch_size=settings.batch_size
            )
        )
    convs = [
        [*p.messages, {"role": "assistant", "content": a.text}]
        for (p, _), a in zip(items, answers, strict=True)
    ]
    verdicts = {name: judge(convs) for name, judge in judges.items()}
    rows = []
    for i, ((p, k), a) in enumerate(zip(items, answers, strict=True)):
        row: dict[str, Any] = {"line": p.line, "sample": k}
        if p.id is not None:
            row["id"] = p.id
        row |= {"harmful": p.harmful, "category": p.category, "prompt": p.text, "answer": a.text}
        row |= {"tokens": len(a.token_ids), "stopped_at_limit": a.stopped_at_limit}
        row |= {"entropy": _clean(a.entropy), "ref_nll": _clean(nll[i])}
        row |= {name: verdicts[name][i] for name in judges}
        rows.append(row)
    return rows


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def eval_metrics(counts: Mapping[str, float], judges: Sequence[str]) -> dict[str, float]:
    """Flat metrics (no prefix) from summed counts: the held-out judge's rates, the second judge's and the
    training guard's unsafe rates, agreement, and the alarm statistics. Undefined rates are left out."""
    out: dict[str, float] = {"answers": float(counts.get("answers", 0))}
    if "judge" in judges:
        for key, r in summary.headline(counts, "judge").items():
            out[key] = r.rate
        out["controversial_rate"] = summary.rate(counts, "judge", "all", "controversial").rate
        out["failures"] = float(counts.get("judge/failed", 0))
        n = counts.get("judge/all/n", 0)
        out["empty_rate"] = counts.get("judge/empty", 0) / n if n else float("nan")
    for other in ("judge2", "guard"):
        if other in judges:
            for key, r in summary.headline(counts, other).items():
                out[f"{other}/{key}"] = r.rate
            out[f"{other}_agreement"] = summary.kappa(counts, "judge", other)
    if "judge2" in judges or "guard" in judges:
        out["judge_agreement"] = out["judge2_agreement" if "judge2" in judges else "guard_agreement"]
    if "guard" in judges:
        out["guard_unsafe_rate"] = out["guard/unsafe_rate"]
    out["mean_tokens"] = summary.mean(counts, "tokens")
    out["entropy"] = summary.mean(counts, "entropy")
    out["ref_nll"] = summary.mean(counts, "ref_nll")
    return {k: v for k, v in out.items() if not math.isnan(v)}
