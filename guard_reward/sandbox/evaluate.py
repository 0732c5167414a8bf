"""Evaluation of a sandbox policy by the ground-truth rule, on held-out prompts, without disturbing training.

Each evaluation samples ``samples_per_prompt`` answers to every held-out prompt with the training sampler's
settings (temperature 1, no top-k/top-p) from a fixed seed, inside ``torch.random.fork_rng``: two evaluations of
the same weights see the same random numbers, and the training run's own random stream is exactly where it
was, so evaluating more or less often does not change what the policy learns. Answers are judged by
:func:`guard_reward.sandbox.rules.judge`, never by a guard.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from guard_reward.sandbox.rules import Judgement, judge

logger = logging.getLogger(__name__)

#: The columns of :meth:`EvalResult.row`, in report order.
EVAL_COLUMNS = (
    "step",
    "unsafe_rate",
    "unsafe_rate_harmful",
    "unsafe_rate_benign",
    "controversial_rate",
    "refusal_rate_benign",
    "refusal_rate_harmful",
    "fluent_rate",
    "mean_words",
    "helpfulness",
    "helpfulness_benign",
)


@dataclass(frozen=True)
class EvalSample:
    """One evaluated answer."""

    prompt: str
    harmful: bool
    response: str
    judgement: Judgement

    @cached_property  # read by every row of every curve CSV rewrite: scored once
    def helpfulness(self) -> float:
        """The sandbox's helpfulness score of the answer (a reward model's view, not the ground truth)."""
        from guard_reward.sandbox.helpfulness import helpfulness

        return helpfulness(self.prompt, self.response)


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


@dataclass(frozen=True)
class EvalResult:
    """Ground-truth rates of one evaluation (rates in [0, 1]; NaN when a prompt type is absent)."""

    step: int
    samples: tuple[EvalSample, ...] = field(repr=False)

    def _of(self, harmful: bool | None) -> list[EvalSample]:
        return [s for s in self.samples if harmful is None or s.harmful == harmful]

    @property
    def unsafe_rate(self) -> float:
        return _rate([s.judgement.unsafe for s in self.samples])

    @property
    def unsafe_rate_harmful(self) -> float:
        return _rate([s.judgement.unsafe for s in self._of(True)])

    @property
    def unsafe_rate_benign(self) -> float:
        return _rate([s.judgement.unsafe for s in self._of(False)])

    @property
    def controversial_rate(self) -> float:
        return _rate([s.judgement.controversial for s in self.samples])

    @property
    def refusal_rate_benign(self) -> float:
        return _rate([s.judgement.refusal for s in self._of(False)])

    @property
    def refusal_rate_harmful(self) -> float:
        return _rate([s.judgement.refusal for s in self._of(True)])

    @property
    def fluent_rate(self) -> float:
        return _rate([s.judgement.fluent for s in self.samples])

    @property
    def mean_words(self) -> float:
        n = [s.judgement.n_words for s in self.samples]
        return sum(n) / len(n) if n else float("nan")

    @property
    def helpfulness(self) -> float:
        """Mean helpfulness score (:mod:`guard_reward.sandbox.helpfulness`) over all answers."""
        h = [s.helpfulness for s in self.samples]
        return sum(h) / len(h) if h else float("nan")

    @property
    def helpfulness_benign(self) -> float:
        """Mean helpfulness score on benign requests (where being helpful is safe)."""
        h = [s.helpfulness for s in self._of(False)]
        return sum(h) / len(h) if h else float("nan")

    def row(self) -> dict[str, float]:
        """The rates as one CSV row (:data:`EVAL_COLUMNS`)."""
        return dict(self._row)

    @cached_property  # the history CSV is rewritten after every evaluation, with every earlier row
    def _row(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in EVAL_COLUMNS}


class Evaluator:
    """Samples and judges a policy's answers to a fixed set of held-out prompts.

    Args:
        tokenizer: the policy's tokenizer (left padding, chat template).
        prompts: ``(prompt, harmful)`` pairs.
        samples_per_prompt: answers sampled per prompt.
        curve_samples_per_prompt: answers per prompt of the evaluations called with ``curve=True`` (those
            between the first and the last of a run, which only draw its curves; ``None`` = as many).
        seed: the sampling seed, the same at every evaluation.
        max_new_tokens: generation budget (the training one, so truncation counts the same).
        batch_size: prompts-times-samples per ``generate`` call.
    """

    def __init__(
        self,
        tokenizer,
        prompts: Sequence[tuple[str, bool]],
        *,
        samples_per_prompt: int = 4,
        curve_samples_per_prompt: int | None = None,
        seed: int = 1234,
        max_new_tokens: int = 40,
        batch_size: int = 512,
    ) -> None:
        if not prompts:
            raise ValueError("Evaluator needs at least one held-out prompt")
        if curve_samples_per_prompt is None:
            curve_samples_per_prompt = samples_per_prompt
        if min(samples_per_prompt, curve_samples_per_prompt, max_new_tokens, batch_size) < 1:
            raise ValueError(
                "samples_per_prompt, curve_samples_per_prompt, max_new_tokens and batch_size must be >= 1, got "
                f"{samples_per_prompt}, {curve_samples_per_prompt}, {max_new_tokens}, {batch_size}"
            )
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.samples_per_prompt = samples_per_prompt
        self.curve_samples_per_prompt = curve_samples_per_prompt
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._ids = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)[
                "input_ids"
            ]
            for p, _ in self.prompts
        ]

    def generate(self, model: torch.nn.Module, samples_per_prompt: int | None = None) -> list[str]:
        """The answers (decoded without special tokens), in prompt order, ``samples_per_prompt`` each (default:
        the evaluator's)."""
        ids = [i for i in self._ids for _ in range(samples_per_prompt or self.samples_per_prompt)]
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        device = next(model.parameters()).device
        texts: list[str] = []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(self.seed)
                for start in range(0, len(ids), self.batch_size):
                    chunk = ids[start : start + self.batch_size]
                    width = max(len(i) for i in chunk)
                    x = torch.full((len(chunk), width), pad, dtype=torch.long)
                    mask = torch.zeros_like(x)
                    for k, row in enumerate(chunk):  # left padding: every answer starts at column `width`
                        x[k, width - len(row) :] = torch.tensor(row)
                        mask[k, width - len(row) :] = 1
                    out = model.generate(
                        input_ids=x.to(device),
                        attention_mask=mask.to(device),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        pad_token_id=pad,
                        eos_token_id=eos,
                        use_cache=True,
                    )
                    texts += self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        finally:
            model.train(was_training)
        return texts

    def __call__(self, model: torch.nn.Module, step: int = 0, curve: bool = False) -> EvalResult:
        """Sample and judge the answers; ``curve=True`` samples ``curve_samples_per_prompt`` per prompt."""
        n = self.curve_samples_per_prompt if curve else self.samples_per_prompt
        texts = self.generate(model, n)
        rows = [(p, h) for p, h in self.prompts for _ in range(n)]
        samples = tuple(EvalSample(p, h, t, judge(t)) for (p, h), t in zip(rows, texts, strict=True))
        result = EvalResult(step, samples)
        logger.info(
            "eval step %d: unsafe %.1f%% (harmful %.1f%%, benign %.1f%%), benign refusal %.1f%%, fluent %.1f%%",
            step,
            100 * result.unsafe_rate,
            100 * result.unsafe_rate_harmful,
            100 * result.unsafe_rate_benign,
            100 * result.refusal_rate_benign,
            100 * result.fluent_rate,
        )
        return result


def steps_to_reach(
    history: Sequence[EvalResult], threshold: float, metric: str = "unsafe_rate"
) -> int | None:
    """The first evaluated step at which ``metric`` is at or below ``threshold`` and stays there for the rest of
    the run (``None`` if it never settles there): a single lucky evaluation does not count."""
    values = [(r.step, getattr(r, metric)) for r in history]
    for i, (step, _) in enumerate(values):
        if all(v <= threshold for _, v in values[i:]):
            return step
    return None
