"""A verdict's JSON form: every field and back, and the fields only decoding fills as null when not decoded; a
list of token risks in binary (safetensors) form: the same tensors bit for bit as the JSON form, bad bodies
refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from guard_reward.types import TokenRisk, Verdict
from guard_reward.wire import (
    DECODED_FIELDS,
    SHAPING_FIELDS,
    TOKEN_FIELDS,
    check_fields,
    failed_risk,
    risk_from_json,
    risk_to_json,
    risks_from_bytes,
    risks_to_bytes,
    verdict_from_json,
    verdict_to_json,
)


def _verdict() -> Verdict:
    reasoning = Verdict("Safe", {"Safe": 0.8, "Controversial": 0.15, "Unsafe": 0.05}, "response", refusal=False,
                        p_refusal=0.2, raw="Safety: Safe\nCategories: None\nRefusal: No")  # fmt: skip
    answer = Verdict("Unsafe", {"Safe": 0.1, "Controversial": 0.2, "Unsafe": 0.7}, "response", categories=("Violent",),
                     refusal=False, p_refusal=0.1, raw="Safety: Unsafe\nCategories: Violent\nRefusal: No")  # fmt: skip
    return Verdict("Unsafe", {"Safe": 0.08, "Controversial": 0.2, "Unsafe": 0.72}, "response",
                   categories=("Violent",), refusal=False, p_refusal=0.1, raw="[answer]", truncated=True,
                   parts={"reasoning": reasoning, "answer": answer})  # fmt: skip


def test_a_decoded_verdict_survives_the_round_trip():
    verdict = _verdict()
    assert verdict_from_json(json.loads(json.dumps(verdict_to_json(verdict)))) == verdict


def test_not_decoded_writes_null_for_the_decoded_fields_only_at_every_level():
    verdict = _verdict()
    full, bare = verdict_to_json(verdict), verdict_to_json(verdict, decoded=False)
    assert list(bare) == list(full)  # the same keys in the same order
    pairs = [(bare, full)] + [(bare["parts"][k], full["parts"][k]) for k in ("reasoning", "answer")]
    for out, ref in pairs:
        assert all(out[k] is None for k in DECODED_FIELDS)
        assert any(ref[k] is not None for k in DECODED_FIELDS)  # there was something to null
        rest = [k for k in ref if k not in (*DECODED_FIELDS, "parts")]
        assert {k: out[k] for k in rest} == {k: ref[k] for k in rest}


NAMES = tuple(f"cat{i}" for i in range(9))


def _risk(t: int, seed: int) -> TokenRisk:
    g = torch.Generator().manual_seed(seed)
    levels = torch.rand(t, 3, generator=g).softmax(-1)  # float32 values with full mantissas
    return TokenRisk(
        token_ids=torch.randint(0, 151_000, (t,), generator=g),
        offsets=torch.arange(2 * t).reshape(t, 2),
        p_safe=levels[:, 0].clone(),
        p_unsafe=levels[:, 1].clone(),
        p_controversial=levels[:, 2].clone(),
        category_probs=torch.rand(t, 9, generator=g).softmax(-1),
        category_names=NAMES,
        query_probs={"Safe": 0.25, "Controversial": 0.5, "Unsafe": 0.25},
        span=(1, t + 1),
        truncated=seed % 2 == 1,
    )


def _same(a: TokenRisk, b: TokenRisk) -> bool:
    scalars = ("category_names", "query_probs", "query_category_probs", "truncated", "span", "error", "reason",
               "answer_missing")  # fmt: skip
    return all(
        getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(getattr(a, f), getattr(b, f))
        for f in TOKEN_FIELDS
    ) and all(getattr(a, f) == getattr(b, f) for f in scalars)


def test_binary_risks_equal_the_json_form_bit_for_bit():
    risks = [_risk(17, 0), failed_risk(NAMES, "invalid_input", "bad ids", None), _risk(0, 1), _risk(300, 2)]
    back = risks_from_bytes(risks_to_bytes(risks))
    via_json = [risk_from_json(json.loads(json.dumps(risk_to_json(r)))) for r in risks]
    assert len(back) == len(risks) and all(_same(a, b) for a, b in zip(back, via_json))
    assert all(_same(a, b) for a, b in zip(back, risks))
    assert risks_from_bytes(risks_to_bytes([])) == []


def test_a_bad_binary_body_is_refused_by_name():
    body = risks_to_bytes([_risk(5, 0), _risk(3, 1)])
    with pytest.raises(ValueError, match="not a binary risks body"):
        risks_from_bytes(body[: len(body) - 7])  # truncated
    with pytest.raises(ValueError, match="not a binary risks body"):
        risks_from_bytes(b"{}")
    from safetensors.torch import load, save

    tensors = load(body)
    meta = json.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])["__metadata__"]
    wrong = {**tensors, "p_unsafe": tensors["p_unsafe"].double()}
    with pytest.raises(ValueError, match=r"'p_unsafe' must be torch\.float32"):
        risks_from_bytes(save(wrong, metadata=meta))
    short = {**tensors, "offsets": tensors["offsets"][:-1].contiguous()}
    with pytest.raises(ValueError, match=r"'offsets' must be torch\.int64 with 8 rows"):
        risks_from_bytes(save(short, metadata=meta))
    with pytest.raises(ValueError, match="'lengths'"):
        risks_from_bytes(save({**tensors, "lengths": torch.tensor([5])}, metadata=meta))


def test_only_the_fields_asked_for_travel_and_the_rest_are_placeholders():
    risks = [_risk(17, 0), failed_risk(NAMES, "invalid_input", "bad ids", None), _risk(300, 2)]
    asked = SHAPING_FIELDS
    blob, full = risks_to_bytes(risks, check_fields(list(asked))), risks_to_bytes(risks)
    assert len(blob) < 0.45 * len(full)  # 28 of 72 bytes a token
    text = json.dumps([risk_to_json(r, asked) for r in risks])
    for back in (risks_from_bytes(blob), [risk_from_json(d) for d in json.loads(text)]):
        for got, want in zip(back, risks, strict=True):
            assert len(got) == len(want) and got.span == want.span and got.reason == want.reason
            for name in TOKEN_FIELDS:
                g, w = getattr(got, name), getattr(want, name)
                assert g.dtype == w.dtype and g.shape == w.shape, name
                if name in asked:
                    assert torch.equal(g, w), name  # the same bits
                elif w.numel():  # not asked for: visibly not a value, and no memory
                    assert (g.isnan().all() if g.is_floating_point() else (g == -1).all()) and g.stride()[
                        0
                    ] == 0


def test_unknown_or_empty_field_lists_are_refused_naming_the_accepted_ones():
    assert check_fields(None) == tuple(TOKEN_FIELDS)
    assert check_fields(["p_unsafe", "p_safe", "p_unsafe"]) == ("p_safe", "p_unsafe")  # wire order, once
    for bad in (["p_unsafe", "unsafe"], [], "p_unsafe", [3]):
        with pytest.raises(ValueError, match="accepted: token_ids, offsets, p_safe"):
            check_fields(bad)
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'unsafe'"):
        check_fields(["unsafe"])
    with pytest.raises(ValueError, match="at least one of"):
        risk_from_json({"category_names": []})
