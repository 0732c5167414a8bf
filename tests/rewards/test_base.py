"""What the rewards share: the number check of their options, the counter, the Gen reward skeleton."""

from __future__ import annotations

import logging
import math
from collections import Counter

import pytest

from guard_reward import HybridSafetyReward, SafetyReward, TokenSafetyPenalty
from guard_reward.faults import SampleError
from guard_reward.rewards import GuardReward, metrics
from guard_reward.rewards.metrics import RewardCounter
from guard_reward.rewards.trajectory import Judged, decide
from guard_reward.shaping.scalar import FiniteNumberError, finite_number
from guard_reward.types import Verdict


@pytest.mark.parametrize("bad", ["1", True, math.nan, math.inf, -math.inf, [1.0]])
def test_finite_number_refuses_what_is_not_a_finite_number(bad):
    for optional in (False, True):
        with pytest.raises(FiniteNumberError, match="x must be a finite number") as info:
            finite_number("x", bad, optional=optional)
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert finite_number("x", 2) == 2.0 and isinstance(finite_number("x", 2), float)
    assert finite_number("x", None, optional=True) is None
    with pytest.raises(FiniteNumberError, match="got None"):
        finite_number("x", None)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: SafetyReward("unused", failure_value=v), "failure_value"),
        (lambda v: SafetyReward("unused", truncated_value=v), "truncated_value"),
        (lambda v: HybridSafetyReward("unused", len, unsafe_value=v), "unsafe_value"),
        (lambda v: TokenSafetyPenalty("unused", coef=v), "coef"),
        (lambda v: TokenSafetyPenalty("unused", clip=v), "clip"),
    ],
)
def test_reward_options_share_the_number_check(build, name):
    with pytest.raises(FiniteNumberError, match=name):
        build(math.nan)


class Log:
    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def log_metric(self, name, value):
        self.calls.append((name, value))


def test_reward_counter_counts_raises_and_logs_once(caplog):
    counter = RewardCounter("r")
    batch: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING):
        for k in range(3):
            counter.fail("unparseable", f"sample {k}: bad", batch)
        counter.fail("no_answer", "sample 3: cut off", batch, on_error="raise")  # a fact, never raised
    assert caplog.text.count("(unparseable)") == 1 and "sample 0: bad" in caplog.text
    with pytest.raises(SampleError, match="r: sample 4: worse"):
        counter.fail("context_too_long", "sample 4: worse", batch, on_error="raise")
    assert batch == {"unparseable": 3, "no_answer": 1} and counter.total() == 4
    log = Log()
    counter.emit(log.log_metric, "g", rates={"g/x": [1.0, 0.0]}, batch=batch, samples=5, elapsed=0.5, empty=2)
    assert counter.totals == {"calls": 1, "samples": 5, "failures": 4, "empty": 2}
    got = dict(log.calls)
    assert [v for k, v in log.calls if k == "g/x"] == [1.0, 0.0]
    assert (
        got["g/failures"] == 4.0
        and got["g/failures/unparseable"] == 3.0
        and got["g/failures/non_finite"] == 0
    )
    assert got["g/seconds"] == 0.5
    stream = RewardCounter("s", "stream_failures", "stream_seconds")
    stream.emit(log.log_metric, "g", rates={}, batch=Counter(), samples=1, elapsed=0.25)
    assert dict(log.calls)["g/stream_failures"] == 0.0 and dict(log.calls)["g/stream_seconds"] == 0.25


def _verdict(level):
    probs = {"Safe": float(level == "Safe"), "Controversial": 0.0, "Unsafe": float(level == "Unsafe")}
    return Verdict(level=level, probs=probs, moderation="response")


class _WordGuard:
    """A stand-in guard: a turn mentioning "bomb" is Unsafe, "???" cannot be parsed, anything else is Safe."""

    def moderate(self, conversations, decode, thinking, on_error):
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            out.append(
                Verdict.failed("unparseable", "no verdict lines")
                if "???" in text
                else _verdict("Unsafe" if "bomb" in text else "Safe")
            )
        return out


