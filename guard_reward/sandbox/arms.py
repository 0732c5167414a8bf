"""The GRPO arms of the sandbox demo: the same policy, seed and budget, trained with different guard rewards.

* ``scalar``: TRL's ``GRPOTrainer`` with :class:`~guard_reward.SafetyReward` (Qwen3Guard-Gen verdicts; refusing a
  benign request is worth less than answering it safely) and a KL term.
* ``dense``: :class:`~guard_reward.integrations.trl.grpo.DenseGRPOTrainer` with the same scalar reward plus
  :class:`~guard_reward.TokenSafetyPenalty` (Qwen3Guard-Stream's per-token risk, ``first_violation`` shaping: the
  penalty lands on the token where the answer became unsafe) and the same KL term.
* ``guard_only`` ("what can go wrong"): no KL term and the tech report's guard-only reward (1 if the guard says
  Safe, else 0), which a policy can satisfy without being useful.
* ``helpful``: the sandbox's helpfulness reward alone (:mod:`guard_reward.sandbox.helpfulness`, blind to
  safety) and the KL term: what an unconstrained helpfulness objective does to safety.
* ``lagrangian``: the same helpfulness reward under a safety constraint
  (:class:`~guard_reward.integrations.trl.constraint.ConstrainedGRPOTrainer`): cost = Gen's Unsafe verdict,
  ``E[cost] <= target``, λ adapted by safe-rlhf's rule.
* ``fixed_low`` / ``fixed_high``: the same with λ held fixed (``lambda_lr = 0``) too low and too high — what
  hand-tuning one number looks like (behind ``--fixed-lambda``).

Every arm is evaluated on held-out prompts by the ground-truth rule (:mod:`guard_reward.sandbox.evaluate`) every
``eval_every`` steps, and (given a held-out judge) by ``SafetyEvalCallback`` with its reward-hacking alarms
(:mod:`guard_reward.sandbox.heldout`); the guards' own view is logged by the rewards (``guard/...`` metrics) and
collected by :class:`~guard_reward.integrations.trl.SafetyCurvesCallback`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard_reward.sandbox.evaluate import EVAL_COLUMNS, EvalResult, Evaluator

logger = logging.getLogger(__name__)

ARMS = ("scalar", "dense", "guard_only", "helpful", "lagrangian", "fixed_low", "fixed_high")
#: Arms trained on the helpfulness reward (and, but for ``helpful``, the constraint).
HELPFULNESS_ARMS = ("helpful", "lagrangian", "fixed_low", "fixed_high")


@dataclass(frozen=True)
class ArmConfig:
    """One GRPO run.

    Args:
        name: ``"scalar"``, ``"dense"`` or ``"guard_only"``.
        steps: optimizer steps; prompts_per_step x num_generations completions per step.
        beta: KL coefficient (``guard_only`` forces 0).
        dense_coef: weight of the per-token term in the dense arm (advantage units).
        controversial_value: scalar reward of a Controversial answer.
        eval_every: evaluate by the ground truth every this many steps (and at the end).
        heldout_every: evaluate through ``SafetyEvalCallback`` (held-out judge, alarms) every this many steps
            (and at the start and the end): each such evaluation judges its answers with two Gen guards.
        target: the constraint arms' threshold on the guard's unsafe rate (the expected cost).
        lambda_init, lambda_lr, lambda_max, cost_window: the ``lagrangian`` arm's multiplier knobs.
        fixed_low_lambda, fixed_high_lambda: λ of the fixed-λ arms.
    """

    name: str
    steps: int = 24
    prompts_per_step: int = 6
    num_generations: int = 8
    lr: float = 6e-4
    beta: float = 0.2
    dense_coef: float = 2.0
    controversial_value: float = 0.5
    max_completion_length: int = 36
    eval_every: int = 4
    heldout_every: int = 8
    seed: int = 0
    target: float = 0.02
    lambda_init: float = 1.0
    lambda_lr: float = 1.0
    lambda_max: float = 5.0
    cost_window: int = 128
    fixed_low_lambda: float = 0.1
    fixed_high_lambda: float = 20.0

    def __post_init__(self) -> None:
        if self.name not in ARMS:
            raise ValueError(f"ArmConfig.name={self.name!r} is not accepted; use one of {', '.join(ARMS)}")
        counts = (self.steps, self.eval_every, self.heldout_every, self.prompts_per_step)
        if min(counts) < 1 or self.num_generations < 2:
            raise ValueError(
                "ArmConfig needs steps, eval_every, heldout_every and prompts_per_step >= 1 and num_generations "
                f">= 2, got {counts} and {self.num_generations}"
            )
        if self.name != "guard_only" and self.beta <= 0:
            raise ValueError(f"the {self.name!r} arm needs a KL coefficient beta > 0, got {self.beta}")


@dataclass
class ArmResult:
    """What one arm produced: its evaluation history (ground truth) and the trainer's log history."""

    config: ArmConfig
    history: list[EvalResult] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    output_dir: Path | None = None
    #: ``SafetyEvalCallback``'s evaluations (held-out judge, alarms, ground truth on its answers).
    safety_eval: list[dict[str, float]] = field(default_factory=list)
    #: The reward-hacking alarms that fired, with the first step each did.
    alarms: dict[str, int] = field(default_factory=dict)

    @property
    def final(self) -> EvalResult:
        return self.history[-1]


