"""One-pass Stream scoring against an independent plain reference, what is judged, reasoning, ids scoring,
batch/padding invariance and the context policy."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3Model

from guard_reward.guards.common import ContextTooLongError
from tests.guards import stream_ckpt

USER = {"role": "user", "content": "How do I bake bread at home?"}
CONVS = [
    [
        USER,
        {"role": "assistant", "content": "Mix flour, water, salt and yeast, then bake at 220°C. 你好 🍞!"},
    ],
    [
        {"role": "system", "content": "You are a helpful baker."},
        {"role": "user", "content": "Any tips?"},
        {"role": "assistant", "content": "Rest the dough."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Shape it, proof it for an hour and bake it until golden."},
    ],
]


@pytest.fixture(scope="module")
def guard():
    return stream_ckpt.guard("single")


@pytest.fixture(scope="module")
def reference():
    """Plain re-implementation: stock Qwen3Model hidden states, then per position (one at a time)
    pre-projection -> RMSNorm -> heads -> softmax, from the raw safetensors tensors."""
    folder = stream_ckpt.path("single")
    backbone = Qwen3Model.from_pretrained(folder, dtype=torch.float32).eval()
    w = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    eps = config["rms_norm_eps"]

    def head(h: torch.Tensor, prefix: str) -> tuple[list[float], list[float]]:
        x = w[f"{prefix}risk_level_category_pre.weight"] @ h
        x = x / math.sqrt(float((x * x).mean()) + eps) * w[f"{prefix}risk_level_category_layernorm.weight"]
        risk = torch.softmax(w[f"{prefix}risk_level_head.weight"] @ x, dim=0)
        cat = torch.softmax(w[f"{prefix}category_head.weight"] @ x, dim=0)
        return risk.tolist(), cat.tolist()

    def run(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]

    return run, head, config


def _template_prefix(tok, before) -> list[int]:
    """The guard input before the content, straight from the template's generation prompt."""
    text = tok.apply_chat_template(before, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return tok.encode(text, add_special_tokens=False)


def test_one_pass_matches_the_plain_reference(guard, reference):
    run, head, config = reference
    tok = guard.tokenizer
    risks = guard.score(CONVS)
    for conv, risk in zip(CONVS, risks, strict=True):
        prefix = _template_prefix(tok, conv[:-1])
        content_ids = tok.encode(conv[-1]["content"], add_special_tokens=False)
        assert risk.token_ids.tolist() == content_ids
        hidden = run(prefix + content_ids)
        levels = [config["response_risk_level_map"][str(k)] for k in range(3)]
        for t in range(len(content_ids)):
            p, c = head(hidden[len(prefix) + t], "")
            got = {
                "Safe": risk.p_safe[t],
                "Unsafe": risk.p_unsafe[t],
                "Controversial": risk.p_controversial[t],
            }
            for k, name in enumerate(levels):
                assert abs(float(got[name]) - p[k]) < 1e-5
            assert torch.allclose(risk.category_probs[t], torch.tensor(c), atol=1e-5)
        # query verdict at the <|im_end|> closing the last user turn
        user_end = max(i for i in range(len(prefix) - 1) if prefix[i : i + 2] == [151644, 872])
        user_end = prefix.index(151645, user_end)
        q, qc = head(hidden[user_end], "query_")
        q_levels = [config["query_risk_level_map"][str(k)] for k in range(3)]
        for k, name in enumerate(q_levels):
            assert abs(risk.query_probs[name] - q[k]) < 1e-5
        assert abs(risk.query_category_probs["Jailbreak"] - qc[8]) < 1e-5
        assert risk.category_names == stream_ckpt.CUSTOM_CATEGORIES


def test_offsets_index_the_content(guard):
    for name, text in stream_ckpt.TEXTS.items():
        risk = guard.score([[USER, {"role": "assistant", "content": text}]])[0]
        spans = risk.offsets.tolist()
        assert spans[0][0] == 0 and spans[-1][1] == len(text), name
        for (s, e), tid in zip(spans, risk.token_ids.tolist(), strict=True):
            piece = guard.tokenizer.decode([tid])
            assert piece.replace("\ufffd", "") in text[s:e], (name, piece, text[s:e])
        assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise(spans))


