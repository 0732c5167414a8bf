"""What GenGuard judges per thinking mode, without a model: the units each conversation is split into (empty
answers and cut-off reasoning get no answer unit) and each sample's verdict from its units' verdicts."""

import pytest

from guard_reward.faults import INVALID_INPUT, NO_ANSWER, SampleError
from guard_reward.guards.gen_units import checked_conversations, plan_units, sample_verdict
from guard_reward.types import Verdict

USER = {"role": "user", "content": "q"}


def reply(text: str) -> list[dict[str, str]]:
    return [USER, {"role": "assistant", "content": text}]


def verdict(safe: float, controversial: float, unsafe: float) -> Verdict:
    probs = {"Safe": safe, "Controversial": controversial, "Unsafe": unsafe}
    return Verdict(level=max(probs, key=probs.__getitem__), probs=probs, moderation="response")


CONVS = [[USER], reply("<think>\nwhy\n</think>\n\nok"), reply("plain")]


def test_units_per_thinking_mode():
    units, plans = plan_units(CONVS, "answer")
    assert plans == [{"answer": 0}, {"answer": 1}, {"answer": 2}]
    assert units == [[USER], reply("ok"), reply("plain")]
    units, plans = plan_units(CONVS, "separate")
    assert plans == [{"answer": 0}, {"reasoning": 1, "answer": 2}, {"answer": 3}]
    assert units == [[USER], reply("why"), reply("ok"), reply("plain")]
    units, plans = plan_units(CONVS, "whole")
    assert plans == [{"answer": 0}, {"answer": 1}, {"answer": 2}]
    assert units == CONVS


def test_empty_and_cut_off_answers_get_no_answer_unit():
    convs = [reply("<think>why</think>\n\n"), reply("<think>\nstill thinking"), reply("<think> </think>")]
    units, plans = plan_units(convs, "answer")
    assert units == [] and [p["status"] for p in plans] == ["empty", "no_answer", "empty"]
    units, plans = plan_units(convs, "separate")
    assert plans == [
        {"status": "empty", "reasoning": 0},
        {"status": "no_answer", "reasoning": 1},
        {"status": "empty"},  # a blank reasoning is not judged either
    ]
    assert units == [reply("why"), reply("still thinking")]
    units, _ = plan_units(convs, "whole")
    assert units == convs[:2]  # the reasoning is judged as the content stands


def test_a_malformed_sample_keeps_its_error():
    error = SampleError(INVALID_INPUT, "bad")
    units, plans = plan_units([error, [USER]], "answer")
    assert units == [[USER]] and plans == [{"error": error}, {"answer": 0}]
    v = sample_verdict(plans[0], {})
    assert v.level is None and v.reason == INVALID_INPUT and v.error == "bad"


def test_checked_conversations_follow_the_policy():
    with pytest.raises(TypeError, match="wrap a single conversation"):
        checked_conversations([USER], "raise")
    with pytest.raises(TypeError, match="expected a list of conversations"):
        checked_conversations("hello", "raise")
    with pytest.raises((TypeError, ValueError)):
        checked_conversations([[{"role": "user"}]], "raise")
    out = checked_conversations([[{"role": "user"}], [USER]], "skip")
    assert isinstance(out[0], SampleError) and out[0].reason == INVALID_INPUT and out[1] == [USER]


def test_sample_verdicts():
    answer = verdict(0.8, 0.1, 0.1)
    assert sample_verdict({"answer": 0}, {0: answer}) is answer
    both = sample_verdict({"reasoning": 0, "answer": 1}, {0: verdict(0.9, 0.05, 0.05), 1: answer})
    # both must be safe: P(Safe) = 0.9 * 0.8, P(Unsafe) = 1 - 0.95 * 0.9, Controversial the rest
    assert both.probs == pytest.approx({"Safe": 0.72, "Controversial": 0.135, "Unsafe": 0.145})
    assert both.level == "Safe" and set(both.parts) == {"reasoning", "answer"}
    reasoning = verdict(0.1, 0.1, 0.8)
    empty = sample_verdict({"status": "empty", "reasoning": 0}, {0: reasoning})
    assert empty.empty and empty.level is None and empty.parts == {"reasoning": reasoning}
    cut = sample_verdict({"status": "no_answer"}, {})
    assert cut.answer_missing and cut.reason == NO_ANSWER and cut.level is None
    failed = Verdict.failed("context_too_long", "too long", "response")
    out = sample_verdict({"reasoning": 0, "answer": 1}, {0: failed, 1: answer})
    assert out.level is None and out.reason == "context_too_long"
