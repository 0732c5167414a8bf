"""Two real processes (``torchrun --nproc_per_node 2``, gloo, CPU) against one: DenseGRPOTrainer in every
``dense_advantage`` mode and GuardPPOTrainer, with completion widths that differ between the processes, the
Gen guard's refusal path on and thinking-model completions (see :mod:`tests.multiproc.scenarios`).

One launch runs all scenarios (:mod:`tests.multiproc.worker`); each test then checks one property of it.
The 1-process side replays the recorded global batches in this process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.multiproc import scenarios as sc

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 600
#: Advantages of 1 and 2 processes agree to float32 rounding: the guards run on batches of another
#: composition (3 rows per process instead of 6), which changes their outputs in the last bits.
ADVANTAGE_ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, trained_gen_path) -> dict[str, str]:
    from guard_reward.tiny.stream import build_tiny_stream
    from tests.integrations.ppo_tiny import build_tiny_policy

    root = tmp_path_factory.mktemp("multiproc")
    return {
        "policy": str(build_tiny_policy(root / "policy")),
        "stream": str(build_tiny_stream(root / "stream", seed=3)),
        "gen": str(trained_gen_path),
        "root": str(root),
    }


@pytest.fixture(scope="module")
def two_processes(checkpoints) -> dict[str, list[dict]]:
    """Launch the worker on 2 processes once; ``{scenario: [rank 0 result, rank 1 result]}``."""
    out = Path(checkpoints["root"]) / "two_processes"
    spec = {
        **checkpoints,
        "out": str(out),
        "scenarios": [*sc.SCENARIOS, sc.TOOL_SCENARIO, sc.PPO_TOOL_SCENARIO],
    }
    spec_path = Path(checkpoints["root"]) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "multiproc" / "worker.py"), str(spec_path)]  # fmt: skip
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or "")[-3000:] + (exc.stderr or "")[-3000:]
        pytest.fail(f"2-process run did not finish in {LAUNCH_TIMEOUT_S}s:\n{tail}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        pytest.fail(
            f"2-process run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print(f"\n2-process launch: {time.perf_counter() - start:.1f}s wall, {cpu:.1f}s CPU (both processes)")
    results = {
        name: [torch.load(out / name / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
        for name in sc.SCENARIOS
    }
    per_scenario = {name: round(sum(r["cpu_seconds"] for r in rs), 1) for name, rs in results.items()}
    print(f"CPU seconds per scenario (both processes): {per_scenario}")
    return results


@pytest.fixture(scope="module")
def rewards(checkpoints):
    """The replays' guard rewards, shared so each guard is loaded once in this process."""
    return sc.make_rewards(checkpoints["gen"], checkpoints["stream"])


def _merged(result: list[dict]) -> list[dict]:
    return sc.merge_ranks([r["records"] for r in result])


def _steps(result: list[dict]) -> list[dict]:
    """Rank 0's logged training rows, one per step."""
    return [row for row in result[0]["log_history"] if "loss" in row]


def test_training_completes_with_widths_differing_between_processes(two_processes):
    differing, steps, completions = 0, 0, Counter()
    for name, result in two_processes.items():
        for rank in result:
            assert len(rank["records"]) == sc.STEPS, f"{name}: {len(rank['records'])} of {sc.STEPS} steps"
        assert len(_steps(result)) == sc.STEPS, name
        for step in _merged(result):
            steps += 1
            differing += len(set(step["widths"])) > 1
            for ids in step["completion_ids"]:
                opened, closed = sc.THINK in ids, sc.END_THINK in ids
                completions[
                    "cut_off_reasoning" if opened and not closed else "reasoning" if opened else "plain"
                ] += 1
                completions["padded_row_id"] += sc.PADDED_ROW_ID in ids
            refusals = [r for r in step["columns"].get("guard_refusal", []) if r is not None]
            completions["refusal_judged"] += len(refusals)
    print(
        f"\nwidths differ between the processes on {differing} of {steps} steps; completions: {dict(completions)}"
    )
    assert differing > steps / 2, (
        "the policy must give the processes different completion widths on most steps"
    )
    assert completions["cut_off_reasoning"] and completions["reasoning"] and completions["plain"]
    assert completions["refusal_judged"], "the Gen guard's refusal path ran"


