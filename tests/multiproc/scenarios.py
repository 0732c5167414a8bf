"""The trainers of the multi-process tier, built the same way by the 2-process worker and the 1-process replay.

Every scenario trains a tiny Qwen3 policy with the real guard rewards — ``SafetyReward`` on the trained tiny
Gen stand-in with refusal handling on (greedy verdict decoding, the dataset's ``harmful`` column) plus a
length reward, and ``TokenSafetyPenalty`` on a tiny Stream stand-in as the dense reward. The policy's sampling
is biased (``sequence_bias``) so that it usually opens a ``<think>`` block, closes it only sometimes and ends
early often: completion widths differ between processes on most steps, and many completions are reasoning
blocks cut off before ``</think>``; now and then it samples an id past the tokenizer.

:class:`Recording` keeps what each generation step hands to the loss; :class:`Replaying` makes a 1-process
trainer regenerate nothing and take a recorded global batch (rows and completion ids) instead, so its
advantages can be compared with the 2-process run's over the same batch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

#: The scenarios of the tier: the three dense GRPO modes and PPO.
DENSE_MODES = ("token", "return_to_go", "process_supervision")
SCENARIOS = (*(f"grpo_{m}" for m in DENSE_MODES), "ppo")
#: GRPO through TRL's tool loop (``tools=``), run in the same launch; it has its own checks (no replay).
TOOL_SCENARIO = "grpo_tools"
#: GuardPPOTrainer through TRL's tool loop, run in the same launch; its own checks too (no replay).
PPO_TOOL_SCENARIO = "ppo_tools"

THINK, END_THINK, IM_END, ASSISTANT, NEWLINE = 151667, 151668, 151645, 77091, 198
PADDED_ROW_ID = 151800  # in Qwen's padded embedding rows: past the tokenizer's 151,669 tokens
#: Logit biases on a near-uniform random policy (151,936 logits of about 0 each): ``<think>`` right after
#: ``assistant\n`` most of the time, then per token about a 15% chance of ``</think>``, 20% of the end and
#: 5% of an id past the tokenizer.
SEQUENCE_BIAS = [
    [[ASSISTANT, NEWLINE, THINK], 12.5],
    [[END_THINK], 10.5],
    [[IM_END], 10.8],
    [[PADDED_ROW_ID], 9.4],
]

#: Metric prefixes of the scalar (Gen) and dense (Stream) guard rewards.
# Gen failures log as guard/failures/<reason>, Stream failures as guard/stream_failures/<reason>.
PREFIX = "guard"
FAILURE_KEYS = {"safety": "guard/failures", "guard_tokens": "guard/stream_failures"}
#: Rows per process and step: 2 processes x 3 = 6 = 3 prompts x 2 generations, so a group spans both.
PER_DEVICE = 3
NUM_GENERATIONS = 2
MAX_COMPLETION = 14
STEPS = 3
STREAM_WINDOW = 12


def common_args(output_dir: Path, per_device: int, seed: int) -> dict[str, Any]:
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION,
        max_steps=STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        save_strategy="no",
        activation_checkpointing=False,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=0,
        generation_kwargs={"sequence_bias": SEQUENCE_BIAS},
    )


def policy_tokenizer() -> Any:
    """Qwen3's tokenizer (``<think>``/``</think>`` not special, as in the real checkpoints, so TRL's
    ``skip_special_tokens=True`` decoding keeps them in the completion text the Gen guard reads)."""
    from guard_reward.tiny.tokenizer import qwen_tokenizer
    from tests.tiny_policy import CHATML

    return qwen_tokenizer(CHATML)


def length_reward(prompts, completions, completion_ids, **kwargs):
    """A scalar reward that differs within a group, ``0.1 * len(completion_ids)``, and has no value (``None``)
    for a reasoning block cut off before ``</think>``: with the Gen reward's ``None`` there, such a row has no
    scalar signal at all."""
    return [None if THINK in ids and END_THINK not in ids else 0.1 * len(ids) for ids in completion_ids]


def make_rewards(gen_path: str, stream_path: str) -> tuple[Any, Any]:
    from guard_reward import SafetyReward, TokenSafetyPenalty

    safety = SafetyReward(
        gen_path,
        mode="soft",
        refusal=True,
        harmful_column="harmful",
        name="safety",
        guard_kwargs={"device": "cpu", "dtype": "float32"},
    )
    # A 12-token window: an answer of 6 tokens or more does not fit, a per-sample failure (its dense
    # mask row is all False).
    penalty = TokenSafetyPenalty(
        stream_path,
        guard_kwargs={"device": "cpu", "dtype": "float32", "max_length": STREAM_WINDOW},
    )
    return safety, penalty


def dataset():
    from tests.tiny_policy import prompt_dataset

    return prompt_dataset(n_repeat=3)


def failure_counts(trainer: Any) -> dict[str, dict[str, int]]:
    """Each guard reward's failure counts so far, by reason (``reward.failures.counts``)."""
    funcs = [*trainer.reward_funcs, *getattr(trainer, "dense_rewards", [])]
    return {f.__name__: dict(f.failures.counts) for f in funcs if hasattr(f, "failures")}


