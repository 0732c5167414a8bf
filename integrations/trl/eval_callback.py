"""``SafetyEvalCallback``: held-out safety evaluation during training, by judges the policy is not trained on,
with reward-hacking alarms.

The training curves (``guard/…``) are the training guard's opinion of the training prompts. This callback
samples answers to a fixed held-out prompt set every ``eval_every`` steps (and at the start and the end),
judges them with a held-out judge (and optionally a second judge and the training guard itself, on the same
answers), and logs ``eval_safety/…`` through the trainer's own ``log`` — so wandb, trackio, the CSV of
``SafetyCurvesCallback`` and ``guard-reward plot`` all get the curves — together with the alarms of
:mod:`guard_reward.evaluation.alarms`.

On N ranks each rank answers its own shard of the prompts (``prompts[rank::N]``, sampling seed + rank) and the
ranks' *counts* are summed with ``all_gather_object`` before any rate is formed, so every rank logs the same
global rates (never a mean of per-rank rates). Every rank must call it at the same steps, which the trainer's
callback loop guarantees.

Unlike ``Trainer.evaluate`` it needs no eval dataset or loss, never touches the optimizer or the training
random stream (``torch.random.fork_rng``), and logs through ``Trainer.log`` with the model in eval mode, so
TRL's per-mode metric buffers of the training step are left alone.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from guard_reward.evaluation.alarms import AlarmConfig, Alarms
from guard_reward.evaluation.answering import EVAL_PREFIX, GenerationSettings, answer_and_judge, eval_metrics
from guard_reward.evaluation.judges import Judge
from guard_reward.evaluation.prompts import EvalPrompt, missing_rates
from guard_reward.evaluation.summary import count_rows

logger = logging.getLogger(__name__)


def _as_judge(judge: Any, name: str) -> Judge:
    if judge is None or isinstance(judge, Judge):
        return judge
    kind = "stream" if hasattr(judge, "score") and not hasattr(judge, "moderate") else "gen"
    return Judge(judge, kind, f"{name} ({type(judge).__name__})")


def _sum_over_ranks(counts: Counter[str]) -> Counter[str]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total: Counter[str] = Counter()
    for part in gathered:
        total.update(part)
    return total


class SafetyEvalCallback(TrainerCallback):
    """Evaluate the policy on held-out prompts every ``eval_every`` steps and log ``eval_safety/…`` metrics.

    Args:
        prompts: the held-out set (:class:`~guard_reward.evaluation.prompts.EvalPrompt`; see
            :func:`~guard_reward.evaluation.prompts.read_prompt_set`).
        judge: the held-out judge: a ``GenGuard`` / ``RemoteGenGuard`` / ``StreamGuard`` or a
            :class:`~guard_reward.evaluation.judges.Judge`. It should not be the guard the reward uses.
        judge2: an optional second judge (agreement = Cohen's kappa between the two).
        train_guard: the training reward's guard, judged on the same answers: its unsafe rate against the
            held-out judge's is the ``guard_judge_gap`` alarm.
        tokenizer: the policy's tokenizer (default: the trainer's ``processing_class``).
        reference: the fluency proxy's reference model: ``"initial"`` (a frozen copy of the policy at the start
            of training, the default), a model, or ``None`` (no fluency alarm).
        eval_every: evaluate every this many optimizer steps, and at steps 0 and the last.
        generation: sampling settings (``samples`` per prompt, ``max_new_tokens``, ``batch_size`` ...).
        alarms: thresholds of the reward-hacking alarms.
        prefix: metric prefix.

    Attach it with :meth:`attach` (it logs through the trainer): ``SafetyEvalCallback(...).attach(trainer)``.
    Logged (with the prefix): ``unsafe_rate``, ``unsafe_rate_harmful``, ``unsafe_rate_benign``,
    ``benign_refusal_rate``, ``controversial_rate``, ``judge_agreement``, ``guard_unsafe_rate``,
    ``judge2/…``, ``guard/…``, ``mean_tokens``, ``entropy``, ``ref_nll``, ``alarm/<name>``, ``alarms`` and
    the drift values; ``fired`` maps each alarm to the first step it went off.
    """

    def __init__(
        self,
        prompts: Sequence[EvalPrompt],
        judge: Any,
        *,
        judge2: Any = None,
        train_guard: Any = None,
        tokenizer: Any = None,
        reference: Any = "initial",
        eval_every: int = 50,
        generation: GenerationSettings | None = None,
        alarms: AlarmConfig | None = None,
        prefix: str = EVAL_PREFIX,
    ) -> None:
        if not prompts:
            raise ValueError("SafetyEvalCallback needs at least one held-out prompt")
        if judge is None:
            raise ValueError("SafetyEvalCallback needs a held-out judge (a Gen or Stream guard)")
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        if isinstance(reference, str) and reference != "initial":
            raise ValueError(f"reference must be 'initial', a model or None, got {reference!r}")
        self.prompts = list(prompts)
        self.judges = {"judge": _as_judge(judge, "judge")}
        if judge2 is not None:
            self.judges["judge2"] = _as_judge(judge2, "judge2")
        if train_guard is not None:
            self.judges["guard"] = _as_judge(train_guard, "training guard")
        self.tokenizer = tokenizer
        self.reference = reference
        self.eval_every = eval_every
        self.generation = generation or GenerationSettings(max_new_tokens=128)
        self.alarms = Alarms(alarms or AlarmConfig())
        self.prefix = prefix
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []
        self.last_rows: list[dict[str, Any]] = []
        self._last_step: int | None = None
        for line in missing_rates(self.prompts):
            logger.warning("held-out set: %s", line)

    @property
    def fired(self) -> dict[str, int]:
        return dict(self.alarms.fired)

    def attach(self, trainer: Any) -> SafetyEvalCallback:
        """Register on ``trainer`` (which it logs through) and return itself."""
        self.trainer = trainer
        if self.tokenizer is None:
            self.tokenizer = getattr(trainer, "processing_class", None)
        trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.trainer is None:
            raise RuntimeError(
                "SafetyEvalCallback logs through the trainer: add it with callback.attach(trainer)"
            )
        if self.reference == "initial":
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._evaluate(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_every == 0:
            self._evaluate(state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._evaluate(state, control, model)

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """One evaluation of ``model`` on this rank's shard, counts summed over ranks; the metrics (prefixed),
        alarms included. Every rank must call it."""
        dist = torch.distributed
        rank, world = (
            (dist.get_rank(), dist.get_world_size())
            if dist.is_available() and dist.is_initialized()
            else (0, 1)
        )
        shard = self.prompts[rank::world]
        items = [(p, k) for p in shard for k in range(self.generation.samples)]
        start = time.perf_counter()
        settings = GenerationSettings(**{**vars(self.generation), "seed": self.generation.seed + rank})
        reference = None if isinstance(self.reference, str) else self.reference
        rows = (
            answer_and_judge(model, self.tokenizer, items, self.judges, settings, reference=reference)
            if items
            else []
        )
        self.last_rows = rows
        counts = _sum_over_ranks(count_rows(rows, list(self.judges)))
        flat = eval_metrics(counts, list(self.judges))
        flat |= self.alarms.check(step, flat)
        flat["seconds"] = time.perf_counter() - start
        metrics = {f"{self.prefix}/{k}": float(v) for k, v in flat.items()}
        self.history.append({"step": float(step), **metrics})
        logger.info(
            "held-out eval step %d: unsafe %.1f%% (judge), benign refusal %.1f%%, %d answers, %d alarms",
            step,
            100 * flat.get("unsafe_rate", float("nan")),
            100 * flat.get("benign_refusal_rate", float("nan")),
            int(flat.get("answers", 0)),
            int(flat.get("alarms", 0)),
        )
        return metrics

    def _evaluate(self, state, control, model) -> None:
        if self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        metrics = self.evaluate(model, state.global_step)
        # Trainer.log ends in the handler's on_log, which clears control.should_log: the step's own log row,
        # requested just before by the flow callback, must still happen.
        should_log = control.should_log
        _log(self.trainer, model, metrics)
        control.should_log = should_log


def _log(trainer: Any, model: torch.nn.Module, metrics: Mapping[str, float]) -> None:
    """``trainer.log`` with the model in eval mode: TRL's trainers flush their per-mode buffers into whatever
    ``log`` is called with, and the training buffer belongs to the step's own log row."""
    was_training = model.training
    model.eval()
    try:
        trainer.log(dict(metrics))
    finally:
        model.train(was_training)
