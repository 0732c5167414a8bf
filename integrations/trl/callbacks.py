"""``SafetyCurvesCallback``: the safety metrics of every logging step in a CSV, and ``safety_curves.png``;
``AsyncGRPOMetrics``: the rewards' ``guard/…`` metrics under TRL's ``AsyncGRPOTrainer``.

It only reads what the trainer logs (the ``guard/…`` metrics the rewards send through TRL's
``log_metric``, plus ``reward``, ``rewards/<name>/mean``, ``kl``, the completion length, the constrained
trainers' ``constraint/…`` and ``SafetyEvalCallback``'s held-out ``eval_safety/…`` rows); it touches no
trainer internals and works with any ``transformers.Trainer`` subclass. ``on_log`` callbacks run after the
trainer has stored the entry in ``log_history`` and after the reporting integrations, so this is a side sink:
it never changes what wandb, trackio or ``trainer_state.json`` receive.

TRL's ``AsyncGRPOTrainer`` (``trl.experimental.async_grpo``) scores rollouts in a spawned, CUDA-free child process
and calls the reward functions there with neither ``log_metric`` nor ``log_extra`` nor ``trainer_state``, so
every metric a reward logs is lost. The child does have one channel to the trainer: the worker's
``metrics_queue``, which the trainer drains into its logs at every logging step (rates as ``(numerator,
denominator)`` pairs). ``AsyncGRPOMetrics`` wraps a reward and hands it a ``log_metric`` that sends through that
queue, summed per call into pairs, so a metric is (sum of its values) / (number of values) over the logging
window, as GRPOTrainer's flush gives it.
"""

from __future__ import annotations

import csv
import logging
import os
import queue
from collections.abc import Callable, Sequence
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from guard_reward.evaluation.plots import CURVES_CSV, CURVES_PNG, EVAL_SAFETY, plot_safety_curves
from guard_reward.rewards import metrics

logger = logging.getLogger(__name__)

#: Logged by other parts of the library and drawn by ``plot_safety_curves``: the constraint and the held-out
#: evaluation.
EXTRA_PREFIXES = ("constraint/", EVAL_SAFETY)


