"""GuardRewardModel in the main environment: the sequence-classifier protocol TRL 1.9-1.12's PPOTrainer uses,
prompt/response splitting, weights and ``None`` handling. (The run inside TRL 1.12.0 itself is in
test_reward_model_trl112.py.)"""

from __future__ import annotations

import pytest
import torch

from guard_reward.integrations.trl import GuardRewardModel
from guard_reward.integrations.trl.reward_model import generation_prompt
from tests.integrations.ppo_tiny import policy_tokenizer

CONVERSATIONS = [
    (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}],
        "Knead it.",
    ),
    ([{"role": "user", "content": "Hi"}], "Hello there, friend"),
]


@pytest.fixture(scope="module")
def tok():
    return policy_tokenizer()


class Recorder:
    __name__ = "recorder"

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                           "kwargs": sorted(kwargs)})  # fmt: skip
        return self.fn(prompts, completions, completion_ids, kwargs)


def _batch(tok, conversations=CONVERSATIONS, eos=(True, False), extra_pad=2):
    """Left-padded prompts + right-padded responses, as PPOTrainer concatenates them (pads are the pad id)."""
    prompts = [list(tok.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"])
               for p, _ in conversations]  # fmt: skip
    responses = [tok(r, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if e else [])
                 for (_, r), e in zip(conversations, eos, strict=True)]  # fmt: skip
    wp, wr = max(map(len, prompts)), max(map(len, responses)) + extra_pad
    pad = tok.pad_token_id
    rows = [
        [pad] * (wp - len(p)) + p + r + [pad] * (wr - len(r)) for p, r in zip(prompts, responses, strict=True)
    ]
    return torch.tensor(rows), wp, responses


def _read_like_ppo_trainer(model, query_responses, pad_id, context_length):
    """What TRL 1.9-1.12's PPOTrainer does with a reward model: backbone on the masked ids, score head, the
    value at the last non-pad token of the response."""
    attention_mask = query_responses != pad_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(
        input_ids=query_responses.masked_fill(~attention_mask, 0), attention_mask=attention_mask,
        position_ids=position_ids, return_dict=True, output_hidden_states=True, use_cache=False,
    )  # fmt: skip
    logits = model.score(out.hidden_states[-1])
    response_pad = query_responses[:, context_length:] == pad_id
    first_pad = torch.where(response_pad.any(1), response_pad.float().argmax(1), response_pad.new_full(
        (len(response_pad),), response_pad.shape[1], dtype=torch.long))  # fmt: skip
    return logits[torch.arange(len(logits)), first_pad - 1 + context_length].squeeze(-1)


def test_generation_prompt_is_derived_from_the_chat_template(tok):
    assert generation_prompt(tok) == "<|im_start|>assistant\n"
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    with pytest.raises(ValueError, match="response_marker"):
        generation_prompt(qwen_tokenizer())  # no chat template


def test_scores_land_where_ppo_trainer_reads_them(tok):
    rec = Recorder(lambda p, c, ids, kw: [10.0 * len(x) + len(m) for m, x in zip(p, ids, strict=True)])
    model = GuardRewardModel(rec, tok)
    ids, ctx, responses = _batch(tok)
    scores = _read_like_ppo_trainer(model, ids, tok.pad_token_id, ctx)
    # hand-computed: 10 * response tokens (EOS included when generated) + number of prompt messages
    assert scores.tolist() == [10.0 * len(responses[0]) + 2, 10.0 * len(responses[1]) + 1]
    assert scores.dtype == torch.float32
    call = rec.calls[-1]
    assert call["prompts"] == [c[0] for c in CONVERSATIONS]
    assert call["completions"] == [[{"role": "assistant", "content": c[1]}] for c in CONVERSATIONS]
    assert call["completion_ids"] == responses
    assert {"log_metric", "log_extra", "trainer_state"} <= set(call["kwargs"])
    # the plain forward gives the same numbers as (B, 1) logits
    assert (
        model(ids, attention_mask=(ids != tok.pad_token_id).long()).logits[:, 0].tolist() == scores.tolist()
    )


def test_weights_none_and_metrics(tok):
    def first(p, c, ids, kw):
        kw["log_metric"]("guard/unsafe_rate", 0.5)
        kw["log_extra"]("guard_verdict", ["Safe", "Unsafe"])
        return [1.0, None]

    def second(p, c, ids, kw):
        return [2.0, 3.0]

    ids, ctx, _ = _batch(tok)
    model = GuardRewardModel([Recorder(first), Recorder(second)], tok, reward_weights=[1.0, 0.5])
    assert _read_like_ppo_trainer(model, ids, tok.pad_token_id, ctx).tolist() == [2.0, 1.5]
    assert model.last_metrics == {"guard/unsafe_rate": 0.5}
    assert model.last_extra == {"guard_verdict": ["Safe", "Unsafe"]}

    nothing = Recorder(lambda p, c, i, kw: [None, 4.0])
    with pytest.raises(ValueError, match="none_score"):
        _read_like_ppo_trainer(GuardRewardModel(nothing, tok), ids, tok.pad_token_id, ctx)
    scores = _read_like_ppo_trainer(
        GuardRewardModel(nothing, tok, none_score=-3.0), ids, tok.pad_token_id, ctx
    )
    assert scores.tolist() == [-3.0, 4.0]


def test_plain_text_prompts_with_a_custom_marker(tok):
    rec = Recorder(lambda p, c, ids, kw: [0.0] * len(p))
    model = GuardRewardModel(rec, tok, response_marker="\nAnswer:")
    pad = tok.pad_token_id
    texts = [("Question: is the sky blue?", " Yes."), ("Question: 2+2?", " Four")]
    rows = [tok(q + "\nAnswer:" + a, add_special_tokens=False)["input_ids"] for q, a in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    model(ids, attention_mask=ids != pad)
    assert rec.calls[-1]["prompts"] == [q for q, _ in texts]
    assert rec.calls[-1]["completions"] == [a for _, a in texts]


def test_row_without_the_marker_is_an_error(tok):
    model = GuardRewardModel(Recorder(lambda p, c, i, kw: [0.0] * len(p)), tok)
    ids = torch.tensor([tok("no chat template here", add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match=r"row 0.*response_marker"):
        model(ids)


def test_constructor_errors(tok):
    with pytest.raises(TypeError, match="reward_funcs"):
        GuardRewardModel([], tok)
    with pytest.raises(ValueError, match="reward_weights"):
        GuardRewardModel([Recorder(None)], tok, reward_weights=[1.0, 2.0])
