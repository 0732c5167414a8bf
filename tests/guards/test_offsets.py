"""Guard tokens <-> policy tokens by character offsets, with two different real tokenizers (Qwen3 and the newer
Qwen vocabulary) on English, Chinese, Arabic and emoji text."""

from __future__ import annotations

import random

import pytest
import torch

from guard_reward.guards.offsets import (
    OffsetTracker,
    align_values,
    guard_index_for_policy,
    token_bytes,
    token_char_offsets,
)
from tests.guards import stream_ckpt


@pytest.fixture(scope="module")
def tokenizers(qwen_tok):
    return {"qwen3": qwen_tok, "qwen3_6": stream_ckpt.qwen36_tokenizer()}


def _loop_index(guard_offsets: list[list[int]], policy_offsets: list[list[int]]) -> list[int]:
    """The rule written as a plain loop: the last guard token starting before the end of the policy token."""
    out = []
    for _, end in policy_offsets:
        chosen = -1
        for g, (start, _) in enumerate(guard_offsets):
            if start < end:
                chosen = g
        out.append(chosen)
    return out


@pytest.mark.parametrize("name", list(stream_ckpt.TEXTS))
@pytest.mark.parametrize("which", ["qwen3", "qwen3_6"])
def test_offsets_from_ids_match_the_fast_tokenizer(tokenizers, name, which):
    tok, text = tokenizers[which], stream_ckpt.TEXTS[name]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    decoded, offsets = token_char_offsets(tok, enc["input_ids"])
    assert decoded == text
    assert offsets.tolist() == [list(o) for o in enc["offset_mapping"]]


def test_special_tokens_get_empty_spans(qwen_tok):
    ids = [*qwen_tok.encode("Hi there", add_special_tokens=False), 151645, 151643]
    text, offsets = token_char_offsets(qwen_tok, ids)
    assert text == "Hi there" and offsets[-2:].tolist() == [[8, 8], [8, 8]]
    kept, offsets2 = token_char_offsets(qwen_tok, ids, skip_special_tokens=False)
    assert kept == "Hi there<|im_end|><|endoftext|>" and offsets2[-1].tolist() == [18, 31]


def test_offset_tracker_splits_characters_like_one_pass(qwen_tok):
    ids = qwen_tok.encode(stream_ckpt.TEXTS["emoji"], add_special_tokens=False)
    pieces = token_bytes(qwen_tok, ids)
    one = OffsetTracker()
    whole = one.push(pieces)
    inc = OffsetTracker()
    parts = [inc.push(pieces[k : k + 1]) for k in range(len(pieces))]
    assert torch.cat(parts).tolist() == whole.tolist()
    assert inc.text == one.text == stream_ckpt.TEXTS["emoji"]
    bad = (
        OffsetTracker()
    )  # a truncated character followed by a new one decodes like bytes.decode(errors="replace")
    bad.push([b"\xe4\xbd", b"\xc3\xa9"])
    bad.flush()
    assert bad.text == b"\xe4\xbd\xc3\xa9".decode("utf-8", errors="replace")


def test_vectorised_rule_matches_the_plain_loop():
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, 60), rng.randint(1, 12)))
        guard = [[a, b] for a, b in zip([0, *cuts], [*cuts, 60], strict=True)]
        # policy spans: arbitrary, including empty ones and spans past the guard text
        policy = sorted([sorted([rng.randint(0, 62), rng.randint(0, 62)]) for _ in range(rng.randint(1, 10))])
        got = guard_index_for_policy(torch.tensor(guard), torch.tensor(policy)).tolist()
        assert got == _loop_index(guard, policy)


@pytest.mark.parametrize("name", list(stream_ckpt.TEXTS))
def test_two_real_tokenizers_align_by_the_rule(tokenizers, name):
    text = stream_ckpt.TEXTS[name]
    guard_tok, policy_tok = tokenizers["qwen3"], tokenizers["qwen3_6"]
    guard_ids = guard_tok.encode(text, add_special_tokens=False)
    policy_ids = [
        *policy_tok.encode(text, add_special_tokens=False),
        policy_tok.convert_tokens_to_ids("<|im_end|>"),
    ]
    assert guard_ids != policy_ids[:-1]  # really two tokenizations
    g_text, g_off = token_char_offsets(guard_tok, guard_ids)
    p_text, p_off = token_char_offsets(policy_tok, policy_ids)
    assert g_text == p_text == text
    values = torch.arange(len(guard_ids), dtype=torch.float32) * 10  # value = guard index * 10
    aligned, valid = align_values(values, g_off, p_off)
    assert valid.all()
    expected = _loop_index(g_off.tolist(), p_off.tolist())
    assert (aligned / 10).long().tolist() == expected
    for p, g in enumerate(expected):
        end = int(p_off[p, 1])
        assert int(g_off[g, 1]) >= end  # the guard has read the whole policy token
        assert g + 1 == len(guard_ids) or int(g_off[g + 1, 0]) >= end  # and nothing later was chosen
    assert expected[-1] == len(guard_ids) - 1  # the EOS (no text) takes the risk after everything


def test_stream_risks_carry_onto_another_policy_tokenizer(tokenizers):
    guard = stream_ckpt.guard("single")
    text = stream_ckpt.TEXTS["chinese"] + " " + stream_ckpt.TEXTS["emoji"]
    risk = guard.score(
        [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n" + text}]]
    )[0]
    policy_ids = tokenizers["qwen3_6"].encode("\n\n" + text, add_special_tokens=False)
    _, p_off = token_char_offsets(tokenizers["qwen3_6"], policy_ids)
    aligned, valid = align_values(risk.p_unsafe, risk.offsets, p_off)
    # the template strips the leading newlines: the guard never read them, so no value there
    assert not valid[0] and torch.isnan(aligned[0]) and valid[1:].all()
    index = _loop_index(risk.offsets.tolist(), p_off.tolist())
    assert torch.equal(aligned[1:], risk.p_unsafe[torch.tensor(index[1:])])
    cats, _ = align_values(risk.category_probs, risk.offsets, p_off, fill=0.0)
    assert cats.shape == (len(policy_ids), 8) and float(cats[0].sum()) == 0.0


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match=r"policy_offsets must have shape \(T, 2\)"):
        guard_index_for_policy(torch.zeros((2, 2)), torch.zeros(3))
    with pytest.raises(ValueError, match="non-decreasing"):
        guard_index_for_policy(torch.tensor([[5, 6], [0, 1]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="values has 3 rows but guard_offsets has 2"):
        align_values(torch.zeros(3), torch.zeros((2, 2)), torch.zeros((1, 2)))
