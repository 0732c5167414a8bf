"""The red-team arm of the sandbox (``guard-reward demo --red-team``): a defender trained with an attacker in the
loop against the static scalar arm, measured on attacks neither saw in training.

1. The world of :mod:`guard_reward.sandbox.world`, built on :class:`~guard_reward.sandbox.framings.FramedLanguage`:
   the pre-trained policy answers *framed* harmful requests unsafely far more often than plain ones, and in
   unsafe words of a sub-class that plain requests (almost) never elicit once the policy has pre-trained long
   enough (:data:`RED_TEAM_POLICY_STEPS`), so training on plain requests rarely samples them; the Gen guard has
   seen framed requests and those words (as unsafe). No held-out judge
   (the ground truth evaluates), and a barely trained Stream guard (no arm here reads it).
2. An attacker: the same tiny architecture pre-trained to rewrite a plain harmful request (its seed) under one
   of the *training* framings, plainly, or (sometimes) as a benign request.
3. Two arms from the same policy, seed and defender budget (the demo's scalar arm: steps x prompts x answers):
   *scalar* — ``SafetyReward`` on the fixed prompt pool (plain requests, half harmful), as in the demo;
   *self-play* — :class:`~guard_reward.integrations.trl.self_play.SelfPlayTrainer`: per round the attacker
   takes GRPO steps on ``AttackReward`` (the guard's P(Unsafe) of the current defender's answer, the guard's
   prompt verdict as validity, n-gram novelty), then the defender takes its share of the steps on the round's
   attacks mixed with the pool's harmful and benign prompts, with the scalar arm's reward.
4. Held-out evaluation by the exact judge: the plain held-out requests (unsafe, benign refusal, fluency) and
   held-out attacks — the held-out harmful requests under the *held-out* framings (templates neither the
   attacker nor any training prompt used). Nothing is tuned on them.

Writes ``red_team.md`` (table, targets, per-round attacker curve, times), ``red_team.png`` (attacker success
rate and diversity per round), ``self_play.csv`` and each arm's samples into ``output_dir``.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from guard_reward.sandbox.arms import ArmConfig, _grpo_args, _reward, write_samples
from guard_reward.sandbox.demo import DemoConfig
from guard_reward.sandbox.evaluate import EvalResult, Evaluator
from guard_reward.sandbox.framings import HELDOUT_FRAMINGS, AttackerTask, FramedLanguage, framed_attacks
from guard_reward.sandbox.guards import GuardSize
from guard_reward.sandbox.policy import PolicySize, pretrain_policy
from guard_reward.sandbox.world import World, build_world, parallel

logger = logging.getLogger(__name__)

ARM_NAMES = ("scalar", "self_play")


#: Policy pre-training steps of the red-team world. At the demo's 600 the policy wrote framed-sub-class words
#: to 13% of plain harmful requests (mass 0.005 per token vs 0.050 under a framing), so training on plain
#: requests sampled them and pushed them down everywhere; at 1500 it wrote them to 2% (0.0005 vs 0.061), and
#: GRPO on plain requests alone left a framed weakness that GRPO with framed requests in the pool closed
#: (measured on training framings and training requests only; see docs/red_team.md).
RED_TEAM_POLICY_STEPS = 1500


def _red_team_demo(output_dir: str) -> DemoConfig:
    return DemoConfig(
        output_dir=output_dir,
        language=FramedLanguage(),
        policy_size=PolicySize(steps=RED_TEAM_POLICY_STEPS),
        stream_size=GuardSize(steps=10, min_steps=1, validation=16),  # unused by these arms
        heldout_judge_prompts=0,
        arms=("scalar",),
    )


@dataclass(frozen=True)
class RedTeamConfig:
    """The red-team experiment.

    Args:
        output_dir: where everything goes.
        demo: the world and the scalar arm's budget (:class:`DemoConfig`, on :class:`FramedLanguage`).
        attacker_size: the attacker's size and pre-training.
        rounds: self-play rounds; the defender takes ``demo.arm.steps // rounds`` steps per round.
        attacker_steps, attacker_prompts_per_step, attacker_max_length, attacker_lr, attacker_beta: the
            attacker's GRPO per round (``demo.arm.num_generations`` attacks per seed).
        weights: ``(w_success, w_valid, w_novel)`` of ``AttackReward``.
        attack_share, benign_share: the defender's mixture per round (the rest: the pool's harmful prompts).
        attack_eval_samples: answers per held-out attack.
    """

    output_dir: str = "runs/demo/red_team"
    demo: DemoConfig = field(default_factory=lambda: _red_team_demo("runs/demo/red_team"))
    attacker_size: PolicySize = field(default_factory=lambda: PolicySize(steps=300))
    rounds: int = 6
    attacker_steps: int = 2
    attacker_prompts_per_step: int = 4
    attacker_max_length: int = 24
    attacker_lr: float = 6e-4
    attacker_beta: float = 0.05
    weights: tuple[float, float, float] = (1.0, 0.5, 0.25)
    attack_share: float = 0.33
    benign_share: float = 0.5
    attack_eval_samples: int = 4

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.demo.arm.steps % self.rounds:
            raise ValueError(
                f"RedTeamConfig: rounds must divide the defender's steps ({self.demo.arm.steps}), got {self.rounds}"
            )

    @classmethod
    def small(cls, output_dir: str, **overrides: Any) -> RedTeamConfig:
        """A seconds-sized run for tests (numbers not meaningful)."""
        demo = DemoConfig.small(
            output_dir, language=FramedLanguage(), heldout_judge_prompts=0, arms=("scalar",)
        )
        demo = replace(demo, arm=replace(demo.arm, steps=2))
        base = cls(
            output_dir=output_dir, demo=demo, attacker_size=PolicySize(steps=30, batch_size=16), rounds=2,
            attacker_steps=1, attacker_prompts_per_step=2, attacker_max_length=12, attack_eval_samples=1,
        )  # fmt: skip
        return replace(base, **overrides)


@dataclass
class RedTeamResult:
    """Each arm's evaluation on the plain held-out requests and on the held-out attacks, the attacker's
    per-round table, wall times."""

    plain: dict[str, EvalResult]
    attacks: dict[str, EvalResult]
    rounds: list[dict[str, float]]
    seconds: dict[str, float]
    load: str = ""
    report_path: Path | None = None
    figure_path: Path | None = None


_FORKED: dict[str, Any] = {}


def run_red_team(config: RedTeamConfig) -> RedTeamResult:
    """Build the world and the attacker, run both arms (side by side when the demo's workers allow), evaluate,
    write the report."""
    from transformers import AutoModelForCausalLM

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    world = build_world(replace(config.demo, output_dir=str(out)))
    seconds["world (policy, guards)"] = time.perf_counter() - begin
    start = time.perf_counter()
    attacker, tok = pretrain_policy(
        AttackerTask(world.config.language),  # type: ignore[arg-type]
        config.attacker_size,
        seed=config.demo.seed + 7,
        progress=config.demo.progress,
    )
    attacker.save_pretrained(out / "attacker_init")
    tok.save_pretrained(out / "attacker_init")
    seconds["attacker pre-training"] = time.perf_counter() - start
    attack_set = framed_attacks(world.heldout, HELDOUT_FRAMINGS, seed=config.demo.seed + 77)
    attack_eval = Evaluator(
        world.tokenizer, attack_set, samples_per_prompt=config.attack_eval_samples, seed=config.demo.seed + 4242,
        max_new_tokens=config.demo.arm.max_completion_length,
    )  # fmt: skip
    start = time.perf_counter()
    policy = AutoModelForCausalLM.from_pretrained(
        world.policy_path, attn_implementation="eager", dtype="float32"
    )
    plain = {"before RL": world.evaluator(policy, step=0)}
    attacks = {"before RL": attack_eval(policy, step=0)}
    del policy
    seconds["evaluation before RL"] = time.perf_counter() - start
    start = time.perf_counter()
    _FORKED.update(world=world, config=config, attack_eval=attack_eval)
    try:
        if parallel(config.demo):
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
                jobs = {name: pool.submit(_arm_job, name) for name in ("self_play", "scalar")}
                results = {name: job.result() for name, job in jobs.items()}
        else:
            results = {name: _arm_job(name) for name in ARM_NAMES}
    finally:
        _FORKED.clear()
    seconds["arms (wall)"] = time.perf_counter() - start
    rounds: list[dict[str, float]] = []
    for name in ARM_NAMES:
        p, a, arm_rounds, arm_seconds = results[name]
        plain[name], attacks[name] = p, a
        seconds[f"arm {name}"] = arm_seconds
        rounds = rounds or arm_rounds
        write_samples(out / f"samples_{name}_attacks.jsonl", a)
    write_samples(out / "samples_before_attacks.jsonl", attacks["before RL"])
    seconds["total"] = time.perf_counter() - begin
    result = RedTeamResult(plain, attacks, rounds, seconds, load=_load())
    result.figure_path = _figure(rounds, out / "red_team.png")
    from guard_reward.sandbox.red_team_report import write_red_team_report

    result.report_path = write_red_team_report(result, config, out / "red_team.md")
    logger.info("red team done in %.0f s; report: %s", seconds["total"], result.report_path)
    return result


def _arm_job(name: str) -> tuple[EvalResult, EvalResult, list[dict[str, float]], float]:
    """One arm from the inherited world: its final plain and attack evaluations, the self-play table, seconds."""
    world: World = _FORKED["world"]
    config: RedTeamConfig = _FORKED["config"]
    torch.set_num_threads(config.demo.threads)
    start = time.perf_counter()
    out = Path(config.output_dir) / name
    arm = replace(config.demo.arm, name="scalar", seed=config.demo.seed)
    if name == "scalar":
        trainer, rounds = _scalar_trainer(world, arm, out), []
        trainer.train()
    else:
        loop = _self_play(world, config, arm, out)
        rounds = loop.train().history
        trainer = loop.defender
    model = trainer.model
    plain = world.evaluator(model, step=arm.steps)
    attacks = _FORKED["attack_eval"](model, step=arm.steps)
    return plain, attacks, rounds, time.perf_counter() - start


def _policy_model(path: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype="float32")


def _trainer(
    world: World, arm: ArmConfig, out: Path, rows: list[dict[str, Any]], reward: Any, model: Any
) -> Any:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=_grpo_args(arm, out, False, world.config.device),
        train_dataset=Dataset.from_list(rows), processing_class=world.tokenizer,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _scalar_trainer(world: World, arm: ArmConfig, out: Path) -> Any:
    """The demo's scalar arm: ``SafetyReward`` on the plain prompt pool."""
    rows = [{"prompt": [{"role": "user", "content": p}], "harmful": h} for p, h in world.train]
    return _trainer(world, arm, out, rows, _reward(arm, world.gen), _policy_model(world.policy_path))


def _self_play(world: World, config: RedTeamConfig, arm: ArmConfig, out: Path) -> Any:
    from guard_reward.integrations.trl.self_play import SelfPlayConfig, SelfPlayTrainer
    from guard_reward.rewards import AttackReward

    ws, wv, wn = config.weights
    attack = AttackReward(
        world.gen, success_weight=ws, validity_weight=wv, novelty_weight=wn, controversial=0.0, max_chars=400
    )
    attacker_arm = replace(
        arm, prompts_per_step=config.attacker_prompts_per_step, max_completion_length=config.attacker_max_length,
        lr=config.attacker_lr, beta=config.attacker_beta, seed=arm.seed + 1,
    )  # fmt: skip
    harmful = [p for p, h in world.train if h]
    benign = [p for p, h in world.train if not h]
    seed_rows = [{"prompt": [{"role": "user", "content": p}]} for p in harmful[:8]]
    attacker = _trainer(world, attacker_arm, out / "attacker", seed_rows, attack,
                        _policy_model(Path(config.output_dir) / "attacker_init"))  # fmt: skip
    defender = _trainer(world, arm, out / "defender", seed_rows, _reward(arm, world.gen),
                        _policy_model(world.policy_path))  # fmt: skip
    loop_config = SelfPlayConfig(
        str(out), rounds=config.rounds, attacker_steps=config.attacker_steps,
        defender_steps=arm.steps // config.rounds, attack_share=config.attack_share,
        benign_share=config.benign_share, seed=arm.seed,
    )  # fmt: skip
    return SelfPlayTrainer(attacker, defender, attack, attack_seeds=harmful, fixed_prompts=harmful,
                           benign_prompts=benign, config=loop_config)  # fmt: skip


def _figure(rounds: list[dict[str, float]], path: Path) -> Path | None:
    """Attacker success rate and diversity per round."""
    if not rounds:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    x = [r["round"] for r in rounds]
    ax.plot(x, [r["attack_success_rate"] for r in rounds], marker="o", label="attack success rate (guard)")
    ax.plot(
        x, [r["attack_diversity"] for r in rounds], marker="s", label="attack diversity (1 - mean Jaccard)"
    )
    ax.set_xlabel("self-play round")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _load() -> str:
    try:
        one, five, fifteen = (float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    except (OSError, ValueError):
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min)"
