"""The async form of a reward on a served guard: TRL sees it as async, and concurrent calls give the values of
the plain reward."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from guard_reward import RemoteGenGuard, SafetyReward
from guard_reward.rewards.async_reward import AsyncReward

pytestmark = pytest.mark.slow


def test_async_reward_runs_concurrently_with_the_plain_rewards_values(server):
    from trl.trainer.utils import is_async_callable

    reward = SafetyReward(RemoteGenGuard(server.url), mode="soft", refusal=False, name="safety")
    wrapped = pickle.loads(pickle.dumps(AsyncReward(reward)))  # TRL's async worker pickles rewards
    assert is_async_callable(wrapped) and wrapped.__name__ == "safety"
    batches = [
        ([f"Question {k}-{i}?" for i in range(4)], [f"Answer {k}-{i}." for i in range(4)]) for k in range(3)
    ]

    async def gather():
        return await asyncio.gather(*(wrapped(prompts=p, completions=c) for p, c in batches))

    got = asyncio.run(gather())
    want = [reward(prompts=p, completions=c) for p, c in batches]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-6) and None not in g
