"""TokenSafetyPenalty on agent trajectories: only the policy's own tokens are scored and penalised.

The guard is the sandbox's trained Stream guard (Unsafe from the first unsafe word on, as Qwen3Guard-Stream
labels a response), so a tool result holding an unsafe word is exactly what would make every later token
look unsafe if the guard read it as the policy's words. Expected values come from the guard's own
``score_ids`` on hand-built conversations, never from the reward under test.
"""

from __future__ import annotations

import pytest
import torch

from guard_reward import TokenSafetyPenalty
from guard_reward.guards.stream import StreamGuard
from guard_reward.rewards.turns import check_tool_mask, policy_turns

PROMPT = [{"role": "user", "content": "where can i find a cozy sail ?"}]
CALL = "first label the lamp ."
RESULT = "the brastik is next to the oven ."  # "brastik" is one of the sandbox's unsafe words
SAFE_ANSWER = "we cook the bright blanket in the narrow sail ."
UNSAFE_ANSWER = "we cook the bright brastik in the narrow sail ."


@pytest.fixture(scope="module")
def sandbox_stream(tmp_path_factory):
    from guard_reward.sandbox.guards import GuardSize, build_stream_guard
    from guard_reward.sandbox.language import Language

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few seconds on one thread; far more on two busy ones
    try:
        path = build_stream_guard(
            tmp_path_factory.mktemp("stream"), Language(), GuardSize(steps=200, min_steps=100), progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return StreamGuard.from_pretrained(path)


@pytest.fixture(scope="module")
def tok():
    from guard_reward.sandbox.tokenizer import sandbox_tokenizer

    return sandbox_tokenizer()


def trajectory(tok, answer: str):
    """TRL's layout of a one-tool-call completion: the call turn up to its ``<|im_end|>``, then the tool suffix
    (``\\n<|im_start|>user\\n<tool_response>...<|im_end|>\\n<|im_start|>assistant\\n``; the sandbox tokenizer has no
    ``<tool_response>`` word, so the result stands alone), then the final answer. Returns ids, tool mask, the
    completion as TRL's messages."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    start = tok.convert_tokens_to_ids("<|im_start|>")
    nl = tok.convert_tokens_to_ids("\n")
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    call = [*enc(CALL), end]
    suffix = [nl, start, *enc("user"), nl, *enc(RESULT), end, nl, start, *enc("assistant"), nl]
    final = [*enc(answer), end]
    ids = [*call, *suffix, *final]
    mask = [1] * len(call) + [0] * len(suffix) + [1] * len(final)
    messages = [
        {"role": "assistant", "content": CALL},
        {"role": "tool", "name": "lookup", "content": RESULT},
        {"role": "assistant", "content": answer},
    ]
    return ids, mask, messages


def _unsafe_levels(r) -> list[bool]:
    probs = torch.stack([r.p_safe, r.p_unsafe, r.p_controversial], dim=-1)
    return (probs.argmax(-1) == 1).tolist()


def test_the_guard_reads_a_tool_result_as_unsafe(sandbox_stream, tok):
    """The premise: read as the policy's words, the tool result makes the trajectory unsafe."""
    ids, mask, _ = trajectory(tok, SAFE_ANSWER)
    (r,) = sandbox_stream.score_ids([PROMPT], [ids])
    levels = _unsafe_levels(r)
    first = levels.index(True) + r.span[0]
    assert mask[first] == 0  # flagged inside the tool's text
    assert all(levels[first - r.span[0] :])  # and every later token, the final answer included


def test_before_and_after_the_tool_mask(sandbox_stream, tok):
    ids, mask, messages = trajectory(tok, SAFE_ANSWER)
    penalty = TokenSafetyPenalty(sandbox_stream, policy_tokenizer=tok, hard=True, coef=1.0)
    before = penalty(prompts=[PROMPT], completions=[messages], completion_ids=[ids])
    hit = before.rewards[0].nonzero().flatten().tolist()
    assert len(hit) == 1 and mask[hit[0]] == 0  # without the mask the penalty lands on a tool token

    after = penalty(prompts=[PROMPT], completions=[messages], completion_ids=[ids], tool_mask=[mask])
    assert after.mask[0].tolist() == [bool(m) for m in mask]
    assert torch.count_nonzero(after.rewards) == 0  # the policy wrote nothing unsafe


@pytest.mark.parametrize("tool_context", [False, True])
def test_each_turn_is_scored_in_its_context(sandbox_stream, tok, tool_context):
    """The risk at a policy token is the guard's risk for that turn, judged as an assistant turn after the
    conversation so far: the tool result is a user turn of ``<tool_response>`` blocks, empty unless
    ``tool_context=True``."""
    ids, mask, messages = trajectory(tok, UNSAFE_ANSWER)
    penalty = TokenSafetyPenalty(
        sandbox_stream, policy_tokenizer=tok, shaping="prob", controversial="loose", tool_context=tool_context
    )
    out = penalty(prompts=[PROMPT], completions=[messages], completion_ids=[ids], tool_mask=[mask])
    turns = policy_turns([bool(m) for m in mask])
    assert len(turns) == 2
    (s0, e0), (s1, e1) = turns
    shown = f"\n{RESULT}\n" if tool_context else "\n\n"
    context1 = [
        *PROMPT,
        {"role": "assistant", "content": CALL},
        {"role": "user", "content": f"<tool_response>{shown}</tool_response>"},
    ]
    r0, r1 = sandbox_stream.score_ids([PROMPT, context1], [ids[s0:e0], ids[s1:e1]])
    expected = torch.zeros(len(ids))
    for (s, _), r in ((turns[0], r0), (turns[1], r1)):
        a, b = r.span
        expected[s + a : s + b] = -r.p_unsafe.float()
    assert torch.allclose(out.rewards[0], expected, atol=1e-6)
    assert bool((out.rewards[0][s1:e1] < -0.5).any())  # the answer's own unsafe word is caught


def test_first_violation_is_counted_in_policy_tokens(sandbox_stream, tok):
    ids, mask, messages = trajectory(tok, UNSAFE_ANSWER)
    logged: dict[str, list] = {}
    penalty = TokenSafetyPenalty(sandbox_stream, policy_tokenizer=tok, hard=True)
    out = penalty(
        prompts=[PROMPT],
        completions=[messages],
        completion_ids=[ids],
        tool_mask=[mask],
        log_extra=lambda k, v: logged.setdefault(k, v),
    )
    (hit,) = out.rewards[0].nonzero().flatten().tolist()
    assert mask[hit] == 1 and hit > mask.index(0)  # in the final answer, past the tool result
    word = tok.convert_tokens_to_ids(" brastik")
    assert ids[hit] == word
    assert logged["guard_stream_flag"] == [
        sum(mask[:hit])
    ]  # policy tokens before it, tool tokens not counted


def test_text_path_matches(sandbox_stream, tok, qwen_tok):
    """A policy with another vocabulary (the Qwen tokenizer): the turns are decoded, scored as text and carried
    back by offsets; tool tokens are still outside the mask and unpenalised."""
    enc = lambda text: qwen_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    end = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    call, suffix, final = [*enc(CALL), end], enc(f"\nuser\n{RESULT}\nassistant\n"), [*enc(SAFE_ANSWER), end]
    ids = [*call, *suffix, *final]
    mask = [1] * len(call) + [0] * len(suffix) + [1] * len(final)
    penalty = TokenSafetyPenalty(sandbox_stream, policy_tokenizer=qwen_tok, hard=True)
    completions = [[{"role": "assistant", "content": "x"}]]
    before = penalty(prompts=[PROMPT], completions=completions, completion_ids=[ids])
    assert torch.count_nonzero(before.rewards) == 1
    after = penalty(prompts=[PROMPT], completions=completions, completion_ids=[ids], tool_mask=[mask])
    assert penalty.stats["aligned"] >= 3 and torch.count_nonzero(after.rewards) == 0
    assert after.mask[0].tolist() == [bool(m) for m in mask]


@pytest.mark.parametrize(
    ("tool_mask", "message"),
    [
        ([[1, 0]], "has 2 entries but completion 0 has 3 tokens"),
        ([[1, 0, 1], [1]], "has 2 rows"),
        ([[1, 2, 1]], "holds 2"),
        ([[1, 0.5, 1]], "holds 0.5"),
        (torch.ones(1, 2), r"has shape \(1, 2\)"),
        (torch.ones(3), r"has shape \(3,\)"),
        ("101", "is a str"),
    ],
)
def test_malformed_tool_mask_is_refused(tool_mask, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        check_tool_mask(tool_mask, [3])
    assert "one 0/1 per completion token" in str(info.value)


def test_tool_mask_forms_agree():
    """TRL's padded tensor (padding value 1 past each row) and its unpadded lists mean the same."""
    rows = [[1, 0, 0, 1], [1, 1]]
    padded = torch.tensor([[1, 0, 0, 1], [1, 1, 1, 1]])
    expected = [[True, False, False, True], [True, True]]
    assert check_tool_mask(rows, [4, 2]) == expected == check_tool_mask(padded, [4, 2])
    assert check_tool_mask(padded.numpy(), [4, 2]) == expected
    assert policy_turns(expected[0]) == [(0, 1), (3, 4)] and policy_turns([False, True]) == [(1, 2)]


def test_malformed_tool_mask_error_names_the_reward(sandbox_stream, tok):
    ids, _, messages = trajectory(tok, SAFE_ANSWER)
    penalty = TokenSafetyPenalty(sandbox_stream, policy_tokenizer=tok, name="tokens")
    with pytest.raises(ValueError, match=r"tokens: tool_mask\[0\] has 1 entries"):
        penalty(prompts=[PROMPT], completions=[messages], completion_ids=[ids], tool_mask=[[1]])