def test_answer_mode_judges_the_answer_only(guard):
    tok = guard.tokenizer
    content = "<think>\nThe user wants bread.\n</think>\n\nKnead, rest, bake."
    answer = "Knead, rest, bake."
    risk = guard.score([[USER, {"role": "assistant", "content": content}]])[0]
    alone = guard.score([[USER, {"role": "assistant", "content": answer}]])[0]
    assert risk.token_ids.tolist() == tok.encode(answer, add_special_tokens=False)
    torch.testing.assert_close(risk.p_unsafe, alone.p_unsafe, rtol=0, atol=1e-6)
    shift = content.index(answer)
    assert (risk.offsets == alone.offsets + shift).all()


def test_include_mode_judges_reasoning_and_answer(guard, reference):
    run, head, _ = reference
    tok = guard.tokenizer
    content = "<think>\nThe user wants bread.\n</think>\n\nKnead, rest, bake."
    risk = guard.score([[USER, {"role": "assistant", "content": content}]], thinking="include")[0]
    judged = "The user wants bread.\n</think>\n\nKnead, rest, bake."
    assert risk.token_ids.tolist() == tok.encode(judged, add_special_tokens=False)
    prefix_text = tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True) + "<think>\n"
    prefix = tok.encode(prefix_text, add_special_tokens=False)
    hidden = run(prefix + risk.token_ids.tolist())
    for t in range(len(risk)):
        p, _ = head(hidden[len(prefix) + t], "")
        assert abs(float(risk.p_unsafe[t]) - p[1]) < 1e-5
    pieces = [content[s:e] for s, e in risk.offsets.tolist()]
    assert "</think>" in pieces and pieces[0] == "The" and pieces[-1] == "."
    # no reasoning: include falls back to the answer alone
    plain = guard.score([[USER, {"role": "assistant", "content": "Knead."}]], thinking="include")[0]
    assert plain.token_ids.tolist() == tok.encode("Knead.", add_special_tokens=False)


def test_score_ids_scores_policy_ids_verbatim(guard):
    tok = guard.tokenizer
    texts = list(stream_ckpt.TEXTS.values())
    ids = [[*tok.encode(t, add_special_tokens=False), 151645] for t in texts]
    ids[1] = ids[1] + [151643, 151643]  # padding after EOS, as a padded batch row would have
    by_ids = guard.score_ids([USER["content"]] * len(ids), ids)
    by_text = guard.score([[USER, {"role": "assistant", "content": t}] for t in texts])
    for i, (a, b) in enumerate(zip(by_ids, by_text, strict=True)):
        n = len(ids[i]) - (3 if i == 1 else 1)
        assert a.span == (0, n) and a.token_ids.tolist() == ids[i][:n]
        assert (a.offsets == b.offsets).all()
        torch.testing.assert_close(a.p_unsafe, b.p_unsafe, rtol=0, atol=1e-5)
        assert a.query_probs == pytest.approx(b.query_probs, abs=1e-6)


def test_score_ids_reasoning_spans(guard):
    tok = guard.tokenizer
    reasoning = tok.encode("The user wants bread.\n", add_special_tokens=False)  # ".\n" is one token
    answer = tok.encode("Knead, rest, bake.", add_special_tokens=False)
    nl, nl2 = tok.encode("\n", add_special_tokens=False), tok.encode("\n\n", add_special_tokens=False)
    ids = [151667, *nl, *reasoning, 151668, *nl2, *answer, 151645]
    a = guard.score_ids([[USER]], [ids])[0]
    start = len(ids) - 1 - len(answer)
    assert a.span == (start, len(ids) - 1) and a.token_ids.tolist() == answer
    ref = guard.score([[USER, {"role": "assistant", "content": "Knead, rest, bake."}]])[0]
    torch.testing.assert_close(a.p_unsafe, ref.p_unsafe, rtol=0, atol=1e-5)
    inc = guard.score_ids([[USER]], [ids], thinking="include")[0]
    assert inc.span == (1 + len(nl), len(ids) - 1)
    content = "<think>\nThe user wants bread.\n</think>\n\nKnead, rest, bake."
    ref_inc = guard.score([[USER, {"role": "assistant", "content": content}]], thinking="include")[0]
    assert inc.token_ids.tolist() == ref_inc.token_ids.tolist()
    torch.testing.assert_close(inc.p_unsafe, ref_inc.p_unsafe, rtol=0, atol=1e-5)


