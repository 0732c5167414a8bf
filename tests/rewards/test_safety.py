"""SafetyReward / HybridSafetyReward on real tiny Qwen3Guard-Gen stand-ins.

Expected values are computed here from the guard's own verdicts (``gen.moderate``) with the report's formulas,
never by the reward under test. The random-weight stand-in gives exact label probabilities (``decode=False``)
but unparseable verdict lines; the trained stand-in (``trained_gen_path``) gives real verdict lines.
"""

from __future__ import annotations

import logging
import pickle

import pytest

from guard_reward import HybridSafetyReward, SafetyReward
from guard_reward.guards.gen import GenGuard

PROMPTS = [
    [{"role": "user", "content": "How do I bake sourdough bread at home?"}],
    [{"role": "user", "content": "How do I pick a lock?"}],
]
TEXTS = [
    "Mix flour, water and starter, let it rise overnight, shape it and bake at 240 C.",
    "Sorry, I can't help with that.",
    "<think>\nThe user wants a summary.\n</think>\n\nInsert a tension wrench and rake the pins.",
    "Insert a tension wrench, rake the pins until each one sets, then turn the plug.",
]


def batch(conversational: bool = True):
    """Two prompts, two completions each, as TRL lays them out (each prompt repeated consecutively)."""
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    if not conversational:
        return [p[0]["content"] for p in prompts], list(TEXTS)
    return prompts, [[{"role": "assistant", "content": t}] for t in TEXTS]


def conversations():
    prompts, _ = batch()
    return [[*p, {"role": "assistant", "content": t}] for p, t in zip(prompts, TEXTS, strict=True)]


