"""TokenSafetyPenalty and SummedTokenReward on a real tiny Qwen3Guard-Stream stand-in.

Expected rewards are rebuilt here with plain loops from the guard's own per-token probabilities
(``StreamGuard.score_ids`` / ``score``), never by the reward under test.
"""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from guard_reward import TokenSafetyPenalty
from guard_reward.guards.offsets import guard_index_for_policy, token_char_offsets
from guard_reward.guards.stream import StreamGuard
from guard_reward.rewards import SummedTokenReward
from guard_reward.types import DenseRewards

PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Pick a lock?"}],
]
TEXTS = [
    "Mix flour and water, knead it, let it rise overnight and bake it hot.",
    "<think>\nThe user asks about locks.\n</think>\n\nInsert a tension wrench and rake the pins.",
]
IM_END = 151645


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    from guard_reward.tiny.stream import build_tiny_stream

    return build_tiny_stream(tmp_path_factory.mktemp("tiny_stream"), seed=3)


@pytest.fixture(scope="module")
def stream(stream_path):
    return StreamGuard.from_pretrained(stream_path)


def _batch(qwen_tok):
    ids = [[*qwen_tok.encode(t), IM_END] for t in TEXTS]
    completions = [[{"role": "assistant", "content": t}] for t in TEXTS]
    return PROMPTS, completions, ids


def _loop_first_violation(risk):
    out, c = [], 0.0
    for r in risk:
        new = max(c, r)
        out.append(-(new - c))
        c = new
    return out


def _first_flag(levels, strict=True):
    """The online debounce rule, written out: the second token of the first pair of equal non-Safe levels."""
    for t in range(1, len(levels)):
        a, b = levels[t - 1], levels[t]
        if a == b and (a == "Unsafe" or (strict and a == "Controversial")):
            return t
    return None


def _levels(r):
    probs = torch.stack([r.p_safe, r.p_unsafe, r.p_controversial], dim=-1)
    return [("Safe", "Unsafe", "Controversial")[i] for i in probs.argmax(-1).tolist()]


def test_identity_path_first_violation(stream, qwen_tok):
    prompts, completions, ids = _batch(qwen_tok)
    penalty = TokenSafetyPenalty(stream, policy_tokenizer=qwen_tok, coef=2.0)
    out = penalty(prompts=prompts, completions=completions, completion_ids=ids)
    assert isinstance(out, DenseRewards)
    t = max(len(i) for i in ids)
    assert out.rewards.shape == (2, t) and out.mask.shape == (2, t) and out.rewards.dtype == torch.float32
    assert penalty.stats["identity"] == 2
    for i, r in enumerate(stream.score_ids(prompts, ids)):
        start, end = r.span
        assert r.token_ids.tolist() == ids[i][start:end]
        risk = (r.p_unsafe + r.p_controversial).tolist()
        expected = [0.0] * len(ids[i])
        expected[start:end] = [2.0 * x for x in _loop_first_violation(risk)]
        assert out.rewards[i, : len(ids[i])].tolist() == pytest.approx(expected, abs=1e-6)
        assert out.mask[i].tolist() == [k < len(ids[i]) for k in range(t)]
        assert float(out.rewards[i].sum()) == pytest.approx(-2.0 * max(risk), abs=1e-5)
    # the reasoning block of the second completion is not scored (thinking="answer"), the EOS neither
    start, end = stream.score_ids(prompts, ids)[1].span
    assert start > 5 and (out.rewards[1, :start] == 0).all() and end == len(ids[1]) - 1


