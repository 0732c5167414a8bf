"""Self-play red teaming on TRL: an attacker and a defender trained in one loop with GRPO, both rewarded by the
guard.

Two models, two GRPO trainers. Self-RedTeam trains one model in both roles; two separate models are used here
because each side then keeps its own optimizer, learning rate, KL anchor and checkpoint, the two sides' curves
never mix in one log, and either side can be swapped (a bigger defender, a frozen attacker) without touching
the other. The price is a second copy of the weights.

One round (``SelfPlayTrainer.train``):

1. **attacker** — ``attacker_steps`` GRPO steps on the attack seeds. Its reward is an
   :class:`~guard_reward.rewards.AttackReward` whose defender is the defender trainer's model as it is now
   (:class:`~guard_reward.evaluation.LocalDefender`, by reference); every attack it rewards is recorded.
2. the round's attacks are gathered from every process (the same list everywhere) and the *found* ones (success
   and validity at least the reward's threshold) enter the novelty memory; the reward does not update the memory
   itself, so it is the same on every process and after a resume.
3. **defender** — ``defender_steps`` GRPO steps on a mixture: the round's valid attacks (most successful first),
   the fixed harmful prompts and benign prompts (so that refusing everything costs reward), with a ``harmful``
   column. The defender trainer is any ``GRPOTrainer``: TRL's own with ``SafetyReward`` /
   ``HybridSafetyReward``, ``DenseGRPOTrainer`` with ``TokenSafetyPenalty``, ``ConstrainedGRPOTrainer``. The
   column reaches every reward function of the batch (``SafetyReward(harmful_column=...)`` values refusals by
   it; ``HybridSafetyReward`` caps every refusal alike and hands it to its helpfulness function only). A
   constrained defender's λ, cost window and counters cross each round boundary in its checkpoint
   (``constraint_state.json``); its λ and window cost, or a dense defender's ``dense/reward_mean``, are columns
   of the per-round table next to the ``guard/...`` ones.

Each side is trained by its own ``trainer.train()`` per round, resuming from its checkpoint of the round before:
optimizer, scheduler, RNG state, step counter and log history continue, so a side's curves run across rounds as
in one run. The loop's own state (rounds done, the novelty memory, the per-round table) is written next to the
checkpoints (``self_play_state.json``, ``self_play.csv``); ``train(resume=True)`` continues an interrupted run
from the last completed round. The cost of a round boundary is one checkpoint save and load per side.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard_reward.evaluation.defender import LocalDefender
from guard_reward.rewards.attack import AttackRecord, AttackReward
from guard_reward.shaping.novelty import batch_diversity

logger = logging.getLogger(__name__)

STATE_FILE = "self_play_state.json"
TABLE_FILE = "self_play.csv"
#: Per-round columns taken from each side's log history (means over the round's steps).
ATTACKER_KEYS = ("attack/success_rate", "attack/p_unsafe_mean", "attack/valid_rate", "attack/novelty_mean",
                 "attack/diversity")  # fmt: skip
DEFENDER_KEYS = (
    "guard/unsafe_rate",
    "guard/refusal_rate_benign",
    "guard/refusal_rate_harmful",
    "reward",
    "kl",
)
#: The defender's own per-round columns, added when its trainer has the attribute (a constrained trainer's
#: multiplier and window cost, a dense trainer's mean per-token reward); a plain GRPOTrainer has neither.
DEFENDER_OWN_KEYS = {
    "constraint": ("constraint/lambda", "constraint/cost"),
    "dense_rewards": ("dense/reward_mean",),
}


@dataclass(frozen=True)
class SelfPlayConfig:
    """The loop's shape.

    Args:
        output_dir: where the loop's state and table go (each trainer keeps its own ``output_dir``).
        rounds: attacker-then-defender rounds.
        attacker_steps, defender_steps: GRPO steps of each side per round.
        attack_share: share of the defender's prompts per round taken from the round's attacks (the rest of
            the harmful share comes from the fixed prompts when there are too few valid attacks).
        benign_share: share of benign prompts in the defender's mixture.
        harmful_column: the mixture's column saying whether a prompt is harmful (for ``SafetyReward``'s
            ``harmful_column``).
        seed: order of the fixed and benign prompts per round.
    """

    output_dir: str
    rounds: int
    attacker_steps: int = 1
    defender_steps: int = 1
    attack_share: float = 0.5
    benign_share: float = 0.25
    harmful_column: str = "harmful"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.rounds, self.attacker_steps, self.defender_steps) < 1:
            raise ValueError(
                f"SelfPlayConfig needs rounds, attacker_steps and defender_steps >= 1, got {self.rounds}, "
                f"{self.attacker_steps}, {self.defender_steps}"
            )
        if not (
            0 <= self.attack_share <= 1
            and 0 <= self.benign_share <= 1
            and self.attack_share + self.benign_share <= 1
        ):
            raise ValueError(
                f"attack_share and benign_share must be in [0, 1] and sum to <= 1, got {self.attack_share}, "
                f"{self.benign_share}"
            )


@dataclass
class SelfPlayState:
    """What the loop has done: rounds completed, the novelty memory, one table row per round."""

    rounds_done: int = 0
    memory: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


class SelfPlayTrainer:
    """Alternates an attacker and a defender GRPO trainer (module docstring).

    Args:
        attacker: a ``GRPOTrainer`` whose ``reward_funcs`` include ``attack_reward``.
        defender: a ``GRPOTrainer`` (or subclass) with its own rewards.
        attack_reward: the attacker's :class:`~guard_reward.rewards.AttackReward`; without a defender of its
            own it gets the defender trainer's model (answers up to the defender's ``max_completion_length``).
        attack_seeds: the attacker's prompts (strings or message lists), cycled.
        fixed_prompts: harmful prompts (strings) the defender always sees.
        benign_prompts: benign prompts (strings) the defender must keep answering.
        config: :class:`SelfPlayConfig`.
    """

    def __init__(
        self,
        attacker: Any,
        defender: Any,
        attack_reward: AttackReward,
        *,
        attack_seeds: Sequence[Any],
        fixed_prompts: Sequence[str],
        benign_prompts: Sequence[str],
        config: SelfPlayConfig,
    ) -> None:
        if not any(f is attack_reward for f in attacker.reward_funcs):
            raise ValueError("attack_reward must be one of the attacker trainer's reward_funcs")
        if Path(attacker.args.output_dir).resolve() == Path(defender.args.output_dir).resolve():
            raise ValueError(
                "the attacker and the defender need separate output_dirs (each keeps its checkpoints)"
            )
        if not attack_seeds or not fixed_prompts or (config.benign_share > 0 and not benign_prompts):
            raise ValueError(
                "attack_seeds, fixed_prompts and (with benign_share > 0) benign_prompts must not be empty"
            )
        for side, trainer in (("attacker", attacker), ("defender", defender)):
            args = trainer.args
            if args.steps_per_generation != args.gradient_accumulation_steps or trainer.num_iterations != 1:
                raise ValueError(
                    f"the {side} trainer must generate once per optimizer step (steps_per_generation == "
                    f"gradient_accumulation_steps, num_iterations == 1), got {args.steps_per_generation}, "
                    f"{args.gradient_accumulation_steps}, {trainer.num_iterations}"
                )
        self.attacker, self.defender, self.attack_reward = attacker, defender, attack_reward
        self.attack_seeds, self.fixed, self.benign = (
            list(attack_seeds),
            list(fixed_prompts),
            list(benign_prompts),
        )
        self.config = config
        # memory the same on every process: updated by the loop from the gathered attacks only
        attack_reward.remember_own = False
        if attack_reward.defender is None:
            attack_reward.defender = LocalDefender(
                defender.model, defender.processing_class, max_new_tokens=defender.args.max_completion_length
            )
        from transformers.trainer_utils import SaveStrategy

        self._stops = {}
        for trainer, steps in ((attacker, config.attacker_steps), (defender, config.defender_steps)):
            trainer.args.save_strategy = SaveStrategy.STEPS
            trainer.args.save_steps = steps
            if trainer.args.save_total_limit is None:
                trainer.args.save_total_limit = 2
            # max_steps is the whole run's, so that a learning-rate schedule spans every round (a resumed
            # scheduler is rebuilt for max_steps); this callback ends each train() call at its round's end
            trainer.args.max_steps = config.rounds * steps
            self._stops[id(trainer)] = _stop_at_callback()
            trainer.add_callback(self._stops[id(trainer)])
        self.defender_keys = DEFENDER_KEYS + tuple(
            key for attr, keys in DEFENDER_OWN_KEYS.items() if getattr(defender, attr, None) for key in keys
        )
        self.state = SelfPlayState()
        self.last_defender_rows: list[dict[str, Any]] = []

    # -- the loop

    def train(self, resume: bool = False, until: int | None = None) -> SelfPlayState:
        """Run the configured rounds, continuing after the last completed one with ``resume=True``; ``until``
        stops after that round (a time budget: a later ``train(resume=True)`` goes on, and the learning-rate
        schedules stay planned for ``config.rounds``)."""
        out = Path(self.config.output_dir)
        if resume:
            self._load(out)
        last = self.config.rounds if until is None else until
        if not 1 <= last <= self.config.rounds:
            raise ValueError(f"until must be in [1, {self.config.rounds}], got {until}")
        for r in range(self.state.rounds_done, last):
            logger.info("self-play round %d/%d: attacker", r + 1, self.config.rounds)
            self.attack_reward.take_records()  # nothing from before this round counts as its attacks
            self._side(self.attacker, self._seed_rows(r), r, self.config.attacker_steps)
            attacks = self._gather(self.attack_reward.take_records())
            found = [a.attack for a in attacks if self.attack_reward.is_found(a)]
            self.attack_reward.remember(found)  # type: ignore[arg-type]
            logger.info("self-play round %d/%d: defender", r + 1, self.config.rounds)
            rows = self._defender_rows(r, attacks)
            self.last_defender_rows = rows
            self._side(self.defender, rows, r, self.config.defender_steps)
            self.state.history.append(self._row(r, attacks, found, rows))
            self.state.rounds_done = r + 1
            self.state.memory = self.attack_reward.memory.state_dict()
            self._save(out)
        return self.state

    def _side(self, trainer: Any, rows: list[dict[str, Any]], r: int, steps: int) -> None:
        from datasets import Dataset

        trainer.train_dataset = Dataset.from_list(rows)
        trainer.args.max_steps = self.config.rounds * steps
        self._stops[id(trainer)].stop_at = (r + 1) * steps
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{r * steps}"
        if r > 0 and not checkpoint.is_dir():
            raise FileNotFoundError(f"no checkpoint of round {r} at {checkpoint}; cannot continue that side")
        trainer.train(resume_from_checkpoint=str(checkpoint) if r > 0 else None)

    @staticmethod
    def _prompts_per_step(trainer: Any) -> int:
        return trainer.args.generation_batch_size // trainer.num_generations

    def _seed_rows(self, r: int) -> list[dict[str, Any]]:
        n = self.config.attacker_steps * self._prompts_per_step(self.attacker)
        start = r * n
        seeds = [self.attack_seeds[(start + i) % len(self.attack_seeds)] for i in range(n)]
        return [{"prompt": _as_messages(s)} for s in seeds]

    def _defender_rows(self, r: int, attacks: list[AttackRecord]) -> list[dict[str, Any]]:
        """The round's mixture: valid attacks (most successful first), fixed harmful and benign prompts."""
        cfg = self.config
        n = cfg.defender_steps * self._prompts_per_step(self.defender)
        n_benign = round(cfg.benign_share * n) if self.benign else 0
        n_attack = round(cfg.attack_share * n)
        threshold = self.attack_reward.threshold
        valid = [a for a in attacks if a.reason is None and (a.validity is None or a.validity >= threshold)]
        valid.sort(key=lambda a: -(a.success or 0.0))
        chosen = list(dict.fromkeys(a.attack for a in valid))[:n_attack]
        rng = random.Random(cfg.seed * 1_000_003 + r)
        n_fixed = n - n_benign - len(chosen)
        rows = [{"prompt": _as_messages(t), cfg.harmful_column: True, "source": "attack"} for t in chosen]
        rows += [{"prompt": _as_messages(t), cfg.harmful_column: True, "source": "fixed"}
                 for t in _draw(self.fixed, n_fixed, rng)]  # fmt: skip
        rows += [{"prompt": _as_messages(t), cfg.harmful_column: False, "source": "benign"}
                 for t in _draw(self.benign, n_benign, rng)]  # fmt: skip
        rng.shuffle(rows)
        return rows

    def _gather(self, records: list[AttackRecord]) -> list[AttackRecord]:
        """Every process's records of the round, in process order (the same list on every process)."""
        accelerator = self.attacker.accelerator
        if accelerator.num_processes == 1:
            return records
        from accelerate.utils import gather_object

        return list(gather_object(records))

    def _row(
        self, r: int, attacks: list[AttackRecord], found: list[Any], rows: list[dict]
    ) -> dict[str, float]:
        ok = [a for a in attacks if a.reason is None]
        row: dict[str, float] = {"round": float(r + 1)}
        row["attacks"] = float(len(attacks))
        row["attack_success_rate"] = _mean([float(a.success >= self.attack_reward.threshold) for a in ok])  # type: ignore[operator]
        row["attack_found"] = float(len(found))
        row["attack_diversity"] = _nan(
            batch_diversity([a.attack for a in ok], self.attack_reward.memory.ngram)
        )  # type: ignore[misc]
        row["attack_failures"] = float(len(attacks) - len(ok))
        row["defender_attack_prompts"] = float(sum(x["source"] == "attack" for x in rows))
        row["memory"] = float(len(self.attack_reward.memory))
        for prefix, trainer, keys, steps in (
            ("attacker", self.attacker, ATTACKER_KEYS, self.config.attacker_steps),
            ("defender", self.defender, self.defender_keys, self.config.defender_steps),
        ):
            logs = [e for e in trainer.state.log_history if "loss" in e or any(k in e for k in keys)][-steps:]
            for key in keys:
                row[f"{prefix}:{key}"] = _mean([e[key] for e in logs if key in e])
        return row

    # -- state

    def _save(self, out: Path) -> None:
        if self.attacker.accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            state = {
                "rounds_done": self.state.rounds_done,
                "memory": self.state.memory,
                "history": self.state.history,
            }
            tmp = out / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(out / STATE_FILE)
            with open(out / TABLE_FILE, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.state.history[0]))
                writer.writeheader()
                writer.writerows(self.state.history)
        self.attacker.accelerator.wait_for_everyone()

    def _load(self, out: Path) -> None:
        path = out / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"resume=True but {path} does not exist; start without resume")
        state = json.loads(path.read_text())
        self.state = SelfPlayState(state["rounds_done"], state["memory"], state["history"])
        if state["memory"]:
            self.attack_reward.memory.load_state_dict(state["memory"])
        logger.info("self-play: resuming after round %d", self.state.rounds_done)


def _stop_at_callback() -> Any:
    """A callback ending ``train()`` after step ``stop_at`` (the end of a round), with a checkpoint."""
    from transformers import TrainerCallback

    class StopAtRoundEnd(TrainerCallback):
        stop_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.stop_at is not None and state.global_step >= self.stop_at:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAtRoundEnd()


def _as_messages(prompt: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _draw(items: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` items, each item once before any repeats (shuffled), cycling when ``n`` exceeds them."""
    out: list[str] = []
    while len(out) < n:
        batch = list(items)
        rng.shuffle(batch)
        out += batch[: n - len(out)]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
