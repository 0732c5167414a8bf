"""GuardStoppingCriteria: stops real ``generate`` calls where the debounced one-pass risk flags, records where,
and reads reasoning/answer like ``score_ids``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from guard_reward.guards.debounce import debounce, token_levels
from guard_reward.guards.intervention import GuardStoppingCriteria
from tests.guards import stream_ckpt

PROMPTS = [
    [{"role": "user", "content": c}]
    for c in ("Tell me a story", "How to make a cake?", "hey", "What is 2+2?")
]
EOS, PAD = 151645, 151643


@pytest.fixture(scope="module")
def guard():
    return stream_ckpt.guard("single")


@pytest.fixture(scope="module")
def policy(tiny_gen_path):
    return AutoModelForCausalLM.from_pretrained(tiny_gen_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch(guard):
    tok = guard.tokenizer
    texts = [
        tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        for p in PROMPTS
    ]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[PAD] * (width - len(i)) + i for i in ids])
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).long()}


def _generate(policy, batch, criteria, seed=0, **kw):
    torch.manual_seed(seed)
    out = policy.generate(
        **batch,
        max_new_tokens=16,
        do_sample=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
        **criteria.generate_kwargs(),
        **kw,
    )
    return [row.tolist() for row in out[:, batch["input_ids"].shape[1] :]]


def test_stops_at_the_debounced_one_pass_flag(guard, policy, batch):
    criteria = GuardStoppingCriteria(guard, PROMPTS, mode="loose", policy_tokenizer=guard.tokenizer)
    completions = _generate(policy, batch, criteria)
    records = criteria.records
    assert any(r.index is not None for r in records) and any(r.index is None for r in records)
    one_pass = guard.score_ids(PROMPTS, completions)
    for b, (record, risk, live) in enumerate(zip(records, one_pass, criteria.token_risks(), strict=True)):
        index, label = debounce(risk, "loose")
        if record.index is None:
            assert (index, label) == (None, "Safe"), b
            continue
        assert (
            (record.index, record.label)
            == (risk.span[0] + index, label)
            == (risk.span[0] + len(risk) - 1, label)
        )
        assert all(t == PAD for t in completions[b][record.index + 1 :])  # nothing generated after the flag
        assert live.span == risk.span and live.offsets.tolist() == risk.offsets.tolist()
        for field in ("p_safe", "p_unsafe", "p_controversial", "category_probs"):
            torch.testing.assert_close(getattr(live, field), getattr(risk, field), rtol=0, atol=1e-5)
        assert live.query_probs == pytest.approx(risk.query_probs, abs=1e-5)
    assert criteria.stopped.tolist() == [r.index is not None for r in records]


def test_prompt_ids_path_and_a_second_generation(guard, policy, batch):
    explicit = GuardStoppingCriteria(guard, PROMPTS, mode="loose")
    from_ids = GuardStoppingCriteria(guard, mode="loose")
    a = _generate(policy, batch, explicit)
    b = _generate(policy, batch, from_ids)
    assert a == b and explicit.records == from_ids.records
    # reused for a new generate call on other prompts: state restarts from the new prompt
    short = {k: v[2:] for k, v in batch.items()}
    _generate(policy, short, from_ids, seed=1)
    assert len(from_ids.records) == 2


def test_end_with_eos_closes_flagged_sequences(guard, policy, batch):
    criteria = GuardStoppingCriteria(guard, PROMPTS, mode="loose", end_with_eos=True)
    completions = _generate(policy, batch, criteria)
    flagged = [(b, r.index) for b, r in enumerate(criteria.records) if r.index is not None]
    assert flagged
    for b, index in flagged:
        assert completions[b][index + 1] == EOS


def _drive(criteria, prompt_ids: list[int], completion: list[int], rows: int = 1) -> None:
    """Step the criteria as ``generate`` does: after every new token, with the whole sequence so far."""
    for t in range(1, len(completion) + 1):
        ids = torch.tensor([prompt_ids + completion[:t]] * rows)
        if criteria(ids, None).all():
            break


def test_reasoning_is_read_like_score_ids(guard):
    tok = guard.tokenizer
    prompt_ids = tok.encode(
        tok.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )
    reasoning = tok.encode("\nI should tell a story about a river.\n", add_special_tokens=False)
    answer = tok.encode(" ".join(["Once upon a time, a river ran to the sea."] * 3), add_special_tokens=False)
    completion = [151667, *reasoning, 151668, *tok.encode("\n\n", add_special_tokens=False), *answer, EOS]
    for thinking in ("answer", "include"):
        for mode in ("strict", "loose"):
            criteria = GuardStoppingCriteria(guard, PROMPTS[:1], thinking=thinking, mode=mode)
            _drive(criteria, prompt_ids, completion)
            risk = guard.score_ids(PROMPTS[:1], [completion], thinking=thinking)[0]
            levels = token_levels(risk)
            # online, the stream stops at the first prefix whose verdict is flagged
            cut = next(
                (t for t in range(len(levels)) if debounce(levels[: t + 1], mode)[0] is not None), None
            )
            index, label = debounce(levels[: cut + 1] if cut is not None else levels, mode)
            record = criteria.records[0]
            expected = None if index is None else risk.span[0] + index
            assert (record.index, record.label) == (expected, label), (thinking, mode)
            live = criteria.token_risks()[0]
            assert live.span[0] == risk.span[0]
            n = len(live)
            torch.testing.assert_close(live.p_unsafe, risk.p_unsafe[:n], rtol=0, atol=1e-5)
    # a policy whose template opens <think> in the prompt: policy_thinks=True withholds until </think>
    criteria = GuardStoppingCriteria(guard, PROMPTS[:1], policy_thinks=True, mode="loose")
    _drive(criteria, prompt_ids, completion[1:])
    assert criteria.token_risks()[0].span[0] == len(reasoning) + 2


def test_prompts_expand_to_return_sequences(guard):
    tok = guard.tokenizer
    prompt_ids = tok.encode(
        tok.apply_chat_template(
            PROMPTS[1], tokenize=False, add_generation_prompt=True, enable_thinking=False
        ),
        add_special_tokens=False,
    )
    completion = tok.encode("Preheat the oven and mix the batter well.", add_special_tokens=False)
    criteria = GuardStoppingCriteria(guard, [PROMPTS[1], PROMPTS[1]])
    _drive(criteria, prompt_ids, completion, rows=4)
    risks = criteria.token_risks()
    assert len(risks) == 4 and all(r.query_probs == pytest.approx(risks[0].query_probs) for r in risks)
    with pytest.raises(ValueError, match="3 prompts for a batch of 4"):
        _drive(GuardStoppingCriteria(guard, PROMPTS[:3]), prompt_ids, completion, rows=4)


def test_bad_setup_fails_clearly(guard):
    with pytest.raises(ValueError, match="does not share the guard's vocabulary"):
        GuardStoppingCriteria(guard, policy_tokenizer=stream_ckpt.qwen36_tokenizer())
    with pytest.raises(ValueError, match="mode='harsh'"):
        GuardStoppingCriteria(guard, mode="harsh")
    raw = guard.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    with pytest.raises(ValueError, match="do not end with a Qwen3 assistant header"):
        _drive(GuardStoppingCriteria(guard), raw, [785, 786])
