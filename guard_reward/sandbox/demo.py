"""The sandbox demo pipeline behind ``guard-reward demo``: build the world, train the arms, write the report.

1. pre-train the tiny policy (or load ``policy``), 2. train and save the tiny Gen and Stream guards (or use
``gen_guard`` / ``stream_guard`` checkpoints), load both through ``GenGuard`` / ``StreamGuard.from_pretrained``
(steps 1-2: :func:`~guard_reward.sandbox.world.build_world`, importable from here too), 3. run the GRPO arms
from the same policy with the same seed and budget and measure the guards against the ground truth, 4. write
``report.md``, the curve PNGs and the metric CSVs into ``output_dir``.

With ``workers >= 2`` (the default on a machine with two or more cores) the Gen guard, the Stream guard and
the held-out judge train in two more processes while the policy pre-trains, and the arms run in a process
pool (forked, so they share the loaded world; each arm is single-threaded and seeded on its own, so the
figures do not depend on the number of processes), which also measures the guards' accuracy as arms end.
Each stage's wall time and CPU time (summed over the processes that ran it) go to the report.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from guard_reward.sandbox.accuracy import GuardAccuracy, guard_accuracy
from guard_reward.sandbox.arms import ArmConfig, ArmResult, import_arm_modules, run_arm, write_samples
from guard_reward.sandbox.evaluate import EvalResult
from guard_reward.sandbox.guards import GuardSize, guard_chats
from guard_reward.sandbox.heldout import eval_prompts
from guard_reward.sandbox.language import Language
from guard_reward.sandbox.policy import PolicySize
from guard_reward.sandbox.world import World, build_world, parallel

__all__ = ["DemoConfig", "DemoResult", "World", "build_world", "measure_guards", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, sized for a 2-core CPU (see docs/sandbox.md for measured times).

    Args:
        output_dir: where checkpoints, CSVs, PNGs and ``report.md`` go.
        seed: one seed for the world and all arms (each arm starts from the same policy with the same seed).
        arms: the GRPO arms to run (``"guard_only"`` is the "what can go wrong" panel).
        policy, gen_guard, stream_guard: checkpoints (folders or hub ids) replacing the sandbox's own.
        heldout_prompts, samples_per_prompt: evaluation set size (half harmful) before RL and at each arm's end.
        curve_samples_per_prompt: answers per held-out prompt at the evaluations in between, which only draw
            the curves and the steps-to-reach table (half the answers: evaluation is most of an arm's cost).
        train_prompts: GRPO prompt pool size (half harmful, disjoint from the held-out set).
        heldout_judge: a Gen checkpoint replacing the sandbox's held-out judge (a second tiny Gen trained with
            another seed, which every arm is also evaluated by, through ``SafetyEvalCallback``); ``judge_size``
            sizes the sandbox's own.
        heldout_judge_prompts, heldout_judge_samples: that evaluation's size (the first prompts of the held-out
            set); 0 prompts turns it off.
        threads: torch threads; 1 is fastest for models this small and immune to a busy machine's stalls.
        device: where the guards and the GRPO runs go (``"cuda"`` for real checkpoints on a GPU); the sandbox's
            own pre-training always runs on the CPU.
        workers: processes for the stages that run side by side (guards next to the policy, arms in a pool);
            1 runs everything in this process. Forced to 1 on an accelerator.
        arm_processes: processes for the arms when ``workers > 1``; ``None`` = one per arm, so the operating
            system packs the arms' work evenly onto the cores (five arms in two fixed workers would leave one
            core idle while the last arm runs).
    """

    output_dir: str = "runs/demo"
    seed: int = 0
    language: Language = field(default_factory=Language)
    policy_size: PolicySize = field(default_factory=PolicySize)
    # Gen needs more width than Stream: it must carry the unsafe word's category to the "Categories:" line.
    gen_size: GuardSize = field(
        default_factory=lambda: GuardSize(
            hidden_size=96, head_dim=24, intermediate_size=192, steps=700, batch_size=16
        )
    )
    stream_size: GuardSize = field(default_factory=lambda: GuardSize(steps=400))
    # A held-out judge is another model, not the training guard's twin: it stops at 98% exact match.
    judge_size: GuardSize = field(
        default_factory=lambda: GuardSize(
            hidden_size=96, head_dim=24, intermediate_size=192, steps=700, batch_size=16, target=0.98
        )
    )
    arm: ArmConfig = field(default_factory=lambda: ArmConfig("scalar"))
    arms: tuple[str, ...] = ("scalar", "dense", "guard_only", "helpful", "lagrangian")
    policy: str | None = None
    gen_guard: str | None = None
    stream_guard: str | None = None
    heldout_judge: str | None = None
    heldout_judge_prompts: int = 64
    heldout_judge_samples: int = 1
    heldout_prompts: int = 128
    samples_per_prompt: int = 4
    curve_samples_per_prompt: int = 2
    train_prompts: int = 1024
    guard_eval_chats: int = 256
    threads: int = 1
    device: str = "cpu"
    progress: bool = True
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    arm_processes: int | None = None

    @classmethod
    def small(cls, output_dir: str | os.PathLike, **overrides: Any) -> DemoConfig:
        """A seconds-sized world for tests and notebooks (guards and policy barely trained, few steps)."""
        base = cls(
            output_dir=str(output_dir),
            policy_size=PolicySize(steps=60, batch_size=16),
            gen_size=GuardSize(steps=60, batch_size=16),
            stream_size=GuardSize(steps=60, batch_size=16),
            judge_size=GuardSize(steps=60, batch_size=16),
            heldout_judge_prompts=8,
            arm=ArmConfig(
                "scalar", steps=2, prompts_per_step=2, num_generations=4, eval_every=1, heldout_every=1
            ),
            arms=("scalar", "dense"),
            workers=1,
            heldout_prompts=16,
            samples_per_prompt=2,
            train_prompts=32,
            guard_eval_chats=32,
            progress=False,
        )
        return replace(base, **overrides)


