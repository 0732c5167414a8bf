"""TurnSafetyReward: each assistant turn's Gen value on its own tokens, against values written out by hand.

The trajectories are built token by token with Qwen's tokenizer the way TRL's tool loop lays them out: the
policy's turns (tool calls rendered as Qwen3 writes them, ``<|im_end|>`` closing each) and tool results between
them (mask 0). ``WordGuard`` (Unsafe iff the judged answer holds an unsafe word) stands in for the Gen model.
"""

from __future__ import annotations

import logging

import pytest
import torch

from guard_reward import SafetyReward, TurnSafetyReward
from guard_reward.rewards.turns import TURN_COUNT_MISMATCH, TURN_NOT_FOUND
from guard_reward.types import DenseRewards
from tests.rewards.test_agent_trajectories import HARMFUL, WordGuard, call, rendered, tool_turn

IM_END = 151645
SEARCH = {"query": "lunch menu"}
EMAIL = {"to": "team", "body": "Step 1: buy a detonator"}
TURNS = [  # the policy's three turns: a safe tool call, an unsafe tool call, a safe answer
    tool_turn(call("search", **SEARCH)),
    tool_turn(call("send_email", **EMAIL)),
    {"role": "assistant", "content": "I sent the email."},
]
TURN_TEXT = [rendered("search", SEARCH), rendered("send_email", EMAIL), "I sent the email."]
RESULTS = ["pasta", "sent"]


def completion(turns=TURNS) -> list[dict]:
    out = []
    for k, turn in enumerate(turns):
        out.append(turn)
        if k < len(RESULTS) and k < len(turns) - 1:
            out.append({"role": "tool", "name": "t", "content": RESULTS[k]})
    return out


def token_layout(tok, texts=TURN_TEXT, end=True) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """``(ids, tool_mask, spans)``: each turn's tokens then ``<|im_end|>``, tool results in between (mask 0)."""
    ids: list[int] = []
    mask: list[int] = []
    spans = []
    for k, text in enumerate(texts):
        turn = [*tok.encode(text), IM_END] if end or k < len(texts) - 1 else tok.encode(text)
        spans.append((len(ids), len(ids) + len(turn)))
        ids += turn
        mask += [1] * len(turn)
        if k < len(texts) - 1:
            tool = tok.encode(f"\n<|im_start|>user\n<tool_response>\n{RESULTS[k]}\n</tool_response><|im_end|>\n"
                              "<|im_start|>assistant\n")  # fmt: skip
            ids += tool
            mask += [0] * len(tool)
    return ids, mask, spans


@pytest.fixture
def guard():
    return WordGuard()


def safety(guard, **kw):
    return SafetyReward(guard, refusal=False, eos_token_ids=[IM_END], **kw)


def test_each_turn_gets_its_own_value_on_its_last_token(qwen_tok, guard):
    ids, mask, spans = token_layout(qwen_tok)
    reward = TurnSafetyReward(safety(guard), policy_tokenizer=qwen_tok)
    rewards, on = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
    want = torch.zeros(1, len(ids))
    want_mask = torch.zeros(1, len(ids), dtype=torch.bool)
    for (start, end), value in zip(spans, [1.0, -1.0, 1.0], strict=True):
        want[0, end - 1] = value
        want_mask[0, start:end] = True
    assert torch.equal(rewards, want) and torch.equal(on, want_mask)
    assert safety(WordGuard())([HARMFUL], [completion()], completion_ids=[ids]) == [-1.0]  # the scalar: worst


def test_spread_divides_each_value_over_its_turn(qwen_tok, guard):
    ids, mask, spans = token_layout(qwen_tok)
    reward = TurnSafetyReward(safety(guard), placement="spread", coef=0.5, policy_tokenizer=qwen_tok)
    rewards, _ = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
    for (start, end), value in zip(spans, [1.0, -1.0, 1.0], strict=True):
        assert torch.allclose(rewards[0, start:end], torch.full((end - start,), 0.5 * value / (end - start)))
        assert float(rewards[0, start:end].sum()) == pytest.approx(0.5 * value)
    assert torch.count_nonzero(rewards[0][~torch.tensor(mask, dtype=torch.bool)]) == 0


def test_the_scalar_call_of_the_same_batch_is_reused(qwen_tok, guard):
    ids, mask, _ = token_layout(qwen_tok)
    scalar = safety(guard)
    logged: list[tuple[str, float]] = []

    def log_metric(key, value):
        logged.append((key, value))

    args = dict(completion_ids=[ids], tool_mask=[mask], log_metric=log_metric)
    assert scalar([HARMFUL], [completion()], **args) == [-1.0]
    n_calls, n_unsafe = len(guard.calls), sum(k == "guard/unsafe_rate" for k, _ in logged)
    TurnSafetyReward(scalar, policy_tokenizer=qwen_tok)([HARMFUL], [completion()], **args)
    assert len(guard.calls) == n_calls  # judged once
    assert sum(k == "guard/unsafe_rate" for k, _ in logged) == n_unsafe  # logged once
    assert ("guard/turn_placed_rate", 1.0) in logged