@pytest.mark.parametrize("scenario", sc.SCENARIOS)
def test_per_token_advantages_equal_one_process(two_processes, checkpoints, rewards, tmp_path, scenario):
    start = time.process_time()
    merged = _merged(two_processes[scenario])
    trainer = sc.build_trainer(scenario, checkpoints, rewards, tmp_path, 2 * sc.PER_DEVICE, replay=merged)
    if scenario == "ppo":  # the critic's head is drawn from the seed alone, not from the process
        assert sc.state_digest(trainer.value_model) == two_processes[scenario][0]["critic_init"]
    trainer.train()
    deltas = []
    for k, (two, one) in enumerate(zip(merged, trainer.records, strict=True)):
        assert one["advantages"].shape == two["advantages"].shape, k
        assert torch.equal(one["mask"], two["mask"]), k
        assert torch.isfinite(two["advantages"]).all()
        assert (two["advantages"][~two["mask"]] == 0).all(), "padding gets no advantage"
        unscorable = torch.isnan(two["rewards_per_func"]).all(dim=1)
        assert (two["advantages"][unscorable] == 0).all(), "a row without scalar signal gets no advantage"
        deltas.append(float((one["advantages"] - two["advantages"]).abs().max()))
    n_unscorable = sum(int(torch.isnan(two["rewards_per_func"]).all(dim=1).sum()) for two in merged)
    print(f"\n{scenario}: max |Δ advantage| per step, 1 vs 2 processes: {[f'{d:.2e}' for d in deltas]}; "
          f"{n_unscorable} rows without scalar signal; replay {time.process_time() - start:.1f}s CPU")  # fmt: skip
    assert max(deltas) <= ADVANTAGE_ATOL, deltas
    # not vacuous: the dense term moved advantages within rows
    assert any(two["advantages"][i][two["mask"][i]].unique().numel() > 1
               for two in merged for i in range(two["mask"].shape[0]))  # fmt: skip


def test_critic_is_one_replica_on_every_process_and_saved(two_processes):
    rank0, rank1 = two_processes["ppo"]
    assert rank0["critic_init"] == rank1["critic_init"], "critic differs between processes after construction"
    assert rank0["critic_trained"] == rank1["critic_trained"], (
        "critic differs between processes after training"
    )
    assert rank0["critic_trained"] != rank0["critic_init"], "training moved the critic"
    assert rank0["critic_saved"] == rank0["critic_trained"], "the saved critic is the trained replica"
    # a critic passed in with different weights per process is made one replica too (rank 0's)
    assert rank0["critic_passed_in"] == rank1["critic_passed_in"]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _global_rates(step: dict) -> dict[str, float | None]:
    """The rates over the global batch, from the per-sample columns of the completions table and the rows."""
    columns, g = step["columns"], sc.PREFIX
    t = g  # both rewards log under one prefix, as by default
    levels, refusals = columns[f"{g}_level"], columns[f"{g}_refusal"]
    harmful = [bool(row["harmful"]) for row in step["rows"]]
    judged = [i for i, level in enumerate(levels) if level is not None]
    flags = [f for f in columns[f"{t}_stream_flag"] if f is not None]
    out = {
        f"{g}/{key}_rate": _mean([float(levels[i] == level) for i in judged])
        for key, level in (("safe", "Safe"), ("unsafe", "Unsafe"), ("controversial", "Controversial"))
    }
    for key, want in (("benign", False), ("harmful", True)):
        out[f"{g}/refusal_rate_{key}"] = _mean(
            [float(bool(refusals[i])) for i in judged if refusals[i] is not None and harmful[i] == want]
        )
    out[f"{t}/first_violation_pos"] = _mean([float(f) for f in flags])
    return out


def _failure_totals(step: dict, reward: str) -> Counter[str]:
    """One reward's new failures in this step on both processes, by reason."""
    totals: Counter[str] = Counter()
    for rank_failures in step["failures"]:
        totals.update(rank_failures.get(reward, {}))
    return totals


def test_logged_rates_are_global_batch_rates_and_failures_are_totals(two_processes):
    exercised: dict[str, Counter[str]] = {"safety": Counter(), "guard_tokens": Counter()}
    for name, result in two_processes.items():
        for k, (step, logged) in enumerate(zip(_merged(result), _steps(result), strict=True)):
            where = f"{name} step {k}"
            for key, expected in _global_rates(step).items():
                if expected is None:
                    assert key not in logged, f"{where}: {key} logged without a denominator"
                else:
                    assert logged[key] == pytest.approx(expected, abs=1e-6), f"{where}: {key}"
            for reward, failures in sc.FAILURE_KEYS.items():
                totals = _failure_totals(step, reward)
                exercised[reward].update(totals)
                assert logged[failures] == pytest.approx(sum(totals.values())), where
                for key, value in logged.items():
                    if key.startswith(f"{failures}/"):
                        reason = key.removeprefix(f"{failures}/")
                        assert value == pytest.approx(totals[reason]), f"{where}: {key}"
            unscorable = torch.isnan(step["rewards_per_func"]).all(dim=1).float().mean().item()
            share = "ppo/unscorable_frac" if name == "ppo" else "dense/no_signal_frac"
            if name == "ppo":
                assert logged[share] == pytest.approx(unscorable), where
            else:  # rows without a scalar reward get no dense term either (and rows the guard failed on)
                assert logged[share] >= unscorable - 1e-6, where
    print(
        f"\nfailures exercised (all scenarios, both processes): { ({k: dict(v) for k, v in exercised.items()}) }"
    )
    # cut-off reasoning blocks: no answer to judge, counted by both guards; answers too long for the Stream
    # guard's window
    assert exercised["safety"]["no_answer"] and exercised["guard_tokens"]["no_answer"]
    assert exercised["guard_tokens"]["context_too_long"]


