"""Run by ``torchrun --nproc_per_node 2`` from test_constraint_trainers.py: a constrained GRPO run on 2 CPU ranks
(gloo). Each rank writes, per step, its λ and the costs the update saw to ``<out>/rank<k>.json``.

The per-sample cost depends on the rank (rank 0 judges everything 1, rank 1 mostly 0), so a rank that updated λ
from its own costs only would drift from the other, and a window of ``cost_window`` (3) samples over the gathered
batch would see only rank 1's: λ would fall while the mean cost (0.625) is far above the threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(out: str) -> None:
    from trl import GRPOConfig

    from guard_reward.integrations.trl.constraint import ConstrainedGRPOTrainer
    from guard_reward.shaping.constraint import Constraint, ConstraintConfig
    from tests.tiny_policy import prompt_dataset, tiny_policy

    torch.set_num_threads(1)
    model, tok = tiny_policy()
    seen: list[list[float]] = []

    class Recording(ConstrainedGRPOTrainer):
        def _constraint_step(self, all_costs, mode):
            seen.append(all_costs.tolist())
            return super()._constraint_step(all_costs, mode)

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c[-1]["content"])) / 10.0 for c in completions]

    def rank_cost(prompts, completions, **kwargs):
        rank = torch.distributed.get_rank()
        return [1.0 if rank == 0 else float(i == 0) for i in range(len(completions))]

    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=4, num_generations=2, max_completion_length=6, max_steps=3,
        learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, bf16=False, seed=0,
        save_strategy="no", activation_checkpointing=False, disable_tqdm=True,
    )  # fmt: skip
    constraint = Constraint(
        rank_cost, ConstraintConfig(threshold=0.2, lambda_init=1.0, lambda_lr=0.5, cost_window=3)
    )
    trainer = Recording(
        model, [length_reward], args=args, train_dataset=prompt_dataset(2), processing_class=tok,
        constraint=constraint,
    )  # fmt: skip
    trainer.train()
    lam = [row["constraint/lambda"] for row in trainer.state.log_history if "constraint/lambda" in row]
    rank = torch.distributed.get_rank()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"lambda": lam, "costs": seen}))


if __name__ == "__main__":
    main(sys.argv[1])
