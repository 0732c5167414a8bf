"""One rank of a 2-process CPU GRPO run whose guard rewards all point at one served guard.

Run under ``torchrun --nproc_per_node 2``: ``python -m tests.serving.grpo_ranks URL OUT_DIR``. Each rank writes
``rank<k>.json`` with its remote guards' request counters and the trainer's last global step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def length_reward(prompts, completions, **kwargs):
    return [float(len(c[-1]["content"])) / 10.0 for c in completions]


def main(url: str, out: Path) -> None:
    from trl import GRPOConfig

    from guard_reward import RemoteGenGuard, RemoteStreamGuard, SafetyReward, TokenSafetyPenalty
    from guard_reward.integrations.trl import DenseGRPOTrainer
    from tests.tiny_policy import prompt_dataset, tiny_policy

    rank = int(os.environ["RANK"])
    model, tok = tiny_policy()
    gen = RemoteGenGuard(url)
    stream = RemoteStreamGuard(url)
    # a guard that never answers in time: its samples get no signal, counted, and the step still completes
    slow = RemoteGenGuard(url, timeout=0.001, retries=1, backoff=0.01)
    args = GRPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        save_strategy="no",
    )
    trainer = DenseGRPOTrainer(
        model,
        [
            SafetyReward(gen, mode="soft", refusal=False, name="safety"),
            SafetyReward(slow, mode="soft", refusal=False, name="safety_slow"),
            length_reward,
        ],
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tok,
        dense_rewards=[TokenSafetyPenalty(stream)],
        dense_coef=1.0,
    )
    trainer.train()
    result = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "gen_requests": gen.stats["requests"],
        "stream_requests": stream.stats["requests"],
        "slow_unavailable": slow.stats["guard_unavailable"],
        "logged": sorted({k for row in trainer.state.log_history for k in row}),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