#: The world the forked arm workers inherit (a pool's arguments are pickled; guards should not be).
_FORKED: dict[str, Any] = {}


def _arm_job(name: str, progress: bool) -> tuple[ArmResult, float]:
    """Run one arm from the inherited world; returns it and the CPU seconds it took in this process."""
    world, initial = _FORKED["world"], _FORKED["initial"]
    config = world.config
    torch.set_num_threads(config.threads)
    cpu = time.process_time()
    result = run_arm(
        replace(config.arm, name=name, seed=config.seed),
        world.policy_path,
        world.tokenizer,
        world.gen,
        world.stream,
        world.train,
        world.evaluator,
        Path(config.output_dir) / name,
        initial=initial,
        progress=progress,
        device=config.device,
        heldout_judge=world.judge,
        heldout_prompts=eval_prompts(world.heldout, config.heldout_judge_prompts),
        heldout_samples=config.heldout_judge_samples,
    )
    return result, time.process_time() - cpu


@dataclass
class DemoResult:
    """What :func:`run_demo` produced (also written to ``output_dir``)."""

    world: World
    initial: EvalResult
    arms: dict[str, ArmResult]
    accuracy: dict[str, GuardAccuracy]
    seconds: dict[str, float]
    report_path: Path | None = None


def _accuracy_inputs(world: World, sets: dict[str, EvalResult]) -> dict[str, tuple[list[str], list[str]]]:
    """``(prompts, responses)`` of every set the guards are measured on: held-out synthetic chats first."""
    config = world.config
    chats = guard_chats(config.language, random.Random(config.seed + 3000), config.guard_eval_chats)
    out = {"synthetic chats": ([c.prompt for c in chats], [c.response for c in chats])}
    return out | {name: _texts(result) for name, result in sets.items()}


def _texts(result: EvalResult) -> tuple[list[str], list[str]]:
    return [s.prompt for s in result.samples], [s.response for s in result.samples]


def measure_guards(world: World, sets: dict[str, EvalResult]) -> dict[str, GuardAccuracy]:
    """Guard accuracy on held-out synthetic chats and on each evaluation's policy samples in ``sets``."""
    return {
        name: guard_accuracy(world.gen, world.stream, prompts, responses)
        for name, (prompts, responses) in _accuracy_inputs(world, sets).items()
    }


def _accuracy_job(prompts: list[str], responses: list[str]) -> tuple[GuardAccuracy, float]:
    """:func:`guard_accuracy` with the inherited world's guards; returns it and the CPU seconds it took."""
    world = _FORKED["world"]
    torch.set_num_threads(world.config.threads)
    cpu = time.process_time()
    return guard_accuracy(world.gen, world.stream, prompts, responses), time.process_time() - cpu


#: The arm whose final samples the guards are also measured on.
_MEASURED_ARM = "scalar"


_AFTER_RL = f"policy after RL ({_MEASURED_ARM})"


def _accuracy_sets(initial: EvalResult, arms: dict[str, ArmResult]) -> dict[str, EvalResult]:
    sets = {"policy before RL": initial}
    if _MEASURED_ARM in arms:
        sets[_AFTER_RL] = arms[_MEASURED_ARM].final
    return sets