#: GuardPPOTrainer's rollout tensors a record keeps when the batch has them.
_PPO_KEYS = ("ppo_rewards", "ppo_values", "ppo_returns", "ppo_value_mask")


class Recording:
    """Mixin: after each generation step, keep the rows, completion ids, advantages, the global scalar
    rewards, this process's new failures per reward and reason, and the completions-table columns of the
    global batch (``records``)."""

    records: list[dict[str, Any]]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._recorded_rewards = rewards.detach().cpu().clone()
        self._recorded_dense = getattr(self, "_pending_dense", None)  # the summed dense rewards and mask
        return rewards

    def _generate_and_score_completions(self, inputs):
        before = failure_counts(self)
        out = super()._generate_and_score_completions(inputs)
        after = failure_counts(self)
        failures = {
            name: {r: n - before.get(name, {}).get(r, 0) for r, n in counts.items()}
            for name, counts in after.items()
        }
        mask = out["completion_mask"].bool().cpu()
        ids = out["completion_ids"].cpu()
        n_global = self._recorded_rewards.shape[0]
        columns = {k: list(v)[-n_global:] for k, v in self._logs["extra"].items()}
        self.records = [
            *getattr(self, "records", []),
            {
                "rows": [{k: v for k, v in x.items()} for x in inputs],
                "completion_ids": [ids[i][mask[i]].tolist() for i in range(ids.shape[0])],
                "advantages": out["advantages"].detach().cpu().float().clone(),
                "mask": mask,
                "rewards_per_func": self._recorded_rewards,
                "columns": columns,
                "failures": failures,
                "tool_mask": out["tool_mask"].cpu().clone() if "tool_mask" in out else None,
                "dense": self._recorded_dense,
                **{k: out[k].detach().cpu().clone() for k in _PPO_KEYS if k in out},
            },
        ]
        return out


class Replaying(Recording):
    """Mixin: step ``k`` takes ``replay[k]``'s rows and completion ids instead of sampling."""

    replay: list[dict[str, Any]]

    def _generate_and_score_completions(self, inputs):
        step = len(getattr(self, "records", []))
        return super()._generate_and_score_completions(self.replay[step]["rows"])

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        step = len(getattr(self, "records", []))
        ids = self.replay[step]["completion_ids"]
        if len(ids) != len(prompt_ids):
            raise AssertionError(f"replay step {step} has {len(ids)} completions for {len(prompt_ids)} rows")
        return [list(row) for row in ids], None


def build_trainer(
    scenario: str,
    paths: dict[str, str],
    rewards: tuple[Any, Any],
    output_dir: Path,
    per_device: int,
    replay: list[dict[str, Any]] | None = None,
    value_model: Any = None,
) -> Any:
    """The scenario's trainer (recording; replaying ``replay`` when given)."""
    from trl import GRPOConfig

    from guard_reward.integrations.trl import DenseGRPOTrainer, GuardPPOConfig, GuardPPOTrainer

    known = (*SCENARIOS, TOOL_SCENARIO, PPO_TOOL_SCENARIO)
    if scenario not in known:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(known)}")
    args = common_args(output_dir, per_device, seed=known.index(scenario))  # each its own samples
    safety, penalty = rewards
    tok = policy_tokenizer()
    mixin = Recording if replay is None else Replaying
    if scenario in (TOOL_SCENARIO, PPO_TOOL_SCENARIO):
        return _tool_trainer(paths, args, output_dir, mixin, ppo=scenario == PPO_TOOL_SCENARIO)
    if scenario.startswith("grpo_"):
        cls = type("RecordedDenseGRPO", (mixin, DenseGRPOTrainer), {})
        trainer = cls(
            paths["policy"],
            [safety, length_reward],
            args=GRPOConfig(**args, beta=0.0),
            train_dataset=dataset(),
            processing_class=tok,
            dense_rewards=[penalty],
            dense_coef=0.5,
            dense_advantage=scenario.removeprefix("grpo_"),
        )
    else:
        cls = type("RecordedGuardPPO", (mixin, GuardPPOTrainer), {})
        trainer = cls(
            model=paths["policy"],
            reward_funcs=[safety, length_reward],
            dense_rewards=penalty,
            args=GuardPPOConfig(
                **args,
                beta=0.1,
                value_learning_rate=1e-3,
            ),
            train_dataset=dataset(),
            processing_class=tok,
            value_model=value_model,
        )
    if replay is not None:
        trainer.replay = replay
    return trainer


