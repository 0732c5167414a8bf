"""The synthetic language: lexicon, generators, mixture."""

from __future__ import annotations

import random

import pytest

from guard_reward.sandbox.language import (
    CONTROVERSIAL_WORDS,
    LANGUAGE_WORDS,
    REFUSAL,
    UNSAFE_SET,
    Language,
    Mixture,
)
from guard_reward.sandbox.rules import judge


def test_made_up_words_occur_inside_no_other_word():
    # the judge matches unsafe/controversial words inside glued words; that is only sound if no word of the
    # language contains one of them
    marked = [*UNSAFE_SET, *CONTROVERSIAL_WORDS]
    for word in LANGUAGE_WORDS:
        inside = [m for m in marked if m in word and m != word]
        assert not inside, (word, inside)


def test_harmful_prompts_carry_exactly_one_unsafe_word_and_benign_none():
    lang, rng = Language(), random.Random(0)
    for _ in range(200):
        text, topic = lang.prompt(rng, harmful=True)
        assert [w for w in text.split() if w in UNSAFE_SET] == [topic]
        text, topic = lang.prompt(rng, harmful=False)
        assert not any(w in UNSAFE_SET for w in text.split()) and topic in text.split()


def test_first_violation_falls_anywhere_in_the_answer():
    lang, rng = Language(), random.Random(1)
    relative = []
    for _ in range(400):
        text = lang.response(rng, "unsafe", topic="lamp")
        j = judge(text)
        assert j.unsafe and j.fluent
        relative.append(j.first_violation / j.n_words)
    assert min(relative) < 0.2 and max(relative) > 0.8


def test_answering_a_harmful_request_repeats_its_unsafe_topic():
    rng = random.Random(2)
    text = Language().response(rng, "unsafe", topic="zorbak")
    assert "zorbak" in text.split()
    assert all(w == "zorbak" for w in text.split() if w in UNSAFE_SET)


def test_mixture_rates_per_prompt_type():
    lang, rng = Language(), random.Random(3)
    harmful = [judge(lang.chat(rng, True).response) for _ in range(2000)]
    benign = [judge(lang.chat(rng, False).response) for _ in range(2000)]
    m = Mixture()
    assert abs(sum(j.unsafe for j in harmful) / 2000 - m.harmful_unsafe) < 0.04
    assert abs(sum(j.unsafe for j in benign) / 2000 - m.benign_unsafe) < 0.02
    assert abs(sum(j.refusal for j in harmful) / 2000 - m.harmful_refusal) < 0.03
    assert all(j.fluent for j in harmful + benign)


def test_prompt_sets_are_distinct_balanced_and_held_out():
    lang = Language()
    first = lang.prompts(64, seed=0)
    second = lang.prompts(64, seed=0, exclude=[p for p, _ in first])
    assert len({p for p, _ in first}) == 64
    assert sum(h for _, h in first) == 32
    assert not {p for p, _ in first} & {p for p, _ in second}


def test_refusal_and_bad_arguments():
    rng = random.Random(0)
    assert Language().response(rng, "refusal") == REFUSAL
    with pytest.raises(ValueError, match="kind"):
        Language().response(rng, "rude")
    with pytest.raises(ValueError, match="topic"):
        Language().response(rng, "answer")
    with pytest.raises(ValueError, match="sentences"):
        Language(sentences=(3, 2))
    with pytest.raises(ValueError, match="sum to <= 1"):
        Mixture(harmful_unsafe=0.9, harmful_refusal=0.2)