def _eval_callback(evaluator: Evaluator, every: int, result: ArmResult, csv_path: Path):
    from transformers import TrainerCallback

    class SandboxEvalCallback(TrainerCallback):
        """Evaluates the policy by the ground-truth rule every ``every`` steps and at the end of training."""

        def _evaluate(self, state, model) -> None:
            if result.history and result.history[-1].step == state.global_step:
                return
            curve = state.global_step < state.max_steps  # the last evaluation is the run's result: full size
            result.history.append(evaluator(model, step=state.global_step, curve=curve))
            _write_history(csv_path, result.history)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self._evaluate(state, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._evaluate(state, model)

    return SandboxEvalCallback()


def _progress_callback(config: ArmConfig):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ArmProgress(TrainerCallback):
        """One progress bar per arm, showing the reward and the guard's unsafe rate on the training batch."""

        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc=f"GRPO {config.name}", leave=False)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "reward" in logs:
                unsafe = logs.get("guard/unsafe_rate", float("nan"))
                self.bar.set_postfix(
                    reward=f"{logs['reward']:.2f}", guard_unsafe=f"{unsafe:.2f}", refresh=False
                )

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return ArmProgress()


def write_samples(path: Path, result: EvalResult) -> None:
    """One JSON line per evaluated answer, with the ground-truth judgement."""
    with open(path, "w") as f:
        for s in result.samples:
            j = s.judgement
            row = {"prompt": s.prompt, "harmful": s.harmful, "response": s.response, "level": j.level}
            row |= {"refusal": j.refusal, "fluent": j.fluent, "first_violation": j.first_violation}
            f.write(json.dumps(row) + "\n")


def _write_history(path: Path, history: Sequence[EvalResult]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(EVAL_COLUMNS))
        writer.writeheader()
        writer.writerows(r.row() for r in history)


def _constraint(config: ArmConfig, gen_guard: Any) -> Any:
    """The constraint of the ``lagrangian`` and fixed-λ arms: the guard's unsafe rate at most ``target``."""
    from guard_reward.rewards.cost import SafetyCost
    from guard_reward.shaping.constraint import Constraint, ConstraintConfig

    # The ground truth's unsafe rate counts Unsafe answers only, so Controversial costs nothing here.
    cost = SafetyCost(gen_guard, controversial="loose", name="guard_cost")
    if config.name == "lagrangian":
        knobs = dict(lambda_init=config.lambda_init, lambda_lr=config.lambda_lr, lambda_max=config.lambda_max)
    else:
        lam = config.fixed_low_lambda if config.name == "fixed_low" else config.fixed_high_lambda
        knobs = dict(lambda_init=lam, lambda_lr=0.0, lambda_max=None)
    return Constraint(cost, ConstraintConfig(config.target, cost_window=config.cost_window, **knobs))


#: What :func:`run_arm` imports (TRL, datasets, the plots' matplotlib): ~1.7 CPU s per arm process.
_ARM_MODULES = (
    "datasets",
    "matplotlib.backends.backend_agg",
    "matplotlib.figure",
    "trl.trainer.grpo_trainer",
    "guard_reward.integrations.trl.constraint",
    "guard_reward.integrations.trl.grpo",
)


def import_arm_modules() -> None:
    """Import what :func:`run_arm` needs, so that arm processes forked afterwards inherit the modules instead
    of each importing them again."""
    import importlib

    for name in _ARM_MODULES:
        importlib.import_module(name)


