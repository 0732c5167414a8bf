"""The demo's world, built: steps 1-2 of ``guard-reward demo`` (see :mod:`guard_reward.sandbox.demo`).

1. pre-train the tiny policy (or load ``policy``), 2. train and save the tiny Gen and Stream guards and the
held-out judge (or use the given checkpoints), load them through ``GenGuard`` /
``StreamGuard.from_pretrained``, and draw the held-out and training prompt sets. With ``workers >= 2`` the
guards and the judge train in two more processes while the policy pre-trains. Each stage's wall time and CPU
time go to :attr:`World.seconds` and :attr:`World.cpu_seconds` (the report's time table).

:func:`build_world` is also what the tests and the quickstart notebook use, at a smaller size.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from guard_reward.sandbox.evaluate import Evaluator
from guard_reward.sandbox.guards import build_gen_guard, build_stream_guard
from guard_reward.sandbox.policy import pretrain_policy

if TYPE_CHECKING:
    from guard_reward.sandbox.demo import DemoConfig

logger = logging.getLogger(__name__)

#: Niceness of the guards' training processes next to the policy's pre-training (which keeps 0). At 5 the
#: policy gets about three quarters of a core while it shares one, enough to end with the guards.
_SIDE_NICENESS = 5


@dataclass
class World:
    """The sandbox, built: the policy and guard checkpoints, the loaded guards, the prompt sets."""

    config: DemoConfig
    policy_path: Path | str
    tokenizer: Any
    gen_path: Path | str
    stream_path: Path | str
    gen: Any
    stream: Any
    heldout: list[tuple[str, bool]]
    train: list[tuple[str, bool]]
    evaluator: Evaluator
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    judge_path: Path | str | None = None
    judge: Any = None


def build_world(config: DemoConfig) -> World:
    """Pre-train (or load) the policy and train (or load) the guards; nothing of the RL runs yet."""
    from guard_reward.guards.gen_spec import load_gen_guard
    from guard_reward.guards.stream import StreamGuard

    torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    start, cpu = time.perf_counter(), time.process_time()
    # Submitted in this order to two processes: Gen in one, Stream then the judge in the other.
    paths: dict[str, Path | str] = {
        "gen": config.gen_guard or out / "guards" / "gen",
        "stream": config.stream_guard or out / "guards" / "stream",
        "judge": config.heldout_judge or out / "guards" / "judge",
    }
    side, guard_jobs = _start_guards_beside_the_policy(config, paths)
    policy_path, tokenizer = _policy(config, out)
    seconds["policy"] = time.perf_counter() - start
    cpu_seconds = {"policy": time.process_time() - cpu}

    start = time.perf_counter()
    if side is not None:
        with side:
            cpu_seconds["guards"] = sum(job.result() for job in guard_jobs)
        seconds["guards (in parallel with the policy; waited)"] = time.perf_counter() - start
    else:
        cpu_seconds["guards"] = sum(
            _train_guard(kind, config, path, config.progress) for kind, path in paths.items()
        )
    # a checkpoint, or a served model (openai+http://…)
    gen = load_gen_guard(paths["gen"], device=config.device)
    stream = StreamGuard.from_pretrained(paths["stream"], device=config.device)
    judge = None
    if config.heldout_judge_prompts > 0:
        judge = load_gen_guard(paths["judge"], device=config.device)
    if side is None:
        seconds["guards"] = time.perf_counter() - start

    heldout, train, evaluator = _prompt_sets(config, tokenizer)
    world = World(
        config, policy_path, tokenizer, paths["gen"], paths["stream"], gen, stream, heldout, train, evaluator,
        seconds,
    )  # fmt: skip
    world.cpu_seconds.update(cpu_seconds)
    if judge is not None:
        world.judge_path, world.judge = paths["judge"], judge
    for stage, wall in seconds.items():
        stage_cpu = cpu_seconds.get(stage.split(" (")[0])
        logger.info("time: %s: wall %.0f s, CPU %.0f s", stage, wall, stage_cpu or 0.0)
    return world


def parallel(config: DemoConfig) -> bool:
    """Side-by-side stages need forked processes (they inherit the loaded world); elsewhere run serially."""
    forkable = "fork" in multiprocessing.get_all_start_methods()
    return config.workers > 1 and config.device == "cpu" and forkable


def _start_guards_beside_the_policy(
    config: DemoConfig, paths: dict[str, Path | str]
) -> tuple[ProcessPoolExecutor | None, list[Future]]:
    """Start training the guards and the judge in two side processes when the policy is pre-trained here and
    the stages may run side by side; ``(None, [])`` otherwise (the caller then trains them itself)."""
    if not (
        config.policy is None
        and parallel(config)
        and (config.gen_guard is None or config.stream_guard is None or _own_judge(config))
    ):
        return None, []
    logger.info("[1-2/4] training the sandbox guards and the judge in two processes, next to the policy")
    # Three processes on two cores: Gen (the longest guard) in one, Stream then the judge in the other,
    # both at a lower priority: the policy is the longest job, and sharing the cores equally left it
    # running alone on one core for its last 15-17 s while the other idled.
    side = ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("fork"), initializer=os.nice, initargs=(_SIDE_NICENESS,)
    )
    return side, [side.submit(_train_guard, kind, config, path, False) for kind, path in paths.items()]


def _policy(config: DemoConfig, out: Path) -> tuple[Path | str, Any]:
    """The policy checkpoint and its tokenizer: pre-trained and saved in out/policy, or ``config.policy``."""
    if config.policy is not None:
        from transformers import AutoTokenizer

        logger.info("[1/4] using the policy %s", config.policy)
        return config.policy, AutoTokenizer.from_pretrained(config.policy, padding_side="left")
    logger.info("[1/4] pre-training the sandbox policy (%d steps)", config.policy_size.steps)
    model, tokenizer = pretrain_policy(
        config.language, config.policy_size, seed=config.seed, progress=config.progress
    )
    path = out / "policy"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def _prompt_sets(
    config: DemoConfig, tokenizer: Any
) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]], Evaluator]:
    """The held-out prompts, the GRPO prompt pool (disjoint from them) and the held-out set's evaluator."""
    lang = config.language
    heldout = lang.prompts(config.heldout_prompts, seed=config.seed + 1000)
    train = lang.prompts(config.train_prompts, seed=config.seed + 2000, exclude=[p for p, _ in heldout])
    evaluator = Evaluator(
        tokenizer,
        heldout,
        samples_per_prompt=config.samples_per_prompt,
        curve_samples_per_prompt=config.curve_samples_per_prompt,
        seed=config.seed + 1234,
        max_new_tokens=config.arm.max_completion_length,
    )
    return heldout, train, evaluator