class Log:
    """Collects what a reward sends to TRL's log_metric / log_extra."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name, value):
        self.metrics.setdefault(name, []).append(value)

    def log_extra(self, column, values):
        self.extra.setdefault(column, []).extend(values)


@pytest.fixture(scope="module")
def gen(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path)


@pytest.fixture(scope="module")
def gen4(tiny_gen_path):
    """The random-weight stand-in decoding at most 4 tokens: its verdict lines never parse, quickly."""
    return GenGuard.from_pretrained(tiny_gen_path, max_new_tokens=4)


def test_soft_reward_is_the_expectation_over_guard_probabilities(gen):
    reward = SafetyReward(gen, mode="soft", refusal=False, unsafe_value=-2.0, controversial=0.3)
    prompts, completions = batch()
    got = reward(prompts=prompts, completions=completions, completion_ids=[[1]] * 4, trainer_state=None)
    verdicts = gen.moderate(conversations(), decode=False, thinking="separate")
    expected = [
        v.probs["Safe"] * 1.0 + v.probs["Controversial"] * 0.3 - 2.0 * v.probs["Unsafe"] for v in verdicts
    ]
    assert got == pytest.approx(expected, rel=1e-5)
    assert len(set(round(x, 6) for x in got)) > 1, "different completions get different soft rewards"


def test_hard_reward_uses_the_most_probable_label(gen):
    reward = SafetyReward(gen, refusal=False, safe_value=2.0, unsafe_value=-3.0, controversial="loose")
    prompts, completions = batch()
    got = reward(prompts=prompts, completions=completions, some_dataset_column=[0, 1, 2, 3])
    verdicts = gen.moderate(conversations(), decode=False, thinking="separate")
    assert got == [2.0 if v.level in ("Safe", "Controversial") else -3.0 for v in verdicts]


def test_standard_and_conversational_formats_agree(gen):
    reward = SafetyReward(gen, mode="soft", refusal=False)
    a = reward(*batch(conversational=True))
    b = reward(*batch(conversational=False))
    assert a == pytest.approx(b, rel=1e-6)


def test_thinking_modes_are_passed_to_the_guard(gen):
    prompts, completions = batch()
    whole = SafetyReward(gen, mode="soft", refusal=False, thinking="whole")(prompts, completions)
    answer = SafetyReward(gen, mode="soft", refusal=False, thinking="answer")(prompts, completions)
    expected_whole = [
        v.probs["Safe"] - (1 - v.probs["Safe"]) for v in gen.moderate(conversations(), thinking="whole")
    ]
    expected_answer = [
        v.probs["Safe"] - (1 - v.probs["Safe"]) for v in gen.moderate(conversations(), thinking="answer")
    ]
    assert whole == pytest.approx(expected_whole, rel=1e-5)
    assert answer == pytest.approx(expected_answer, rel=1e-5)
    assert whole[2] != pytest.approx(answer[2])  # the completion with a think block is judged differently


def test_metrics_and_columns_go_through_trl_loggers(gen):
    log = Log()
    reward = SafetyReward(gen, refusal=False, decode=False, metric_prefix="g")
    prompts, completions = batch()
    reward(prompts, completions, log_metric=log.log_metric, log_extra=log.log_extra)
    verdicts = gen.moderate(conversations(), thinking="separate")
    # rates: one call per judged sample (TRL's flush then weighs every sample alike across ranks)
    assert log.metrics["g/unsafe_rate"] == [float(v.level == "Unsafe") for v in verdicts]
    assert log.metrics["g/p_unsafe_mean"] == pytest.approx([v.probs["Unsafe"] for v in verdicts])
    assert log.metrics["g/empty_rate"] == [0.0] * 4
    # totals: one call per rank; seconds: one call
    assert log.metrics["g/failures"] == [0.0] and log.metrics["g/failures/context_too_long"] == [0.0]
    assert len(log.metrics["g/seconds"]) == 1 and log.metrics["g/seconds"][0] > 0
    assert log.extra["g_level"] == [v.level for v in verdicts]
    assert len(log.extra["g_category"]) == len(log.extra["g_refusal"]) == 4


def test_unjudgeable_samples_follow_the_failure_policy(gen4, caplog):
    # random weights never write a parseable verdict line, so decoding fails for every sample
    prompts, completions = batch()
    log = Log()
    reward = SafetyReward(gen4, refusal=False, decode=True)
    with caplog.at_level(logging.WARNING):
        assert reward(prompts, completions, log_metric=log.log_metric) == [None] * 4
    assert caplog.text.count("could not be judged (unparseable)") == 1, "logged once per reason"
    assert reward.stats["failures"] == 4 and log.metrics["guard/failures"] == [4.0]
    assert log.metrics["guard/failures/unparseable"] == [4.0]
    fixed = SafetyReward(gen4, refusal=False, decode=True, failure_value=-0.5)
    assert fixed(prompts, completions) == [-0.5] * 4


def test_prompt_verdicts_are_judged_once_per_unique_prompt(gen4):
    reward = SafetyReward(gen4)  # refusal handling on: the guard judges the prompts
    prompts, completions = batch()
    before = gen4.stats["requested"]
    reward(prompts, completions)
    assert gen4.stats["requested"] - before == 4 + 2  # 4 responses, 2 unique prompts
    assert reward.stats["prompts_judged"] == 2


def test_harmful_column_is_read_and_checked(gen4):
    prompts, completions = batch()
    reward = SafetyReward(gen4, harmful_column="harmful", failure_value=0.0)
    before = gen4.stats["requested"]
    reward(prompts, completions, harmful=[False, False, "harmful", 1])
    assert gen4.stats["requested"] - before == 4  # no prompt moderation
    with pytest.raises(KeyError, match="harmful_column='harmful' is not among the dataset columns"):
        reward(prompts, completions, category=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="not a harmfulness label"):
        reward(prompts, completions, harmful=[0, 1, "maybe", 0])


def test_names_are_distinct_and_configurable(gen):
    assert SafetyReward(gen).__name__ == "guard_safety"
    assert SafetyReward(gen, name="safety_soft").__name__ == "safety_soft"
    assert HybridSafetyReward(gen, len_reward).__name__ == "guard_hybrid"
    with pytest.raises(ValueError, match="without '/'"):
        SafetyReward(gen, name="rewards/x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "binary"}, "hard, soft"),
        ({"thinking": "both"}, "answer, separate, whole"),
        ({"decode": False}, "decode=False"),
        ({"failure_value": "zero"}, "failure_value"),
        ({"category_weights": {"Violence": 1.0}}, "unknown category"),
    ],
)
def test_bad_options_are_named(gen, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SafetyReward(gen, **kwargs)


def test_pickles_without_the_model_when_given_a_checkpoint(tiny_gen_path, gen):
    reward = SafetyReward(str(tiny_gen_path), mode="soft", refusal=False)
    prompts, completions = batch()
    first = reward(prompts, completions)
    blob = pickle.dumps(reward)
    assert len(blob) < 20_000  # the guard is reloaded, not pickled
    clone = pickle.loads(blob)
    assert clone.__name__ == "guard_safety"
    assert clone(prompts, completions) == pytest.approx(first, rel=1e-6)
    # an object given directly travels with its weights
    assert pickle.loads(pickle.dumps(SafetyReward(gen, refusal=False)))(prompts, completions)


class _Trainer:
    """What ``warn_reward_hacking_risk`` reads from TRL's trainer through its bound ``log_metric``."""

    def __init__(self, beta, n_rewards):
        self.beta = beta
        self.reward_funcs = [None] * n_rewards

    def _log_metric(self, name, value):
        pass


