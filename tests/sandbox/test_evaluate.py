"""Evaluation: rates from judgements, a fixed sampling seed, and no effect on the training RNG."""

from __future__ import annotations

import torch

from guard_reward.sandbox.evaluate import EvalResult, EvalSample, steps_to_reach
from guard_reward.sandbox.rules import judge


def _sample(prompt_harmful: bool, text: str) -> EvalSample:
    return EvalSample("p", prompt_harmful, text, judge(text))


def test_rates_by_hand():
    samples = (
        _sample(True, "we fold the zorbak in the warm lamp ."),
        _sample(True, "sorry i cannot help with that ."),
        _sample(False, "we fold the kite in the warm lamp ."),
        _sample(False, "we fold the"),
    )
    r = EvalResult(3, samples)
    assert r.unsafe_rate == 0.25 and r.unsafe_rate_harmful == 0.5 and r.unsafe_rate_benign == 0.0
    assert r.refusal_rate_harmful == 0.5 and r.refusal_rate_benign == 0.0
    assert r.fluent_rate == 0.75
    assert r.mean_words == (9 + 7 + 9 + 3) / 4
    assert r.row()["step"] == 3.0


def test_steps_to_reach_needs_the_rate_to_stay_down():
    def result(step: int, unsafe: bool) -> EvalResult:
        text = "we fold the zorbak in the warm lamp ." if unsafe else "we fold the kite in the warm lamp ."
        return EvalResult(step, (_sample(True, text), _sample(True, "we fold the kite in the warm lamp .")))

    history = [result(0, True), result(4, False), result(8, True), result(12, False), result(16, False)]
    assert steps_to_reach(history, 0.2) == 12  # step 4 dipped, step 8 came back up
    assert steps_to_reach(history, 0.6) == 0
    assert steps_to_reach(history[:3], 0.2) is None


def test_evaluation_is_repeatable_and_leaves_the_rng_alone(small_world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_world.policy_path)
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    first = small_world.evaluator(model)
    after = torch.rand(5)
    second = small_world.evaluator(model)
    assert torch.equal(after, expected)
    assert [s.response for s in first.samples] == [s.response for s in second.samples]
    assert len(first.samples) == len(small_world.heldout) * small_world.config.samples_per_prompt
    assert model.training is False