class _LevelReward(GuardReward):
    """The smallest reward on the base: Safe 1, Unsafe -1, plus a per-sample bonus from a dataset column."""

    def _contexts(self, samples, prompts, completions, call):
        return list(call["bonus"])

    def _outcome(self, verdict, context):
        if not verdict.ok:
            return None, verdict.reason, verdict.error
        return (1.0 if verdict.level == "Safe" else -1.0) + context, None, None

    def _rates(self, verdicts, contexts):
        return metrics.verdict_items(verdicts, prefix=self.metric_prefix)


def test_the_base_runs_truncate_judge_decide_metrics():
    reward = _LevelReward(
        _WordGuard(), name="levels", thinking="answer", failure_value=-9.0, empty_value=None,
        no_answer_value=None, on_error="skip", metric_prefix="g", guard_kwargs=None,
    )  # fmt: skip
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "buy", "arguments": {"item": "bomb"}}],
    }
    completions = [
        "fine",
        [call, {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "all good"}],
        "???",
    ]
    log = Log()
    values, verdicts = reward.evaluate(
        ["p"] * 3, completions, log_metric=log.log_metric, bonus=[0.5, 0.0, 0.0]
    )
    assert values == [1.5, -1.0, -9.0]  # the unsafe tool call is the worst turn; the unparseable sample fails
    assert [t.level for t in verdicts[1].turns] == ["Unsafe", "Safe"] and verdicts[1].tool_calls == (1, 0)
    assert reward.stats["calls"] == 1 and reward.failures.counts == {"unparseable": 1}
    got = dict(log.calls)
    assert got["g/failures"] == 1.0 and got["g/failures/unparseable"] == 1.0
    # per judged turn: "fine", then the two turns of the tool loop (the unparseable sample is not judged)
    assert [v for k, v in log.calls if k == "g/unsafe_turn_rate"] == [0.0, 1.0, 0.0]
    assert [v for k, v in log.calls if k == "g/tool_call_rate"] == [0.0, 1.0, 0.0]
    assert reward(["p"], ["bomb"], bonus=[0.0]) == [-1.0]


def test_decide_takes_one_outcome_per_judged_turn():
    judged = Judged([_verdict("Safe"), _verdict("Unsafe")], [0, 1])
    (value, reason, _), verdict = decide(judged, [(1.0, None, None), (-1.0, None, None)], None, "judge")
    assert value == -1.0 and reason is None and verdict.level == "Unsafe" and len(verdict.turns) == 2
    (value, _, _), _ = decide(judged, [(1.0, None, None), (-1.0, None, None)], True, 0.25)
    assert value == 0.25  # the unfinished last turn is valued truncated_value
    with pytest.raises(ValueError, match="1 outcomes for 2 judged turns"):
        decide(judged, [(1.0, None, None)], None, "judge")


def test_rewards_on_one_checkpoint_share_one_loaded_guard(tiny_gen_path):
    import gc

    from guard_reward.rewards import AttackReward, inputs
    from guard_reward.rewards.cost import SafetyCost

    kw = {"device": "cpu", "dtype": "float32"}
    path = str(tiny_gen_path)
    reward, cost = SafetyReward(path, guard_kwargs=kw), SafetyCost(path, guard_kwargs=kw)
    attack = AttackReward(path, guard_kwargs=dict(kw))
    guards = [reward.guard.get(), cost.guard.get(), attack.guard.get()]
    assert guards[0] is guards[1] is guards[2]  # one copy of the weights, not three
    other = SafetyReward(path, guard_kwargs={"device": "cpu", "dtype": "bfloat16"})
    assert other.guard.get() is not guards[0]  # other load settings: another copy
    assert other.guard.get().model.dtype != guards[0].model.dtype
    # a guard no reward holds any more is freed
    (key,) = [k for k, g in inputs._LOADED.items() if g is guards[0]]
    del reward, cost, attack, guards
    gc.collect()
    assert key not in inputs._LOADED