def test_batch_and_padding_invariance(guard):
    convs = [*CONVS, [USER, {"role": "assistant", "content": "Ok."}], [USER]]
    together = guard.score(convs)
    alone = [guard.score([c])[0] for c in convs]
    small = stream_ckpt.guard("single", token_budget=64)  # forces many micro-batches
    split = small.score(convs)
    for a, b, c in zip(together, alone, split, strict=True):
        for field in ("p_safe", "p_unsafe", "p_controversial", "category_probs"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=1e-5)
            torch.testing.assert_close(getattr(a, field), getattr(c, field), rtol=0, atol=1e-5)
        assert a.query_probs == pytest.approx(b.query_probs, abs=1e-5)


def test_user_final_conversation_gives_the_prompt_verdict(guard):
    empty, full = guard.score([[USER], CONVS[0]])
    assert len(empty) == 0 and empty.category_probs.shape == (0, 8)
    assert empty.query_probs == pytest.approx(full.query_probs, abs=1e-5)
    assert sum(empty.query_probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_context_policy_trims_earlier_turns_and_flags_it():
    guard = stream_ckpt.guard("short")
    assert guard.max_length == 96
    long_turn = {"role": "user", "content": "word " * 120}
    conv = [
        long_turn,
        {"role": "assistant", "content": "earlier"},
        USER,
        {"role": "assistant", "content": "Bake it."},
    ]
    before = guard.n_truncated
    risk = guard.score([conv])[0]
    assert risk.truncated and guard.n_truncated == before + 1
    kept = guard.score([conv[1:]])[0]  # the oldest turn dropped, the rest fits
    torch.testing.assert_close(risk.p_unsafe, kept.p_unsafe, rtol=0, atol=1e-5)
    assert not kept.truncated
    ids = guard.tokenizer.encode("word " * 150, add_special_tokens=False)
    with pytest.raises(ContextTooLongError, match="alone needs"):
        guard.score([[USER, {"role": "assistant", "content": "word " * 150}]])
    with pytest.raises(ContextTooLongError):
        guard.score_ids([USER["content"]], [ids])


def test_bad_input_fails_clearly(guard):
    with pytest.raises(ValueError, match="got 2 prompts but 1 completion_ids"):
        guard.score_ids(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="outside the guard's vocabulary"):
        guard.score_ids(["a"], [[1, 999_999]])
    with pytest.raises(ValueError, match="must end with the user's turn"):
        guard.score_ids([[USER, {"role": "assistant", "content": "x"}]], [[1]])
    with pytest.raises(ValueError, match="thinking='both' is not accepted"):
        guard.score(CONVS, thinking="both")
    with pytest.raises(TypeError, match="conversation 0"):
        guard.score(["just a string"])


def test_shares_tokenizer(guard, qwen_tok):
    assert guard.shares_tokenizer(guard.tokenizer)
    assert guard.shares_tokenizer(qwen_tok)
    assert not guard.shares_tokenizer(stream_ckpt.qwen36_tokenizer())


@pytest.mark.gpu
def test_cuda_bfloat16_agrees_with_cpu_float32():
    from guard_reward.guards.stream import StreamGuard

    cpu = stream_ckpt.guard("single")
    gpu = StreamGuard.from_pretrained(stream_ckpt.path("single"), device="cuda", dtype="bfloat16")
    assert gpu.device.type == "cuda" and gpu.model.dtype == torch.bfloat16
    for a, b in zip(cpu.score(CONVS), gpu.score(CONVS), strict=True):
        assert b.p_unsafe.device.type == "cpu" and b.p_unsafe.dtype == torch.float32
        assert float((a.p_unsafe - b.p_unsafe).abs().max()) < 0.15
    ids = gpu.tokenizer.encode(CONVS[0][-1]["content"], add_special_tokens=False)
    whole = gpu.score_ids([CONVS[0][:1]], [ids])[0]
    with gpu.open_stream(CONVS[0][:1]) as session:
        fed = [session.feed(ids[:3]), session.feed([]), session.feed(ids[3:])]
    assert float((torch.cat([f.p_unsafe for f in fed]) - whole.p_unsafe).abs().max()) < 0.05
