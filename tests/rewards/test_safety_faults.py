"""The fault policy of the scalar rewards on a real tiny Qwen3Guard-Gen stand-in: per-sample failures become a
counted ``None``, empty answers are valued as a refusal of their prompt, cut-off reasoning is never judged as an
answer. Expected values come from the guard's own verdicts (``gen.moderate``), never from the reward."""

from __future__ import annotations

import logging

import pytest
import torch

from guard_reward import HybridSafetyReward, SafetyReward
from guard_reward.faults import SampleError
from guard_reward.guards.common import ContextTooLongError
from guard_reward.guards.gen import GenGuard
from guard_reward.shaping.scalar import ScalarShaping, scalar_reward

BENIGN = [{"role": "user", "content": "How do I bake sourdough bread at home?"}]
HARMFUL = [{"role": "user", "content": "How do I pick a lock?"}]
ANSWER = "Mix flour, water and starter, let it rise overnight and bake it."
CUT_OFF = "<think>\nThe user asks about bread. First I will"


class Log:
    def __init__(self):
        self.metrics: dict[str, list[float]] = {}

    def log_metric(self, name, value):
        self.metrics.setdefault(name, []).append(value)


def msg(text):
    return [{"role": "assistant", "content": text}]


@pytest.fixture(scope="module")
def gen(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path)


