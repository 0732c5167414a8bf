"""A verdict's JSON form: every field and back, and the fields only decoding fills as null when not decoded."""

from __future__ import annotations

import json

from guard_reward.types import Verdict
from guard_reward.wire import DECODED_FIELDS, verdict_from_json, verdict_to_json


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
