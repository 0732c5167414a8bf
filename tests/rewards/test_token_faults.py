"""TokenSafetyPenalty's fault policy on real tiny Qwen3Guard-Stream stand-ins: rows without signal are masked out
and counted, ids in the padded embedding rows are scored, ids past the table fall back to the text path."""

from __future__ import annotations

import logging

import pytest
import torch

from guard_reward import TokenSafetyPenalty
from guard_reward.faults import SampleError
from guard_reward.rewards import SummedTokenReward
from tests.guards import stream_ckpt

PROMPT = [{"role": "user", "content": "How do I bake bread?"}]
ANSWER = "Mix flour and water, knead it, let it rise overnight and bake it hot."
IM_END = 151645


class Log:
    def __init__(self):
        self.metrics: dict[str, list[float]] = {}

    def log_metric(self, name, value):
        self.metrics.setdefault(name, []).append(value)


def _call(penalty, ids, log=None):
    return penalty(
        prompts=[PROMPT] * len(ids),
        completions=[[{"role": "assistant", "content": ""}]] * len(ids),
        completion_ids=ids,
        log_metric=None if log is None else log.log_metric,
    )


def test_rows_that_cannot_be_scored_are_masked_out_and_counted(qwen_tok, caplog):
    short = stream_ckpt.guard("short")  # a 96-token window
    ok = [*qwen_tok.encode(ANSWER), IM_END]
    long = [*qwen_tok.encode("word " * 150), IM_END]
    cut = [*qwen_tok.encode("<think>\nLet me think about bread"), IM_END]
    ids = [ok, long, cut, ok]
    log = Log()
    penalty = TokenSafetyPenalty(short, policy_tokenizer=qwen_tok, shaping="prob")
    with caplog.at_level(logging.WARNING):
        out = _call(penalty, ids, log)
    assert out.mask[0, : len(ok)].all() and out.mask[3, : len(ok)].all()
    assert not out.mask[1].any() and not out.mask[2].any(), "no signal: the whole row is masked"
    assert not out.rewards[1].any() and not out.rewards[2].any()
    alone = _call(penalty, [ok])
    torch.testing.assert_close(out.rewards[0, : len(ok)], alone.rewards[0], rtol=0, atol=1e-5)
    assert log.metrics["guard/stream_failures"] == [2.0]
    assert log.metrics["guard/stream_failures/context_too_long"] == [1.0]
    assert log.metrics["guard/stream_failures/no_answer"] == [1.0]
    assert len(log.metrics["guard/stream_flag_rate"]) == 2, "rates count the scored rows only"
    assert "context_too_long" in caplog.text and "no_answer" in caplog.text
    summed = SummedTokenReward(penalty)(prompts=[PROMPT] * 4, completions=[""] * 4, completion_ids=ids)
    assert summed[1] is None and summed[2] is None and summed[0] == pytest.approx(float(out.rewards[0].sum()))

    strict = TokenSafetyPenalty(short, policy_tokenizer=qwen_tok, on_error="raise")
    with pytest.raises(SampleError, match="context window") as info:
        _call(strict, [ok, long])
    assert info.value.reason == "context_too_long"
    assert not _call(strict, [cut]).mask.any(), "a cut-off reasoning block is never raised"
    included = TokenSafetyPenalty(short, policy_tokenizer=qwen_tok, thinking="include")
    assert _call(included, [cut]).mask.all(), "its reasoning is scored when reasoning is included"
    with pytest.raises(ValueError, match="hard_position"):
        TokenSafetyPenalty(short, hard=True, hard_position="last")


def test_a_policy_sampling_padded_embedding_rows_is_scored_like_any_other_id(qwen_tok):
    """Qwen3 has 151,936 embedding rows for 151,669 tokens; at temperature 1 a policy samples the padded ones."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from tests.tiny_policy import tiny_policy

    class FavourPaddedRows(LogitsProcessor):  # an under-trained policy whose padded rows are likely
        def __call__(self, input_ids, scores):
            scores[:, len(qwen_tok) :] += 12.0
            return scores

    model, tok = tiny_policy(seed=1)
    prompt = tok.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    out = model.generate(
        **prompt,
        do_sample=True,
        max_new_tokens=12,
        num_return_sequences=2,
        logits_processor=LogitsProcessorList([FavourPaddedRows()]),
    )
    ids = [row[prompt["input_ids"].shape[1] :].tolist() for row in out]
    assert any(t >= len(qwen_tok) for row in ids for t in row), "the policy sampled padded-row ids"
    guard = stream_ckpt.guard("single")
    log = Log()
    penalty = TokenSafetyPenalty(guard, policy_tokenizer=tok, shaping="prob")
    dense = _call(penalty, ids, log)
    assert penalty.stats["identity"] == 2 and penalty.stats["aligned"] == 0
    assert log.metrics["guard/stream_failures"] == [0.0]
    for i, r in enumerate(guard.score_ids([PROMPT] * 2, ids)):
        expected = torch.zeros(len(ids[i]))
        s, e = r.span
        expected[s:e] = -(r.p_unsafe + r.p_controversial)
        torch.testing.assert_close(dense.rewards[i, : len(ids[i])], expected, rtol=0, atol=1e-6)
        assert dense.mask[i, : len(ids[i])].all()


def test_ids_past_the_embedding_table_fall_back_to_the_text_path(qwen_tok):
    guard = stream_ckpt.guard("single")
    clean = qwen_tok.encode(ANSWER)
    broken = [*clean[:4], guard.vocab_rows + 100, *clean[4:]]
    penalty = TokenSafetyPenalty(guard, policy_tokenizer=qwen_tok, shaping="prob")
    out = _call(penalty, [broken, clean])
    assert penalty.stats["aligned"] == 1 and penalty.stats["identity"] == 1
    assert out.mask[0, : len(broken)].all(), "the row keeps its signal"
    assert float(out.rewards[0, 4]) == 0.0, "the unreadable id has no text and gets nothing"
    keep = [k for k in range(len(broken)) if k != 4]
    torch.testing.assert_close(out.rewards[0, keep], out.rewards[1, : len(clean)], rtol=0, atol=1e-5)
