"""``/get_reward``'s reward run on the event loop (``serving.prefetch``): the same values, guard calls and counts
as the reward called directly on the guard, and concurrent requests never see each other's verdicts."""

from __future__ import annotations

import asyncio

from guard_reward.serving.get_reward import GuardRewardFunction
from guard_reward.serving.prefetch import PrefetchedGen, run_reward
from guard_reward.types import Verdict
from guard_reward.wire import verdict_to_json

#: refusal handling makes the reward ask the guard twice: the responses (decoded), then the prompts
CONFIG = {"mode": "soft", "refusal": True}


class FakeGen:
    """A Gen guard stand-in: ``bomb`` is unsafe, ``sorry`` a refusal; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def moderate(self, conversations, decode=False, thinking=None, on_error="raise"):
        self.calls.append((len(conversations), decode))
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            unsafe = 0.9 if "bomb" in text else 0.1
            level = "Unsafe" if unsafe > 0.5 else "Safe"
            role = "response" if conv[-1]["role"] == "assistant" else "prompt"
            refusal = ("sorry" in text) if role == "response" and decode else None
            out.append(
                Verdict(
                    level, {"Safe": 1 - unsafe, "Controversial": 0.0, "Unsafe": unsafe}, role, refusal=refusal
                )
            )
        return out


def sample(question: str, answer: str) -> tuple[str, str]:
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return prompt + answer + "<|im_end|>", prompt


QUERIES, PROMPTS = zip(
    sample("How do I build a bomb?", "Sorry, I can't help with that."),
    sample("How do I build a bomb?", "Take a bomb casing and fill it."),
    sample("How do I bake bread?", "Mix flour, water and yeast."),
    ("not a sample", "no prompt"),  # the query does not start with its prompt: a bad item
    strict=True,
)


def served(fake: FakeGen, guard: PrefetchedGen, reward: GuardRewardFunction, queries, prompts):
    async def fetch(call):
        await asyncio.sleep(0.01)  # a batch's wait: other requests run meanwhile
        verdicts = fake.moderate(call["conversations"], decode=call["decode"], thinking=call["thinking"])
        return [verdict_to_json(v) for v in verdicts]

    return run_reward(lambda: reward(queries, prompts), guard, fetch)


def test_a_reward_run_on_fetched_verdicts_equals_the_reward_on_the_guard():
    direct_guard = FakeGen()
    direct = GuardRewardFunction(direct_guard, CONFIG)
    want = direct(list(QUERIES), list(PROMPTS))

    fake, guard = FakeGen(), PrefetchedGen()
    reward = GuardRewardFunction(guard, CONFIG)
    got = asyncio.run(served(fake, guard, reward, list(QUERIES), list(PROMPTS)))

    assert got == want
    assert want["rewards"][2] > want["rewards"][1]  # the values say something: bread beats bomb-making
    assert want["extra_logs"]["guard_failed"] == [0.0, 0.0, 0.0, 1.0]
    assert fake.calls == direct_guard.calls == [(3, True), (2, False)]  # responses, then the unique prompts
    assert reward.reward.stats == direct.reward.stats  # the reruns counted nothing twice
    assert reward.reward.stats["samples"] == 3


def test_concurrent_requests_on_one_reward_get_their_own_values():
    fake, guard = FakeGen(), PrefetchedGen()
    reward = GuardRewardFunction(guard, CONFIG)
    want = [GuardRewardFunction(FakeGen(), CONFIG)([q], [p]) for q, p in zip(QUERIES, PROMPTS, strict=True)]

    async def go():
        runs = [served(fake, guard, reward, [q], [p]) for q, p in zip(QUERIES, PROMPTS, strict=True)]
        return await asyncio.gather(*runs)

    assert asyncio.run(go()) == want
