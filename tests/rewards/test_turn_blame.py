"""Which tokens are blamed for an unsafe tool call in turn 2 of 3: per-token advantages before and after.

One fixed trajectory, laid out with Qwen's tokenizer as TRL's tool loop lays it out (:mod:`tests.rewards.
test_turn_level`): a safe ``search`` call, its result, an unsafe ``send_email`` call, its result, a safe answer.
``WordGuard`` judges the turns (the second is Unsafe). The advantages come from the library's own maths: GRPO's
group advantage against a sibling valued +1 (scalar ``SafetyReward``, ``turns="worst"``) or
``dense_advantages`` with :class:`~guard_reward.TurnSafetyReward`; PPO's GAE with a zero critic, gamma 1,
lambda 0.95, over the whole completion (before) or over the policy's tokens (after).

``python -m tests.rewards.test_turn_blame`` prints the table of ``docs/agents.md``.
"""

from __future__ import annotations

import pytest
import torch

from guard_reward import SafetyReward, TurnSafetyReward
from guard_reward.shaping import ppo_math
from guard_reward.shaping.dense import dense_advantages
from tests.rewards.test_agent_trajectories import HARMFUL, WordGuard
from tests.rewards.test_turn_level import IM_END, completion, token_layout

LAM = 0.95
#: GRPO's group advantage of a -1 trajectory beside a +1 sibling: (r - mean) / (std + 1e-4), std unbiased.
GROUP_ADVANTAGE = -1.0 / (2.0**0.5 + 1e-4)


def blame_rows(tok) -> tuple[list[tuple[str, list[float]]], list[str]]:
    """``(rows, columns)``: per setting, the mean advantage over each segment's tokens (turn, tool result, ...)."""
    ids, keep_list, spans = token_layout(tok)
    t = len(ids)
    keep = torch.tensor([keep_list], dtype=torch.bool)
    everything = torch.ones(1, t, dtype=torch.bool)
    segments = [(s, e, f"turn {k + 1}") for k, (s, e) in enumerate(spans)]
    segments += [(spans[k][1], spans[k + 1][0], f"tool result {k + 1}") for k in range(len(spans) - 1)]
    segments.sort()
    scalar = SafetyReward(WordGuard(), refusal=False, eos_token_ids=[IM_END])(
        [HARMFUL], [completion()], completion_ids=[ids]
    )
    assert scalar == [-1.0]

    def turn_dense(placement: str) -> torch.Tensor:
        reward = TurnSafetyReward(SafetyReward(WordGuard(), refusal=False, eos_token_ids=[IM_END]),
                                  placement=placement, policy_tokenizer=tok)  # fmt: skip
        return reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[keep_list]).rewards

    last, spread = turn_dense("last"), turn_dense("spread")
    zero = torch.zeros(1, t)
    score_only = ppo_math.token_rewards(torch.tensor(scalar), zero, everything, beta=0.0)
    score_on_policy = ppo_math.token_rewards(torch.tensor(scalar), zero, keep, beta=0.0)
    rows = {
        "GRPO, scalar (worst turn), before and after": torch.full((1, t), GROUP_ADVANTAGE) * keep,
        "GRPO + turn-level, `spread`, `dense_advantage=token`": dense_advantages(
            torch.zeros(1), spread, keep, coef=1.0, mode="token"
        ),
        "GRPO + turn-level, `last`, `dense_advantage=return_to_go`": dense_advantages(
            torch.zeros(1), last, keep, coef=1.0, mode="return_to_go"
        ),
        "PPO, scalar, GAE through tool tokens (before)": ppo_math.gae(score_only, zero, everything, 1.0, LAM)[
            0
        ],
        "PPO, scalar, GAE over policy tokens (after)": ppo_math.gae(score_on_policy, zero, keep, 1.0, LAM)[0],
        "PPO, turn-level `last`, GAE over policy tokens": ppo_math.gae(last, zero, keep, 1.0, LAM)[0],
    }
    table = [(name, [float(adv[0, s:e].mean()) for s, e, _ in segments]) for name, adv in rows.items()]
    columns = [f"{label} ({e - s} tok.)" for s, e, label in segments]
    return table, columns


def markdown(tok) -> str:
    rows, columns = blame_rows(tok)
    lines = ["| setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:+.3f}" for v in values) + " |" for name, values in rows]
    return "\n".join(lines)


def test_turn_level_rewards_blame_the_unsafe_turn(qwen_tok):
    table, columns = blame_rows(qwen_tok)
    rows = dict(table)
    turn = {c.split(" (")[0]: k for k, c in enumerate(columns)}
    t1, t2, t3 = turn["turn 1"], turn["turn 2"], turn["turn 3"]
    before = rows["GRPO, scalar (worst turn), before and after"]
    assert before[t1] < 0 and before[t2] == pytest.approx(before[t1]) == before[t3]  # every turn shares it
    spread = rows["GRPO + turn-level, `spread`, `dense_advantage=token`"]
    assert spread[t2] < 0 < spread[t1] and spread[t3] > 0  # only the unsafe turn is blamed
    ppo_before = rows["PPO, scalar, GAE through tool tokens (before)"]
    ppo_after = rows["PPO, scalar, GAE over policy tokens (after)"]
    assert abs(ppo_before[t1]) < abs(ppo_after[t1])  # the tool text no longer decays the first turn's credit
    turn_ppo = rows["PPO, turn-level `last`, GAE over policy tokens"]
    assert turn_ppo[t2] < 0 < turn_ppo[t3]
    tools = [k for k, c in enumerate(columns) if c.startswith("tool")]
    for name, values in rows.items():
        if "through tool tokens" not in name:
            assert all(values[k] == 0 for k in tools), name


if __name__ == "__main__":
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    print(markdown(qwen_tokenizer()))