def _tool_trainer(
    paths: dict[str, str], args: dict[str, Any], output_dir: Path, mixin: type, ppo: bool = False
) -> Any:
    """GRPO (or GuardPPOTrainer with ``ppo``) with a real tool (:mod:`tests.integrations.tool_policy`): tool
    calls, results and final answers in the batch; the dense rewards are a Stream penalty on every policy token
    (``prob``) with a window wide enough for whole turns, and each assistant turn's own Gen value on its last
    token (``TurnSafetyReward``)."""
    from trl import GRPOConfig

    from guard_reward import SafetyReward, TokenSafetyPenalty, TurnSafetyReward
    from guard_reward.integrations.trl import DenseGRPOTrainer, GuardPPOConfig, GuardPPOTrainer
    from tests.integrations.tool_policy import lookup, sequence_bias, tool_dataset, tool_policy_tokenizer

    tok = tool_policy_tokenizer()
    args = {**args, "max_completion_length": 64, "generation_kwargs": {"sequence_bias": sequence_bias(tok)}}
    penalty = TokenSafetyPenalty(
        paths["stream"], shaping="prob", guard_kwargs={"device": "cpu", "dtype": "float32"}
    )
    turns = TurnSafetyReward(
        SafetyReward(
            paths["gen"], refusal=False, name="safety", guard_kwargs={"device": "cpu", "dtype": "float32"}
        )
    )
    common = dict(train_dataset=tool_dataset(n_repeat=3), processing_class=tok, tools=[lookup])
    if ppo:
        cls = type("RecordedToolPPO", (mixin, GuardPPOTrainer), {})
        return cls(
            model=paths["policy"],
            reward_funcs=[length_reward],
            dense_rewards=[penalty, turns],
            dense_coef=0.5,
            args=GuardPPOConfig(**args, beta=0.1, value_learning_rate=1e-3),
            **common,
        )
    cls = type("RecordedToolGRPO", (mixin, DenseGRPOTrainer), {})
    return cls(
        paths["policy"],
        [length_reward],
        args=GRPOConfig(**args, beta=0.0),
        dense_rewards=[penalty, turns],
        dense_coef=0.5,
        **common,
    )


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (names, dtypes, shapes and bytes): equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def merge_ranks(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The global batch of every step: the ranks' rows and completion ids in process order, and their
    advantages right-padded to the widest process and stacked ``(N, T)``."""
    merged = []
    for step_records in zip(*per_rank, strict=True):
        width = max(r["advantages"].shape[1] for r in step_records)
        adv = torch.cat([torch.nn.functional.pad(r["advantages"], (0, width - r["advantages"].shape[1]))
                         for r in step_records])  # fmt: skip
        mask = torch.cat([torch.nn.functional.pad(r["mask"], (0, width - r["mask"].shape[1]))
                          for r in step_records])  # fmt: skip
        merged.append(
            {
                "rows": [row for r in step_records for row in r["rows"]],
                "completion_ids": [ids for r in step_records for ids in r["completion_ids"]],
                "advantages": adv,
                "mask": mask,
                "widths": [r["advantages"].shape[1] for r in step_records],
                "rewards_per_func": step_records[0]["rewards_per_func"],
                "columns": step_records[0]["columns"],
                "failures": [r["failures"] for r in step_records],
            }
        )
    return merged