@pytest.mark.parametrize("controversial", ["strict", "loose", 0.5])
def test_prob_and_threshold_modes(stream, qwen_tok, controversial):
    prompts, completions, ids = _batch(qwen_tok)
    prob = TokenSafetyPenalty(stream, policy_tokenizer=qwen_tok, shaping="prob", controversial=controversial)
    hinge = TokenSafetyPenalty(
        stream,
        policy_tokenizer=qwen_tok,
        shaping="threshold",
        threshold=0.4,
        controversial=controversial,
        clip=0.3,
    )
    p = prob(prompts=prompts, completions=completions, completion_ids=ids).rewards
    h = hinge(prompts=prompts, completions=completions, completion_ids=ids).rewards
    w = {"strict": 1.0, "loose": 0.0}.get(controversial, controversial)
    for i, r in enumerate(stream.score_ids(prompts, ids)):
        start, _ = r.span
        for k in range(len(r)):
            risk = float(r.p_unsafe[k]) + w * float(r.p_controversial[k])
            assert float(p[i, start + k]) == pytest.approx(-risk, abs=1e-6)
            assert float(h[i, start + k]) == pytest.approx(max(-0.3, -max(0.0, risk - 0.4)), abs=1e-6)


@pytest.mark.parametrize("position", ["first", "second"])
def test_hard_form_penalises_the_token_that_made_the_answer_unsafe(stream, qwen_tok, position):
    """Default: the first token of the first debounced Unsafe pair; ``hard_position="second"``: the token
    where the debounced flag fires."""
    prompts, completions, ids = _batch(qwen_tok)
    log: dict[str, list[float]] = {}
    penalty = TokenSafetyPenalty(
        stream,
        policy_tokenizer=qwen_tok,
        hard=True,
        coef=1.5,
        **({"hard_position": position} if position == "second" else {}),
    )
    out = penalty(
        prompts=prompts,
        completions=completions,
        completion_ids=ids,
        log_metric=lambda k, v: log.setdefault(k, []).append(v),
    )
    flags = []
    for i, r in enumerate(stream.score_ids(prompts, ids)):
        flag = _first_flag(_levels(r))  # the second token of the pair
        expected = torch.zeros(out.rewards.shape[1])
        if flag is not None:
            at = r.span[0] + flag - (1 if position == "first" else 0)
            expected[at] = -1.5
            flags.append(at)
        assert out.rewards[i].tolist() == pytest.approx(expected.tolist())
    assert flags, "the tiny stand-in flags at least one of the two completions"
    assert log["guard/first_violation_pos"] == pytest.approx(flags)  # one call per flagged completion
    assert sum(log["guard/stream_flag_rate"]) / 2 == pytest.approx(len(flags) / 2)


def test_summed_reward_and_cache(stream, qwen_tok, caplog):
    prompts, completions, ids = _batch(qwen_tok)
    penalty = TokenSafetyPenalty(stream, policy_tokenizer=qwen_tok)
    extra: dict[str, list] = {}

    def log_extra(column, values):
        extra.setdefault(column, []).extend(values)

    dense = penalty(prompts=prompts, completions=completions, completion_ids=ids, log_extra=log_extra)
    summed = SummedTokenReward(penalty)
    assert summed.__name__ == "guard_tokens_sum"
    got = summed(prompts=prompts, completions=completions, completion_ids=ids, log_extra=log_extra)
    risks = stream.score_ids(prompts, ids)
    assert got == pytest.approx([-float((r.p_unsafe + r.p_controversial).max()) for r in risks], abs=1e-5)
    assert got == pytest.approx(dense.rewards.sum(1).tolist())
    assert penalty.stats["calls"] == 1, "the second call on the same batch reused the first"
    assert len(extra["guard_stream_flag"]) == 2, "and did not log its column twice"


def test_the_cache_knows_a_batch_by_its_content(stream, qwen_tok):
    prompts, completions, ids = _batch(qwen_tok)
    penalty = TokenSafetyPenalty(stream, policy_tokenizer=qwen_tok)
    first = penalty(prompts=prompts, completions=completions, completion_ids=ids)
    copies = [[dict(m) for m in p] for p in prompts], completions, [torch.tensor(row) for row in ids]
    assert penalty(prompts=copies[0], completions=copies[1], completion_ids=copies[2]) is first
    assert penalty.stats["calls"] == 1, "equal prompts and ids (new objects, tensors) are the same batch"
    changed = [list(ids[0]), [*ids[1][:-2], ids[1][-1]]]
    penalty(prompts=prompts, completions=completions, completion_ids=changed)
    penalty(prompts=prompts[::-1], completions=completions, completion_ids=changed)
    penalty(
        prompts=prompts[::-1],
        completions=completions,
        completion_ids=changed,
        tool_mask=[[1] * len(r) for r in changed],
    )
    assert penalty.stats["calls"] == 4, "another id, prompt order or tool mask is another batch"