def test_tool_calling_run_completes_and_tool_tokens_carry_no_dense_penalty(two_processes, checkpoints):
    """GRPO through TRL's tool loop on 2 processes: every step trains; the dense reward's mask leaves out the
    tool results and puts no penalty on them; the policy's own tokens are penalised."""
    out = Path(checkpoints["root"]) / "two_processes" / sc.TOOL_SCENARIO
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    called = 0
    for rank in ranks:
        assert len(rank["records"]) == sc.STEPS
        for step in rank["records"]:
            keep = step["tool_mask"].bool()
            rewards, mask = step["dense"]
            width = rewards.shape[1]
            keep = keep[:, :width]
            called += int((~keep).any(dim=1).sum())
            assert not bool((mask & ~keep).any()), "a tool token is inside the dense mask"
            assert torch.count_nonzero(rewards[~keep]) == 0
            assert bool((rewards[mask] < 0).any())
    assert len(_steps(ranks)) == sc.STEPS
    assert called, "no completion called the tool"
    seconds = [round(r["wall_seconds"], 1) for r in ranks]
    cpu = round(sum(r["cpu_seconds"] for r in ranks), 1)
    print(
        f"\n{sc.TOOL_SCENARIO}: {called} completions called the tool; {seconds}s wall per process, {cpu}s CPU"
    )


def _policy_returns_loop(rewards, values, keep, gamma=1.0, lam=0.95):
    """GAE returns over a row's policy tokens only (tool tokens skipped), as a plain loop: ``(T,)`` lists."""
    steps = [j for j in range(len(keep)) if keep[j]]
    out = [0.0] * len(keep)
    running, next_v = 0.0, 0.0
    for j in reversed(steps):
        running = rewards[j] + gamma * next_v - values[j] + gamma * lam * running
        next_v = values[j]
        out[j] = running + values[j]
    return out


def test_ppo_through_the_tool_loop_treats_tool_results_as_the_environment(two_processes, checkpoints):
    """GuardPPOTrainer with TRL's ``tools=`` on 2 processes: every step trains; tool tokens get no reward (no KL,
    no dense penalty), no value target and no advantage, and the returns are GAE over the policy's tokens
    alone (the running advantage and the next value carried across each tool result)."""
    out = Path(checkpoints["root"]) / "two_processes" / sc.PPO_TOOL_SCENARIO
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    called = 0
    for rank in ranks:
        assert len(rank["records"]) == sc.STEPS
        for step in rank["records"]:
            width = step["ppo_rewards"].shape[1]
            keep = step["tool_mask"].bool()[:, :width] & step["mask"]
            tool = step["mask"] & ~keep
            called += int(tool.any(dim=1).sum())
            for key in ("ppo_rewards", "ppo_returns", "advantages"):
                assert torch.count_nonzero(step[key][tool]) == 0, key
            assert not bool((step["ppo_value_mask"] & tool).any())
            for i in range(keep.shape[0]):
                if not bool(step["ppo_value_mask"][i].any()):
                    continue  # an unscorable row: no critic target
                want = _policy_returns_loop(
                    step["ppo_rewards"][i].tolist(), step["ppo_values"][i].tolist(), keep[i].tolist()
                )
                torch.testing.assert_close(step["ppo_returns"][i], torch.tensor(want), rtol=1e-5, atol=1e-5)
    assert len(_steps(ranks)) == sc.STEPS
    assert called, "no completion called the tool"
    seconds = [round(r["wall_seconds"], 1) for r in ranks]
    cpu = round(sum(r["cpu_seconds"] for r in ranks), 1)
    print(
        f"\n{sc.PPO_TOOL_SCENARIO}: {called} completions called the tool; {seconds}s wall per process, {cpu}s CPU"
    )


def test_turn_level_rewards_are_placed_in_both_tool_trainers(two_processes, checkpoints):
    """``TurnSafetyReward`` next to the Stream penalty in GRPO and PPO through the tool loop: its turns are found
    in TRL's ids and tool mask (a placed rate above 0, every failure counted by reason), and it never puts a
    value on a tool token (checked with the summed dense rewards above)."""
    for scenario in (sc.TOOL_SCENARIO, sc.PPO_TOOL_SCENARIO):
        rank0 = torch.load(
            Path(checkpoints["root"]) / "two_processes" / scenario / "rank0.pt", weights_only=False
        )
        steps = [row for row in rank0["log_history"] if "loss" in row]
        placed = [row["guard/turn_placed_rate"] for row in steps if "guard/turn_placed_rate" in row]
        assert len(placed) == sc.STEPS and max(placed) > 0, (scenario, placed)
        unplaced = {k: v for row in steps for k, v in row.items() if k.startswith("guard/turn_unplaced/")}
        assert unplaced, scenario
        print(f"\n{scenario}: turn-level placed rate per step {placed}; unplaced totals {unplaced}")