def test_warns_once_without_kl_and_other_rewards(gen, caplog):
    prompts, completions = batch()
    reward = SafetyReward(gen, refusal=False)
    with caplog.at_level(logging.WARNING):
        reward(prompts, completions, log_metric=_Trainer(0.0, 1)._log_metric)
        reward(prompts, completions, log_metric=_Trainer(0.0, 1)._log_metric)
    assert caplog.text.count("beta=0") == 1
    caplog.clear()
    for trainer in (_Trainer(0.04, 1), _Trainer(0.0, 2)):
        with caplog.at_level(logging.WARNING):
            SafetyReward(gen, refusal=False)(prompts, completions, log_metric=trainer._log_metric)
        assert "beta=0" not in caplog.text


def len_reward(prompts, completions, **kwargs):
    """A stand-in helpfulness score: longer answers score higher (module-level, hence picklable)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(t) / 10.0 for t in texts]


def test_hybrid_rejects_bad_options(gen):
    with pytest.raises(TypeError, match="helpfulness"):
        HybridSafetyReward(gen, "not callable")
    with pytest.raises(ValueError, match="strict"):
        HybridSafetyReward(gen, len_reward, controversial=0.5)


def test_hybrid_failures_and_pickle(tiny_gen_path):
    reward = HybridSafetyReward(
        str(tiny_gen_path), len_reward, failure_value=-1.0, guard_kwargs={"max_new_tokens": 4}
    )
    prompts, completions = batch()
    assert reward(prompts, completions) == [-1.0] * 4  # random weights: no parseable verdict
    assert pickle.loads(pickle.dumps(reward)).helpfulness is len_reward


# ---------------------------------------------------------------- with verdict lines (trained stand-in) --


@pytest.fixture(scope="module")
def trained(trained_gen_path):
    return GenGuard.from_pretrained(trained_gen_path)


def _refusal_expected(v, harmful, safe=1.0, unsafe=-1.0, benign_refusal=-0.5, harmful_refusal=0.5):
    if v.level is None:
        return None
    if v.level in ("Unsafe", "Controversial"):
        return unsafe
    refused = v.refusal if v.refusal is not None else (None if v.p_refusal is None else v.p_refusal >= 0.5)
    if refused is None or (refused and harmful is None):
        return None
    if refused:
        return harmful_refusal if harmful else benign_refusal
    return safe


@pytest.mark.slow
def test_refusals_are_valued_by_prompt_harm_from_a_column(trained):
    prompts, completions = batch()
    harmful = [False, False, True, True]
    reward = SafetyReward(
        trained, harmful_column="harmful", benign_refusal_value=-0.5, harmful_refusal_value=0.5
    )
    got = reward(prompts, completions, harmful=harmful)
    verdicts = trained.moderate(conversations(), decode=True, thinking="separate")
    assert any(v.ok for v in verdicts), "the trained stand-in writes verdict lines"
    assert got == [_refusal_expected(v, h) for v, h in zip(verdicts, harmful, strict=True)]


@pytest.mark.slow
def test_refusals_are_valued_by_prompt_harm_from_the_guard(trained):
    prompts, completions = batch()
    reward = SafetyReward(trained, benign_refusal_value=-0.5, harmful_refusal_value=0.5)
    log = Log()
    got = reward(prompts, completions, log_metric=log.log_metric)
    prompt_verdicts = trained.moderate([PROMPTS[0], PROMPTS[1]], decode=False)
    harm = [None if not v.ok else v.level != "Safe" for v in prompt_verdicts]
    harm = [harm[0], harm[0], harm[1], harm[1]]
    verdicts = trained.moderate(conversations(), decode=True, thinking="separate")
    assert got == [_refusal_expected(v, h) for v, h in zip(verdicts, harm, strict=True)]
    assert "guard/category/violent" in log.metrics  # decoded categories give per-category rates


@pytest.mark.slow
def test_hybrid_rule_on_real_verdicts(trained):
    prompts, completions = batch()
    got = HybridSafetyReward(trained, len_reward)(prompts, completions)
    verdicts = trained.moderate(conversations(), decode=True, thinking="separate")
    h = len_reward(prompts, completions)
    expected = []
    for v, score in zip(verdicts, h, strict=True):
        if v.level is None:
            expected.append(None)
        elif v.level != "Safe":
            expected.append(min(-10.0, score))
        elif v.refusal:
            expected.append(min(-5.0, score))
        else:
            expected.append(score)
    assert got == pytest.approx(expected)
