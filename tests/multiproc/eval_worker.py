"""One process of the held-out evaluation scenario, launched by ``torchrun --nproc_per_node 2`` (gloo, CPU).

A 2-step GRPO run on the sandbox's tiny policy with ``SafetyEvalCallback`` evaluating every step on a held-out
set whose size does not divide by 2 (so the ranks' shards differ in size). Writes ``<out>/rank<r>.pt`` with
this rank's answered rows per evaluation and the metrics the callback logged.

Usage: ``torchrun --nproc_per_node 2 tests/multiproc/eval_worker.py SPEC.json`` with ``SPEC`` holding
``policy``, ``gen``, ``judge`` (checkpoint folders), ``prompts`` (``[prompt, harmful]`` pairs), ``train``
(the same for training) and ``out``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(spec_path: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from guard_reward.evaluation.answering import GenerationSettings
    from guard_reward.evaluation.prompts import EvalPrompt
    from guard_reward.guards.gen import GenGuard
    from guard_reward.integrations.trl.eval_callback import SafetyEvalCallback
    from guard_reward.rewards import SafetyReward

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype="float32")
    gen, judge = GenGuard.from_pretrained(spec["gen"]), GenGuard.from_pretrained(spec["judge"])
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "harmful": h} for p, h in spec["train"]]
    )
    args = GRPOConfig(
        output_dir=str(Path(spec["out"]) / "run"), max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=10, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
        disable_tqdm=True, seed=0, ddp_backend="gloo",
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=[SafetyReward(gen, name="guard_safety")], args=args,
                          train_dataset=data, processing_class=tokenizer)  # fmt: skip
    rows_per_eval: list[list[dict]] = []

    class Recording(SafetyEvalCallback):
        def evaluate(self, model, step):
            metrics = super().evaluate(model, step)
            rows_per_eval.append(list(self.last_rows))
            return metrics

    prompts = [
        EvalPrompt(i + 1, [{"role": "user", "content": p}], h) for i, (p, h) in enumerate(spec["prompts"])
    ]
    Recording(prompts, judge, train_guard=gen, eval_every=1,
              generation=GenerationSettings(samples=2, max_new_tokens=10)).attach(trainer)  # fmt: skip
    trainer.train()
    logged = [r for r in trainer.state.log_history if "eval_safety/answers" in r]
    torch.save({"rows": rows_per_eval, "logged": logged}, Path(spec["out"]) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