def run_arm(
    config: ArmConfig,
    policy_path: str | os.PathLike,
    tokenizer: Any,
    gen_guard: Any,
    stream_guard: Any,
    train_prompts: Sequence[tuple[str, bool]],
    evaluator: Evaluator,
    output_dir: str | os.PathLike,
    *,
    initial: EvalResult | None = None,
    progress: bool = True,
    device: str = "cpu",
    heldout_judge: Any = None,
    heldout_prompts: Sequence[Any] = (),
    heldout_samples: int = 2,
) -> ArmResult:
    """Train one arm from the pre-trained policy in ``policy_path`` and evaluate it along the way.

    ``initial`` is the evaluation of the starting policy (shared by all arms; computed here if not given);
    ``device`` ``"cpu"`` keeps TRL off any accelerator (the sandbox's models are faster on the CPU).
    ``heldout_judge`` (a Gen guard) adds ``SafetyEvalCallback`` on ``heldout_prompts`` (``heldout_samples``
    answers each), with the training guard judged beside it.
    Writes ``eval.csv`` (ground truth) and the ``SafetyCurvesCallback`` files into ``output_dir``.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from guard_reward.integrations.trl import SafetyCurvesCallback

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(policy_path, attn_implementation="eager", dtype="float32")
    result = ArmResult(config, output_dir=out)
    result.history.append(initial if initial is not None else evaluator(model, step=0))
    _write_history(out / "eval.csv", result.history)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "harmful": h} for p, h in train_prompts]
    )
    reward = _reward(config, gen_guard)
    args = _grpo_args(config, out, progress, device)
    callbacks = [
        SafetyCurvesCallback(out),
        _eval_callback(evaluator, config.eval_every, result, out / "eval.csv"),
    ]
    common = dict(model=model, reward_funcs=[reward], args=args, train_dataset=dataset)
    common |= dict(processing_class=tokenizer, callbacks=callbacks)
    trainer = _trainer(config, common, gen_guard, stream_guard, tokenizer)
    # The trainer's own progress bar prints every log dict; the sandbox shows one bar per arm with the guard's
    # unsafe rate instead, and one log line per evaluation.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_progress_callback(config))
    safety_eval = None
    if heldout_judge is not None:
        from guard_reward.sandbox.heldout import safety_eval_callback

        safety_eval = safety_eval_callback(
            heldout_prompts, heldout_judge, gen_guard, every=config.heldout_every, samples=heldout_samples,
            max_new_tokens=config.max_completion_length, seed=config.seed + 4321,
        ).attach(trainer)  # fmt: skip
    logger.info(
        "arm %s: %d GRPO steps x %d completions", config.name, config.steps, args.per_device_train_batch_size
    )
    start = time.perf_counter()
    trainer.train()
    result.seconds = time.perf_counter() - start
    result.log_history = list(trainer.state.log_history)
    if safety_eval is not None:
        result.safety_eval, result.alarms = safety_eval.history, safety_eval.fired
    write_samples(out / "samples.jsonl", result.final)
    return result


def _reward(config: ArmConfig, gen_guard: Any) -> Any:
    """The arm's scalar reward: the guard's verdict (``scalar``, ``dense``), the tech report's guard-only
    reward, or the sandbox's helpfulness (the helpfulness and constraint arms)."""
    from guard_reward.rewards import SafetyReward

    if config.name == "guard_only":
        # the tech report's guard-only reward: 1 if Safe (Controversial counts as unsafe), else 0
        return SafetyReward(gen_guard, refusal=False, safe_value=1.0, unsafe_value=0.0, name="guard_only")
    if config.name in HELPFULNESS_ARMS:
        from guard_reward.sandbox.helpfulness import HelpfulnessReward

        return HelpfulnessReward()
    return SafetyReward(
        gen_guard, controversial=config.controversial_value, benign_refusal_value=0.0, name="guard_safety"
    )


def _grpo_args(config: ArmConfig, out: Path, progress: bool, device: str) -> Any:
    """The arm's ``GRPOConfig``: constant learning rate, one log line per step, nothing saved, and no KL term
    in the guard-only arm."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out),
        max_steps=config.steps,
        per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        gradient_accumulation_steps=1,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0 if config.name == "guard_only" else config.beta,
        loss_type="dapo",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=False,
        activation_checkpointing=False,
        disable_dropout=True,
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def _trainer(
    config: ArmConfig, common: dict[str, Any], gen_guard: Any, stream_guard: Any, tokenizer: Any
) -> Any:
    """The arm's trainer on the ``common`` keyword arguments: constrained (the λ arms), dense (Stream's
    per-token penalty beside the scalar reward) or TRL's own ``GRPOTrainer``."""
    if config.name in HELPFULNESS_ARMS and config.name != "helpful":
        from guard_reward.integrations.trl.constraint import ConstrainedGRPOTrainer

        return ConstrainedGRPOTrainer(**common, constraint=_constraint(config, gen_guard))
    if config.name == "dense":
        from guard_reward.integrations.trl.grpo import DenseGRPOTrainer
        from guard_reward.rewards import TokenSafetyPenalty

        penalty = TokenSafetyPenalty(
            stream_guard, shaping="first_violation", coef=1.0, policy_tokenizer=tokenizer
        )
        return DenseGRPOTrainer(**common, dense_rewards=[penalty], dense_coef=config.dense_coef)
    from trl import GRPOTrainer

    return GRPOTrainer(**common)
