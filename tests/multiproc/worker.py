"""One process of the 2-process tier, launched by ``torchrun --nproc_per_node 2`` (gloo, CPU).

Runs every scenario of :mod:`tests.multiproc.scenarios` in turn and writes, per scenario and process,
``<out>/<scenario>/rank<r>.pt``: the recorded steps, the critic's digest after construction and after training
(PPO), the digest of a critic passed in with different weights on each process (after construction), and on
process 0 the trainer's ``log_history`` and the digest of the critic it saved.

Usage: ``torchrun --nproc_per_node 2 tests/multiproc/worker.py SPEC.json`` with ``SPEC`` holding ``policy``,
``gen``, ``stream`` (checkpoint folders), ``out`` (a folder) and ``scenarios`` (names).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests` is importable


def critic_from_rank_seed(policy: str):
    """A critic whose head is drawn from a per-process seed: the trainer must make it the same everywhere."""
    from guard_reward.integrations.trl.value import load_value_model

    torch.manual_seed(1000 + int(os.environ["RANK"]))
    return load_value_model(policy)


def main(spec_path: str) -> None:
    from tests.multiproc import scenarios

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    rewards = scenarios.make_rewards(spec["gen"], spec["stream"])
    for name in spec["scenarios"]:
        start, wall = time.process_time(), time.perf_counter()
        out = Path(spec["out"]) / name
        if name == "self_play":  # its own loop of two trainers (tests/multiproc/self_play_scenario.py)
            from tests.multiproc.self_play_scenario import run_scenario

            out.mkdir(parents=True, exist_ok=True)
            result = run_scenario(spec, out)
            result["wall_seconds"] = time.perf_counter() - wall
            torch.save(result, out / f"rank{rank}.pt")
            torch.distributed.barrier()
            continue
        trainer = scenarios.build_trainer(name, spec, rewards, out / "run", scenarios.PER_DEVICE)
        result: dict = {}
        if name == "ppo":
            result["critic_init"] = scenarios.state_digest(trainer.value_model)
        trainer.train()
        result["records"] = trainer.records
        result["log_history"] = trainer.state.log_history
        if name == "ppo":
            result["critic_trained"] = scenarios.state_digest(trainer.value_model)
            trainer.save_model(str(out / "saved"))
            trainer.accelerator.wait_for_everyone()
            if rank == 0:
                from transformers import AutoModelForTokenClassification

                saved = AutoModelForTokenClassification.from_pretrained(out / "saved" / "value_model")
                result["critic_saved"] = scenarios.state_digest(saved)
            passed_in = scenarios.build_trainer(
                name, spec, rewards, out / "passed_in", scenarios.PER_DEVICE,
                value_model=critic_from_rank_seed(spec["policy"]),
            )  # fmt: skip
            result["critic_passed_in"] = scenarios.state_digest(passed_in.value_model)
            del passed_in
        result["cpu_seconds"] = time.process_time() - start
        result["wall_seconds"] = time.perf_counter() - wall
        torch.save(result, out / f"rank{rank}.pt")
        trainer.accelerator.wait_for_everyone()
        del trainer
    Path(spec["out"], f"done{rank}").write_text("ok")


if __name__ == "__main__":
    main(sys.argv[1])