class SafetyCurvesCallback(TrainerCallback):
    """Append the safety metrics to ``<output_dir>/safety_curves.csv`` per logging step and draw the curves.

    Args:
        output_dir: where the CSV and PNG go; ``None`` uses the trainer's ``args.output_dir``.
        plot_every: also redraw the PNG every this many logging steps (``None``: only at the end of training).
        prefix: the metric prefix the guard rewards log under (``"guard"``).
        csv_name, png_name: file names.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        *,
        plot_every: int | None = None,
        prefix: str = metrics.DEFAULT_PREFIX,
        csv_name: str = CURVES_CSV,
        png_name: str = CURVES_PNG,
    ) -> None:
        if plot_every is not None and plot_every < 1:
            raise ValueError(f"plot_every must be >= 1 or None, got {plot_every}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.plot_every = plot_every
        self.prefix = prefix
        self.csv_name = csv_name
        self.png_name = png_name
        self.rows: list[dict[str, float]] = []
        self._columns: list[str] = []

    def _dir(self, args: Any) -> Path:
        out = self.output_dir if self.output_dir is not None else Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out

    @property
    def csv_path(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / self.csv_name

    def on_train_begin(self, args, state, control, **kwargs):
        self.rows = []
        self._columns = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        keys = metrics.curve_keys(logs, self.prefix)
        keys += [k for k in logs if k.startswith(EXTRA_PREFIXES) and k not in keys]
        if not keys:  # e.g. the final train_runtime summary
            return
        row = {"step": float(state.global_step), **{k: logs[k] for k in keys}}
        self.rows.append(row)
        self._write_csv(self._dir(args))
        if self.plot_every is not None and len(self.rows) % self.plot_every == 0:
            self._plot(args)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.rows:
            self._plot(args)

    def _write_csv(self, out: Path) -> None:
        new = [k for k in self.rows[-1] if k not in self._columns]
        path = out / self.csv_name
        if new or not path.exists():
            # a metric appeared for the first time (e.g. a refusal rate once a benign prompt shows up):
            # rewrite the file with the wider header rather than append misaligned columns
            self._columns.extend(new)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(self.rows[-1])

    def _plot(self, args: Any) -> None:
        try:
            plot_safety_curves(self.rows, self._dir(args) / self.png_name, prefix=self.prefix)
        except ValueError as exc:  # nothing plottable yet; training must not stop for a figure
            logger.warning("safety curves not drawn: %s", exc)


class AsyncGRPOMetrics:
    """A reward for TRL's ``AsyncGRPOTrainer`` whose ``log_metric`` calls reach the trainer's logs.

    Wrap the reward, build the trainer with the wrapper, then :meth:`connect` it before ``train()``::

        safety = AsyncGRPOMetrics(SafetyReward(RemoteGenGuard("http://guard:8000")))
        trainer = AsyncGRPOTrainer(model, reward_funcs=[safety, ...], args=AsyncGRPOConfig(...), ...)
        safety.connect(trainer)
        trainer.train()

    In the worker's child process each call runs the reward with a ``log_metric`` that adds up every metric's
    values and counts, then puts ``{name: (sum, count)}`` on the worker's ``metrics_queue`` (never blocking: a
    full queue drops the batch's metrics, counted in :attr:`dropped` and logged once). What stays lost:
    ``log_extra`` columns (the async trainer has no completions table) and ``trainer_state``. Failure totals
    (``guard/failures/…``) come out per reward call, i.e. per scored group, not per step. Called with a
    ``log_metric`` (e.g. by ``GRPOTrainer``), or before :meth:`connect`, the wrapper just calls the reward.

    Args:
        reward: any reward callable (``SafetyReward``, ``HybridSafetyReward``, ``SafetyCost``, ...); it keeps its
            ``__name__``, so TRL's ``rewards/<name>`` keys do not change.
    """

    def __init__(self, reward: Callable[..., Sequence[float | None]]) -> None:
        if not callable(reward):
            raise TypeError(f"reward must be callable, got {type(reward).__name__}")
        self.reward = reward
        self.__name__ = str(getattr(reward, "__name__", type(reward).__name__))
        self._queue: Any = None
        self.dropped = 0

    def connect(self, trainer: Any) -> None:
        """Send the metrics to ``trainer``'s rollout worker (an ``AsyncGRPOTrainer``; call before ``train()``,
        which spawns the child). Only the main process has a worker; elsewhere this does nothing."""
        worker = getattr(trainer, "rollout_worker", None)
        if worker is None:
            if getattr(getattr(trainer, "accelerator", None), "is_main_process", True):
                raise ValueError(
                    f"{type(trainer).__name__} has no rollout_worker: AsyncGRPOMetrics is for TRL's "
                    "AsyncGRPOTrainer; other trainers pass log_metric to the rewards themselves"
                )
            return
        self._queue = worker.metrics_queue

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # A multiprocessing queue pickles only into a process being spawned; TRL also pickles the rewards once
        # beforehand to check them, and that copy needs no queue.
        if get_spawning_popen() is None:
            state["_queue"] = None
        return state

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Any:
        if self._queue is None or kwargs.get("log_metric") is not None:
            return self.reward(prompts=prompts, completions=completions, **kwargs)
        sums: dict[str, list[float]] = {}

        def log_metric(name: str, value: float) -> None:
            pair = sums.setdefault(name, [0.0, 0.0])
            pair[0] += float(value)
            pair[1] += 1.0

        kwargs["log_metric"] = log_metric
        values = self.reward(prompts=prompts, completions=completions, **kwargs)
        if sums:
            try:
                self._queue.put_nowait({name: (s, n) for name, (s, n) in sums.items()})
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "%s: the trainer's metrics queue is full; this batch's metrics are dropped (counted)",
                        self.__name__,
                    )
        return values