def _own_judge(config: DemoConfig) -> bool:
    return config.heldout_judge is None and config.heldout_judge_prompts > 0


def _train_guard(kind: str, config: DemoConfig, path: Path | str, progress: bool) -> float:
    """Train the sandbox's ``"gen"`` or ``"stream"`` guard or its held-out ``"judge"`` (a second Gen, another
    seed) unless a checkpoint was given or the judge is off; returns the CPU seconds it took (in whatever
    process ran it)."""
    from guard_reward.sandbox.heldout import JUDGE_SEED_OFFSET

    given = {"gen": config.gen_guard, "stream": config.stream_guard, "judge": config.heldout_judge}[kind]
    if given is not None or (kind == "judge" and not _own_judge(config)):
        return 0.0
    torch.set_num_threads(config.threads)
    cpu = time.process_time()
    if kind == "stream":
        logger.info("[2/4] training the sandbox guards: Stream (%d steps)", config.stream_size.steps)
        build_stream_guard(path, config.language, config.stream_size, seed=config.seed, progress=progress)
    else:
        judge = kind == "judge"
        size = config.judge_size if judge else config.gen_size
        seed = config.seed + (JUDGE_SEED_OFFSET if judge else 0)
        what = "the held-out judge" if judge else "the sandbox guards"
        logger.info("[2/4] training %s: Gen (%d steps, seed %d)", what, size.steps, seed)
        build_gen_guard(path, config.language, size, seed=seed, progress=progress)
    return time.process_time() - cpu