def _other_tokenizer():
    """A byte-level BPE policy tokenizer with its own small vocabulary (not Qwen's ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def test_offset_alignment_for_another_tokenizer(stream):
    policy_tok = _other_tokenizer()
    assert not stream.shares_tokenizer(policy_tok)
    ids = [[*policy_tok.encode(TEXTS[0]), policy_tok.eos_token_id]]
    completions = [[{"role": "assistant", "content": TEXTS[0]}]]
    penalty = TokenSafetyPenalty(stream, policy_tokenizer=policy_tok, shaping="prob")
    out = penalty(prompts=PROMPTS[:1], completions=completions, completion_ids=ids)
    assert penalty.stats["aligned"] == 1 and out.rewards.shape == (1, len(ids[0]))
    text, policy_offsets = token_char_offsets(policy_tok, ids[0])
    (r,) = stream.score([[*PROMPTS[0], {"role": "assistant", "content": text}]])
    index = guard_index_for_policy(r.offsets, policy_offsets)
    for k in range(len(ids[0])):
        has_text = policy_offsets[k, 1] > policy_offsets[k, 0]
        g = int(index[k])
        expected = -(float(r.p_unsafe[g]) + float(r.p_controversial[g])) if (g >= 0 and has_text) else 0.0
        assert float(out.rewards[0, k]) == pytest.approx(expected, abs=1e-6)
    assert float(out.rewards[0, -1]) == 0.0  # the EOS has no text


def test_errors_and_pickle(stream_path, qwen_tok):
    prompts, completions, ids = _batch(qwen_tok)
    with pytest.raises(ValueError, match="no policy tokenizer"):
        TokenSafetyPenalty(str(stream_path))(prompts=prompts, completions=completions, completion_ids=ids)
    with pytest.raises(ValueError, match="needs completion_ids"):
        TokenSafetyPenalty(str(stream_path), policy_tokenizer=qwen_tok)(
            prompts=prompts, completions=completions
        )
    for kwargs, match in [
        ({"shaping": "cumulative"}, "first_violation, prob, threshold"),
        ({"shaping": "prob", "hard": True}, "hard=True"),
        ({"hard": True, "controversial": 0.5}, "debounce"),
        ({"thinking": "separate"}, "answer' or 'include"),
        ({"coef": -1.0}, "coef"),
    ]:
        with pytest.raises(ValueError, match=match):
            TokenSafetyPenalty(str(stream_path), **kwargs)
    penalty = TokenSafetyPenalty(str(stream_path), policy_tokenizer=qwen_tok)
    first = penalty(prompts=prompts, completions=completions, completion_ids=ids)
    clone = pickle.loads(pickle.dumps(penalty))
    assert clone.stream._guard is None and clone._cache is None
    again = clone(prompts=prompts, completions=completions, completion_ids=ids)
    torch.testing.assert_close(again.rewards, first.rewards)


def test_include_thinking_scores_the_reasoning(stream, qwen_tok, caplog):
    prompts, completions, ids = _batch(qwen_tok)
    with caplog.at_level(logging.WARNING):
        out = TokenSafetyPenalty(stream, policy_tokenizer=qwen_tok, shaping="prob", thinking="include")(
            prompts=prompts, completions=completions, completion_ids=ids
        )
    (r,) = stream.score_ids(prompts[1:], ids[1:], thinking="include")
    assert r.span[0] <= 2  # from just after <think>
    assert float(out.rewards[1, r.span[0]]) == pytest.approx(
        -float(r.p_unsafe[0] + r.p_controversial[0]), abs=1e-6
    )