def test_turns_last_places_only_the_final_turn(qwen_tok, guard):
    ids, mask, spans = token_layout(qwen_tok)
    reward = TurnSafetyReward(safety(guard, turns="last"), policy_tokenizer=qwen_tok)
    rewards, on = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
    start, end = spans[-1]
    assert on[0].nonzero().flatten().tolist() == list(range(start, end))
    assert rewards[0].nonzero().flatten().tolist() == [end - 1] and float(rewards[0, end - 1]) == 1.0


def test_a_cut_off_last_turn_gets_truncated_value(qwen_tok, guard):
    ids, mask, spans = token_layout(qwen_tok, end=False)
    reward = TurnSafetyReward(safety(guard, truncated_value=0.25), policy_tokenizer=qwen_tok)
    rewards, _ = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
    assert [float(rewards[0, end - 1]) for _, end in spans] == [1.0, -1.0, 0.25]


def test_stream_says_where_an_unsafe_turn_went_wrong(qwen_tok, guard):
    ids, mask, spans = token_layout(qwen_tok)
    flagged = {spans[0][0] + 2, spans[1][0] + 5}  # Stream flags a token in turn 1 (judged safe) and in turn 2

    def stream(prompts, completions, completion_ids, tool_mask=None, **kwargs):
        rewards = torch.zeros(1, len(ids))
        rewards[0, sorted(flagged)] = -1.0
        return DenseRewards(rewards, torch.tensor([mask], dtype=torch.bool))

    reward = TurnSafetyReward(safety(guard), violations=stream, policy_tokenizer=qwen_tok)
    rewards, _ = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
    # the unsafe turn's -1 moves to Stream's token; the safe turn keeps +1 on its last token; nothing is added
    assert {i: float(rewards[0, i]) for i in rewards[0].nonzero().flatten().tolist()} == {
        spans[0][1] - 1: 1.0,
        spans[1][0] + 5: -1.0,
        spans[2][1] - 1: 1.0,
    }


@pytest.mark.parametrize(
    "case,reason",
    [("two runs for three turns", TURN_COUNT_MISMATCH), ("no tool mask", TURN_COUNT_MISMATCH),
     ("turns out of order", TURN_NOT_FOUND), ("malformed completion", "not_split")],
)  # fmt: skip
def test_bad_input_gets_no_turn_signal_and_is_counted(qwen_tok, guard, caplog, case, reason):
    ids, mask, spans = token_layout(qwen_tok)
    comp = completion()
    if case == "two runs for three turns":
        mask = [
            1 if i < spans[2][0] else m for i, m in enumerate(mask)
        ]  # the last tool result marked as policy
    elif case == "no tool mask":
        mask = None
    elif case == "turns out of order":
        comp = completion([TURNS[1], TURNS[0], TURNS[2]])
    else:
        comp = [*comp, {"role": "narrator", "content": "?"}]
    good_ids, good_mask, _ = token_layout(qwen_tok)
    batch = dict(completion_ids=[ids, good_ids], tool_mask=[mask, good_mask])
    completions = [comp, completion()]
    if mask is None:  # the other sample: a single turn, which needs no mask
        batch = dict(completion_ids=[ids, good_ids[: spans[0][1]]])
        completions = [comp, completion()[:1]]
    reward = TurnSafetyReward(safety(guard), policy_tokenizer=qwen_tok)
    with caplog.at_level(logging.WARNING):
        rewards, on = reward([HARMFUL, HARMFUL], completions, **batch)
    assert not bool(on[0].any()) and torch.count_nonzero(rewards[0]) == 0
    assert bool(on[1].any())  # the rest of the batch keeps its signal
    assert reward.unplaced[reason] == 1
    assert "gets no turn-level reward" in caplog.text and reason in caplog.text


def test_a_single_turn_completion_needs_no_tool_mask(qwen_tok, guard):
    ids = [*qwen_tok.encode("Mix the explosive powder."), IM_END]
    reward = TurnSafetyReward(safety(guard), policy_tokenizer=qwen_tok)
    rewards, on = reward([HARMFUL], ["Mix the explosive powder."], completion_ids=[ids])
    assert bool(on.all()) and rewards[0].tolist() == [0.0] * (len(ids) - 1) + [-1.0]


def test_constructor_errors(guard):
    with pytest.raises(TypeError, match="SafetyReward"):
        TurnSafetyReward(lambda **kw: [1.0])
    with pytest.raises(ValueError, match=r"placement='first'.*last, spread"):
        TurnSafetyReward(safety(guard), placement="first")
    assert TurnSafetyReward(safety(guard)).__name__ == "guard_safety_turns"


def test_place_turn_values_matches_the_reward_from_a_mask_alone(qwen_tok, guard):
    from guard_reward.rewards.turn_level import place_turn_values

    ids, mask, _ = token_layout(qwen_tok)
    for placement in ("last", "spread"):
        reward = TurnSafetyReward(safety(WordGuard()), placement=placement, policy_tokenizer=qwen_tok)
        rewards, _ = reward([HARMFUL], [completion()], completion_ids=[ids], tool_mask=[mask])
        placed = place_turn_values([1.0, -1.0, 1.0], mask, placement)
        assert torch.equal(placed, rewards[0])
    assert torch.count_nonzero(place_turn_values([float("nan"), None, 2.0], mask)) == 1
    with pytest.raises(ValueError, match="4 turn values for 3 runs"):
        place_turn_values([1.0] * 4, mask)
