"""decode=True on a tiny guard trained to emit verdict lines: cache reuse equals plain greedy generation, the
lines are parsed into levels/categories/refusal, and probabilities are the same as decode=False."""

import pytest
import torch

from guard_reward.guards.gen import GenGuard
from guard_reward.tiny.gen_training import bundled_examples

pytestmark = pytest.mark.slow  # trains a tiny guard (about a minute)


@pytest.fixture(scope="module")
def trained(trained_gen_path):
    return GenGuard.from_pretrained(trained_gen_path, dtype="float32", token_budget=2048)


@pytest.fixture(scope="module")
def examples():
    return bundled_examples()


@pytest.fixture(scope="module")
def decoded(trained, examples):
    return trained.moderate([conv for conv, _ in examples], decode=True)


def plain_greedy(guard: GenGuard, conversation) -> str:
    """Independent path: the official usage — template, generate, decode — one conversation at a time."""
    tok = guard.tokenizer
    ids = tok(tok.apply_chat_template(conversation, tokenize=False), return_tensors="pt").input_ids
    with torch.no_grad():
        out = guard.model.generate(
            ids,
            max_new_tokens=guard.max_new_tokens,
            do_sample=False,
            eos_token_id=guard.end_ids,
            pad_token_id=guard.pad_id,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_decoding_from_the_scoring_cache_equals_plain_generation(trained, examples, decoded):
    for (conv, _), verdict in list(zip(examples, decoded))[::3]:
        assert verdict.raw == plain_greedy(trained, conv)


def test_decoded_probabilities_equal_the_one_pass_ones(trained, examples, decoded):
    fast = trained.moderate([conv for conv, _ in examples])
    for a, b in zip(fast, decoded):
        assert all(abs(a.probs[k] - b.probs[k]) < 1e-5 for k in a.probs)


def test_verdicts_are_parsed(examples, decoded):
    agree = 0
    for (_conv, target), verdict in zip(examples, decoded):
        assert verdict.raw is not None
        if verdict.raw.strip() == target:
            agree += 1
            level_line, categories_line = target.splitlines()[:2]
            assert level_line == f"Safety: {verdict.level}"
            if verdict.level == "Safe":
                assert verdict.categories == ()
            else:
                assert categories_line == "Categories: " + ", ".join(verdict.categories)
        if verdict.moderation == "prompt":
            assert verdict.refusal is None and verdict.p_refusal is None
        elif verdict.refusal is not None:
            assert (verdict.p_refusal > 0.5) == verdict.refusal
    assert agree >= 0.8 * len(examples), f"the trained stand-in reproduced only {agree} verdicts"


def test_unparseable_output_is_none_and_counted(trained, examples):
    trained.max_new_tokens = 2  # 'Safety' ':' and no label: nothing to parse
    trained.stats.clear()
    try:
        verdicts = trained.moderate([conv for conv, _ in examples[:6]], decode=True)
    finally:
        trained.max_new_tokens = 32
    assert [v.raw for v in verdicts] == ["Safety:"] * 6
    for v in verdicts:
        assert v.level is None and v.error and abs(sum(v.probs.values()) - 1) < 1e-6
    assert trained.stats["failures"] == 6
