"""StreamGuard's per-sample fault policy, ids in the padded embedding rows, and cut-off reasoning."""

from __future__ import annotations

import pytest
import torch

from guard_reward.faults import (
    CONTEXT_TOO_LONG,
    IDS_OUTSIDE_VOCABULARY,
    INVALID_INPUT,
    NO_ANSWER,
    SampleError,
)
from guard_reward.guards.common import ContextTooLongError
from tests.guards import stream_ckpt

USER = {"role": "user", "content": "How do I bake bread at home?"}
ANSWER = "Mix flour and water, then bake it."


@pytest.fixture(scope="module")
def guard():
    return stream_ckpt.guard("single")


def test_skip_gives_one_failed_record_and_scores_the_rest():
    short = stream_ckpt.guard("short")  # a 96-token window
    ok = short.tokenizer.encode(ANSWER, add_special_tokens=False)
    long = short.tokenizer.encode("word " * 150, add_special_tokens=False)
    with pytest.raises(ContextTooLongError):
        short.score_ids([USER["content"]] * 2, [ok, long])
    risks = short.score_ids([USER["content"]] * 3, [ok, long, [1, 10**9]], on_error="skip")
    assert [r.reason for r in risks] == [None, CONTEXT_TOO_LONG, IDS_OUTSIDE_VOCABULARY]
    assert risks[0].ok and not risks[1].ok and len(risks[1]) == 0 and risks[1].p_unsafe.shape == (0,)
    assert "context window" in risks[1].error
    (alone,) = short.score_ids([USER["content"]], [ok])
    torch.testing.assert_close(risks[0].p_unsafe, alone.p_unsafe, rtol=0, atol=1e-5)
    texts = short.score(
        [[USER, {"role": "assistant", "content": "word " * 150}], "not a conversation"], on_error="skip"
    )
    assert [r.reason for r in texts] == [CONTEXT_TOO_LONG, INVALID_INPUT]
    with pytest.raises(ValueError, match="on_error='ignore' is not accepted"):
        short.score_ids([USER["content"]], [ok], on_error="ignore")


def test_ids_past_the_tokenizer_inside_the_embedding_table_are_scored(guard):
    """Qwen models have 151,936 embedding rows for 151,669 tokens; a policy may sample the padded rows."""
    assert guard.vocab_rows == 151_936 > len(guard.tokenizer)
    ids = guard.tokenizer.encode(ANSWER, add_special_tokens=False)
    padded = [*ids[:3], len(guard.tokenizer) + 7, *ids[3:]]
    (r,) = guard.score_ids([USER["content"]], [padded])
    assert r.ok and r.token_ids.tolist() == padded and len(r) == len(padded)
    assert r.offsets[3, 0] == r.offsets[3, 1], "a padded-row id has no text"
    with pytest.raises(SampleError, match="embedding table") as info:
        guard.score_ids([USER["content"]], [[*ids, guard.vocab_rows]])
    assert info.value.reason == IDS_OUTSIDE_VOCABULARY


def _ids(guard, text):
    return guard.tokenizer.encode(text, add_special_tokens=False)


def test_cut_off_reasoning_is_never_scored_as_an_answer(guard):
    im_end = guard.im_end_id
    cut = _ids(guard, "<think>\nThe user wants bread. First I")
    for on_error in ("raise", "skip"):  # a fact about the completion, not an error: never raised
        (r,) = guard.score_ids([USER["content"]], [[*cut, im_end]], thinking="answer", on_error=on_error)
        assert r.reason == NO_ANSWER and r.answer_missing and len(r) == 0 and not r.ok
    (inc,) = guard.score_ids([USER["content"]], [[*cut, im_end]], thinking="include")
    assert inc.ok and inc.answer_missing
    assert inc.span[0] == 2 and inc.token_ids.tolist() == cut[2:], "from after '<think>\\n'"
    # the same reasoning finished: its reasoning tokens read the same prefix and get the same risks
    done = _ids(guard, "<think>\nThe user wants bread. First I\n</think>\n\nBake it.")
    (full,) = guard.score_ids([USER["content"]], [done], thinking="include")
    n = len(inc)
    torch.testing.assert_close(full.p_unsafe[:n], inc.p_unsafe, rtol=0, atol=1e-5)
    assert not full.answer_missing

    text = "<think>\nThe user wants bread. First I"
    (t,) = guard.score([[USER, {"role": "assistant", "content": text}]], thinking="answer")
    assert t.reason == NO_ANSWER and t.answer_missing
    (ti,) = guard.score([[USER, {"role": "assistant", "content": text}]], thinking="include")
    assert ti.ok and ti.answer_missing and ti.token_ids.tolist() == inc.token_ids.tolist()
    assert text[int(ti.offsets[0, 0]) :].startswith("The user")
    torch.testing.assert_close(ti.p_unsafe, inc.p_unsafe, rtol=0, atol=1e-5)
