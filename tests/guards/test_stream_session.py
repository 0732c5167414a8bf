"""KV-cached streaming sessions: incremental feeding equals one-pass scoring, batched rows, errors."""

from __future__ import annotations

import pytest
import torch

from guard_reward.guards.common import ContextTooLongError
from tests.guards import stream_ckpt

USER = [{"role": "user", "content": "Tell me how to bake bread."}]
FIELDS = ("p_safe", "p_unsafe", "p_controversial", "category_probs")


@pytest.fixture(scope="module")
def guard():
    return stream_ckpt.guard("single")


def _cat(risks, field):
    return torch.cat([getattr(r, field) for r in risks])


def test_incremental_equals_one_pass(guard):
    tok = guard.tokenizer
    text = stream_ckpt.TEXTS["emoji"] + " " + stream_ckpt.TEXTS["chinese"]
    ids = tok.encode(text, add_special_tokens=False)
    whole = guard.score_ids([USER], [ids])[0]
    with guard.open_stream(USER) as session:
        parts = [
            session.feed(ids[:1]),
            session.feed([]),
            session.feed(ids[1:4]),
            session.feed(torch.tensor(ids[4:])),
        ]
        assert session.fed == [len(ids)]
        assert session.cache.get_seq_length() == len(guard.session_row(USER, False)[0]) + len(ids)
    for field in FIELDS:
        torch.testing.assert_close(_cat(parts, field), getattr(whole, field), rtol=0, atol=1e-5)
    assert _cat(parts, "token_ids").tolist() == ids
    assert _cat(parts, "offsets").tolist() == whole.offsets.tolist()  # spans in the text fed so far
    assert parts[0].query_probs == pytest.approx(whole.query_probs, abs=1e-5)
    assert len(parts[1]) == 0


def test_batched_rows_with_uneven_feeds(guard):
    tok = guard.tokenizer
    prompts = [USER, "hi", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]]
    ids = [tok.encode(t, add_special_tokens=False) for t in stream_ckpt.TEXTS.values()][:3]
    whole = guard.score_ids(prompts, ids)
    session = guard.open_streams(prompts)
    got = [[], [], []]
    schedule = [(2, 0, 5), (1, 3, 0), (0, 0, 1), (100, 100, 100)]  # tokens per row per call
    pos = [0, 0, 0]
    for step in schedule:
        chunks = [ids[b][pos[b] : pos[b] + step[b]] for b in range(3)]
        for b, risk in enumerate(session.feed_batch(chunks)):
            got[b].append(risk)
            pos[b] += len(chunks[b])
    session.close()
    for b in range(3):
        for field in FIELDS:
            torch.testing.assert_close(_cat(got[b], field), getattr(whole[b], field), rtol=0, atol=1e-5)
        assert got[b][0].query_probs == pytest.approx(whole[b].query_probs, abs=1e-5)


def test_include_mode_session(guard):
    tok = guard.tokenizer
    judged = tok.encode("The user wants bread.\n</think>\n\nKnead it.", add_special_tokens=False)
    completion = [151667, *tok.encode("\n", add_special_tokens=False), *judged, 151645]
    whole = guard.score_ids([USER], [completion], thinking="include")[0]
    assert whole.token_ids.tolist() == judged
    with guard.open_stream(USER, thinking="include") as session:
        fed = session.feed(judged)
    torch.testing.assert_close(fed.p_unsafe, whole.p_unsafe, rtol=0, atol=1e-5)


def test_session_errors(guard):
    session = guard.open_stream(USER)
    with pytest.raises(ValueError, match="end-of-turn id"):
        session.feed([785, 151645])
    with pytest.raises(ValueError, match="outside the guard's vocabulary"):
        session.feed([10**7])
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.feed([785])
    two = guard.open_streams([USER, USER])
    with pytest.raises(ValueError, match="use feed_batch"):
        two.feed([785])
    with pytest.raises(ValueError, match="got 1 chunks for a session of 2 rows"):
        two.feed_batch([[785]])
    with pytest.raises(ValueError, match="must end with the user's turn"):
        guard.open_stream([*USER, {"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="at least one prompt"):
        guard.open_streams([])


def test_session_window_is_enforced_and_reserved():
    guard = stream_ckpt.guard("short")
    prompt = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}, *USER]
    session = guard.open_stream(prompt)
    room = guard.max_length - len(guard.session_row(prompt, False)[0])
    session.feed([785] * room)
    with pytest.raises(ContextTooLongError, match="max_new_tokens"):
        session.feed([785])
    reserved = guard.open_stream(prompt, max_new_tokens=60)
    assert reserved.truncated == [True]
    reserved.feed([785] * 60)