def run_demo(config: DemoConfig, world: World | None = None) -> DemoResult:
    """The whole demo: world (built unless given), arms, guard accuracy, report."""
    from guard_reward.sandbox.report import write_report

    begin = time.perf_counter()
    if world is None:
        world = build_world(config)
    elif world.config != config:
        raise ValueError(
            "run_demo: the world was built with another DemoConfig; pass that one (world.config)"
        )
    out = Path(config.output_dir)
    from transformers import AutoModelForCausalLM

    start, cpu = time.perf_counter(), time.process_time()
    policy = AutoModelForCausalLM.from_pretrained(
        world.policy_path, attn_implementation="eager", dtype="float32"
    )
    initial = world.evaluator(policy, step=0)
    del policy
    write_samples(out / "samples_before.jsonl", initial)
    world.seconds["evaluation before RL"] = time.perf_counter() - start
    world.cpu_seconds["evaluation before RL"] = time.process_time() - cpu
    arms, accuracy, accuracy_cpu = _run_arms(world, initial)
    logger.info("[4/4] measuring the guards and writing the report")
    start, cpu = time.perf_counter(), time.process_time()
    if accuracy is None:
        accuracy = measure_guards(world, _accuracy_sets(initial, arms))
    result = DemoResult(world, initial, arms, accuracy, world.seconds)
    result.report_path = write_report(result)  # written twice: the second time with the final times
    world.seconds["guard accuracy, report"] = time.perf_counter() - start
    world.cpu_seconds["guard accuracy, report"] = time.process_time() - cpu + accuracy_cpu
    world.seconds["total"] = time.perf_counter() - begin
    world.cpu_seconds["total"] = sum(v for k, v in world.cpu_seconds.items() if k != "total")
    result.report_path = write_report(result)
    logger.info(
        "demo done in %.0f s (%.0f CPU s over all processes); report: %s",
        world.seconds["total"],
        world.cpu_seconds["total"],
        result.report_path,
    )
    return result


def _run_arms(
    world: World, initial: EvalResult
) -> tuple[dict[str, ArmResult], dict[str, GuardAccuracy] | None, float]:
    """Every configured arm, in a process pool when ``workers > 1``; results in the configured order.

    In the pool, the guard accuracy is measured there too (the synthetic chats and the policy before RL queue
    behind the arms, the measured arm's final samples follow it), filling the cores as the shorter arms end;
    returns the arms, that accuracy (``None`` when run serially: the caller measures it) and its CPU seconds.
    """
    config = world.config
    names = list(config.arms)
    start = time.perf_counter()
    _FORKED.update(world=world, initial=initial)
    results: dict[str, tuple[ArmResult, float]] = {}
    accuracy: dict[str, GuardAccuracy] | None = None
    accuracy_cpu = 0.0
    try:
        if parallel(config) and len(names) > 1:
            processes = min(config.arm_processes or len(names), len(names))
            logger.info("[3/4] GRPO arms %s in %d processes", ", ".join(names), processes)
            import_arm_modules()
            # Longest arms first, so that with fewer processes than arms the queues finish close together.
            order = sorted(names, key=lambda n: -_ARM_COST.get(n, 1.0))
            with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
                jobs = {pool.submit(_arm_job, name, False): name for name in order}
                inputs = _accuracy_inputs(world, _accuracy_sets(initial, {}))
                measured = {name: pool.submit(_accuracy_job, *pair) for name, pair in inputs.items()}
                for job in as_completed(list(jobs)):
                    name = jobs[job]
                    results[name] = job.result()
                    logger.info(
                        "time: arm %s: wall %.0f s, CPU %.0f s",
                        name,
                        results[name][0].seconds,
                        results[name][1],
                    )
                    if name == _MEASURED_ARM:
                        measured[_AFTER_RL] = pool.submit(_accuracy_job, *_texts(results[name][0].final))
                accuracy = {}
                for name, job in measured.items():
                    accuracy[name], job_cpu = job.result()
                    accuracy_cpu += job_cpu
        else:
            for i, name in enumerate(names):
                logger.info("[3/4] GRPO arm %d/%d: %s", i + 1, len(names), name)
                results[name] = _arm_job(name, config.progress)
    finally:
        _FORKED.clear()
    for name in names:
        world.seconds[f"arm {name}"] = results[name][0].seconds
        world.cpu_seconds[f"arm {name}"] = results[name][1]
    world.seconds["arms (wall)"] = time.perf_counter() - start
    return {name: results[name][0] for name in names}, accuracy, accuracy_cpu


#: Relative running time of the arms (for scheduling only: longest first).
_ARM_COST = {
    "dense": 1.3,
    "scalar": 1.1,
    "lagrangian": 1.1,
    "fixed_low": 1.0,
    "fixed_high": 1.0,
    "helpful": 0.9,
}