def test_empty_answers_are_valued_as_a_refusal_of_their_prompt_without_asking_the_guard(gen):
    reward = SafetyReward(gen, refusal=False, decode=False, harmful_column="harmful", unsafe_value=-1.0)
    prompts = [BENIGN, HARMFUL, BENIGN, HARMFUL, BENIGN]
    texts = ["", "  \n", "<think>\nJust thinking.\n</think>\n\n", "<|im_end|>", ANSWER]
    harmful = [False, True, False, True, False]
    log = Log()
    before = gen.stats["requested"], gen.stats["judged"]
    values = reward(prompts, [msg(t) for t in texts], harmful=harmful, log_metric=log.log_metric)
    assert gen.stats["requested"] - before[0] == 5
    # only the reasoning block and the real answer reach the guard (separate: reasoning judged as reasoning)
    assert gen.stats["judged"] - before[1] <= 2
    (answer,) = gen.moderate([[*BENIGN, {"role": "assistant", "content": ANSWER}]], thinking="separate")
    (reasoning_only,) = gen.moderate(
        [[*BENIGN, {"role": "assistant", "content": texts[2]}]], thinking="separate"
    )
    assert reasoning_only.empty and reasoning_only.level is None and "reasoning" in reasoning_only.parts
    shaping = ScalarShaping(refusal=False)
    expected_reasoning = 0.0  # the over-refusal value, unless the reasoning itself is unsafe
    if reasoning_only.parts["reasoning"].level != "Safe":
        expected_reasoning = min(0.0, scalar_reward(reasoning_only.parts["reasoning"], shaping))
    assert values == pytest.approx([0.0, 1.0, expected_reasoning, 1.0, scalar_reward(answer, shaping)])
    assert log.metrics["guard/empty_rate"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert log.metrics["guard/failures"] == [0.0]
    fixed = SafetyReward(gen, refusal=False, decode=False, empty_value=-0.25, thinking="answer")
    assert fixed([BENIGN, HARMFUL], [msg(""), msg(" ")]) == [-0.25, -0.25]


def test_empty_answer_asks_the_guard_for_the_prompt_harm_when_there_is_no_column(gen):
    reward = SafetyReward(
        gen, refusal=False, decode=False, benign_refusal_value=-0.5, harmful_refusal_value=0.5
    )
    values = reward([BENIGN, HARMFUL], [msg(""), msg("")])
    harm = [v.level != "Safe" for v in gen.moderate([BENIGN, HARMFUL])]
    assert values == pytest.approx([0.5 if h else -0.5 for h in harm])


def test_cut_off_reasoning_is_never_judged_as_an_answer(gen, caplog):
    separate = gen.moderate([[*BENIGN, {"role": "assistant", "content": CUT_OFF}]], thinking="separate")[0]
    assert separate.level is None and separate.answer_missing and separate.reason == "no_answer"
    reasoning = gen.moderate(
        [[*BENIGN, {"role": "assistant", "content": "The user asks about bread. First I will"}]]
    )[0]
    assert separate.parts["reasoning"].probs == pytest.approx(reasoning.probs, abs=1e-5), (
        "judged as reasoning"
    )
    only_answer = gen.moderate([[*BENIGN, {"role": "assistant", "content": CUT_OFF}]], thinking="answer")[0]
    assert only_answer.answer_missing and only_answer.parts is None

    log = Log()
    reward = SafetyReward(gen, refusal=False, decode=False)
    with caplog.at_level(logging.WARNING):
        values = reward([BENIGN, BENIGN], [msg(CUT_OFF), msg(ANSWER)], log_metric=log.log_metric)
    assert values[0] is None and values[1] is not None
    assert log.metrics["guard/failures/no_answer"] == [1.0] and log.metrics["guard/failures"] == [1.0]
    assert "no_answer" in caplog.text
    valued = SafetyReward(gen, refusal=False, decode=False, no_answer_value=-0.1, on_error="raise")
    got = valued([BENIGN], [msg(CUT_OFF)])[0]  # never raised: a fact about the completion
    cap = scalar_reward(separate.parts["reasoning"], ScalarShaping(refusal=False))
    assert got == pytest.approx(-0.1 if separate.parts["reasoning"].level == "Safe" else min(-0.1, cap))


def test_a_sample_too_long_for_the_guard_gets_a_counted_none(tiny_gen_path):
    gen = GenGuard.from_pretrained(tiny_gen_path, max_length=600)
    long = "word " * 600
    with pytest.raises(ContextTooLongError):
        gen.moderate([[*BENIGN, {"role": "assistant", "content": long}]])
    verdicts = gen.moderate(
        [[*BENIGN, {"role": "assistant", "content": t}] for t in (long, ANSWER)], on_error="skip"
    )
    assert verdicts[0].reason == "context_too_long" and verdicts[1].ok
    log = Log()
    reward = SafetyReward(gen, refusal=False, decode=False)
    values = reward([BENIGN, BENIGN], [msg(long), msg(ANSWER)], log_metric=log.log_metric)
    assert values[0] is None
    assert values[1] == pytest.approx(scalar_reward(verdicts[1], ScalarShaping(refusal=False)))
    assert log.metrics["guard/failures/context_too_long"] == [1.0]
    assert log.metrics["guard/safe_rate"] == [float(verdicts[1].level == "Safe")], "rates skip the failure"
    with pytest.raises(SampleError, match="context window") as info:
        SafetyReward(gen, refusal=False, decode=False, on_error="raise")([BENIGN], [msg(long)])
    assert info.value.reason == "context_too_long"
    with pytest.raises(ValueError, match="on_error='never'"):
        SafetyReward(gen, on_error="never")


def test_non_finite_guard_output_is_a_counted_failure(tiny_gen_path):
    gen = GenGuard.from_pretrained(tiny_gen_path)
    with torch.no_grad():
        gen.model.lm_head.weight[:] = float("nan")
    with pytest.raises(SampleError, match="NaN"):
        gen.moderate([[*BENIGN, {"role": "assistant", "content": ANSWER}]])
    log = Log()
    values = SafetyReward(gen, refusal=False, decode=False)(
        [BENIGN] * 2, [msg(ANSWER)] * 2, log_metric=log.log_metric
    )
    assert values == [None, None] and log.metrics["guard/failures/non_finite"] == [2.0]


def len_reward(prompts, completions, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]


def test_hybrid_values_an_empty_answer_as_a_refusal(gen):
    reward = HybridSafetyReward(gen, len_reward, refusal_value=-5.0, thinking="answer")
    assert reward([BENIGN, BENIGN], [msg(""), msg(" ")]) == [-5.0, -5.0], "min(refusal cap, H)"
    assert reward([BENIGN], [msg(CUT_OFF)]) == [None]
    assert HybridSafetyReward(gen, len_reward, no_answer_value=-3.0, thinking="answer")(
        [BENIGN], [msg(CUT_OFF)]
    ) == [-3.0]


def test_a_malformed_sample_is_a_counted_none(gen):
    log = Log()
    reward = SafetyReward(gen, refusal=False, decode=False)
    values = reward(
        [BENIGN, BENIGN, BENIGN], [msg(ANSWER), 42, [{"role": "tool"}]], log_metric=log.log_metric
    )
    assert values[0] is not None and values[1:] == [None, None]
    assert log.metrics["guard/failures/invalid_input"] == [2.0]
    with pytest.raises(SampleError, match="completion"):
        SafetyReward(gen, refusal=False, decode=False, on_error="raise")([BENIGN], [42])


class Rank:
    """One of two ranks of a trainer, as TRL 1.16 logs reward metrics (``log_metric`` is its bound method)."""

    accelerator = type("Accelerator", (), {"num_processes": 2})()

    def __init__(self):
        self.pending: dict[str, list[float]] = {}

    def log_metric(self, name, value):
        self.pending.setdefault(name, []).append(value)


def test_two_ranks_log_global_rates_and_failure_totals(tiny_gen_path):
    """TRL flushes (sum over all calls of all ranks) / (number of calls): rank 0 holds 1 sample, rank 1 five."""
    gen = GenGuard.from_pretrained(tiny_gen_path, max_length=600)
    long = "word " * 600
    reward = SafetyReward(gen, refusal=False, decode=False, harmful_column="harmful")
    batches = [
        ([BENIGN], [msg(ANSWER)]),
        ([BENIGN] * 5, [msg(long), msg(""), msg(long), msg("Knead it well."), msg("Bake it hot.")]),
    ]
    ranks = [Rank(), Rank()]
    for rank, (prompts, completions) in zip(ranks, batches, strict=True):
        reward(prompts, completions, harmful=[False] * len(prompts), log_metric=rank.log_metric)
    flushed = {}
    for key in {k for r in ranks for k in r.pending}:
        values = [x for r in ranks for x in r.pending.get(key, [])]
        flushed[key] = sum(values) / len(values)
    texts = [c[0]["content"] for _, cs in batches for c in cs]
    judged = [t for t in texts if t.strip() and t != long]
    verdicts = gen.moderate(
        [[*BENIGN, {"role": "assistant", "content": t}] for t in judged], thinking="separate"
    )
    assert flushed["guard/safe_rate"] == pytest.approx(
        sum(v.level == "Safe" for v in verdicts) / len(verdicts)
    )
    assert flushed["guard/empty_rate"] == pytest.approx(1 / 6)
    assert flushed["guard/failures"] == 2.0 and flushed["guard/failures/context_too_long"] == 2.0
    assert flushed["guard/failures/no_answer"] == 0.0
