"""Turn splitting: mask runs against a plain loop, tool results rendered once, verl's response rebuilt."""

from __future__ import annotations

import random

import pytest

from guard_reward.conversations import flatten_tools, read_tool_responses, render_tool_responses
from guard_reward.rewards.turns import (
    EMPTY_TOOL_RESPONSE,
    mask_runs,
    policy_turns,
    tool_messages,
    tool_results,
    turn_contexts,
    turns_from_chatml,
    turns_from_mask,
)

IM_START, IM_END = 151644, 151645


def _loop_runs(keep):
    """Runs written out: a new run starts wherever the value changes."""
    runs = []
    for t, k in enumerate(keep):
        if runs and runs[-1][2] == k:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1, k])
    return [tuple(r) for r in runs]


def test_mask_runs_match_a_plain_loop():
    rng = random.Random(0)
    for _ in range(200):
        keep = [rng.random() < 0.6 for _ in range(rng.randrange(0, 12))]
        runs = mask_runs(keep)
        assert runs == _loop_runs(keep)
        assert [k for s, e, own in runs for k in [own] * (e - s)] == keep  # the runs tile the mask
        assert policy_turns(keep) == [(s, e) for s, e, own in runs if own]
    assert mask_runs([]) == [] and policy_turns([False, False]) == []


def test_tool_results_render_as_the_template_does():
    assert (
        render_tool_responses(["a", "b"])
        == "<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>"
    )
    assert EMPTY_TOOL_RESPONSE == "<tool_response>\n\n</tool_response>"
    for contents in (["a"], ["multi\nline", "", "x"], []):
        assert read_tool_responses("user\n" + render_tool_responses(contents) + "\nassistant") == contents
    assert read_tool_responses("<tool_response>tight</tool_response>") == ["tight"]
    completion = [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "two"},
        {"role": "assistant", "content": "ok"},
        {"role": "tool", "content": "three"},
    ]
    flat = flatten_tools(completion)
    users = [m["content"] for m in flat if m["role"] == "user"]
    assert users == tool_results(completion)  # one rendering for both the message and the token paths
    assert [m["role"] for m in flat] == ["assistant", "user", "assistant", "user"]
    assert tool_results("plain text") is None
    # verl's side reads the blocks back
    assert [m["content"] for m in tool_messages(users[0])] == ["one", "two"]


def test_turn_contexts_put_each_tool_run_between_the_turns(qwen_tok):
    own = [qwen_tok.encode("Let me look."), qwen_tok.encode("Done.")]
    tool = qwen_tok.encode("RESULT")
    ids = [*own[0], *tool, *own[1]]
    keep = [True] * len(own[0]) + [False] * len(tool) + [True] * len(own[1])
    prompt = [{"role": "user", "content": "hi"}]
    shown, hidden = (turn_contexts(qwen_tok, prompt, None, ids, keep, tool_text=t) for t in (True, False))
    assert [(s, e) for s, e, _ in shown] == policy_turns(keep)
    assert shown[0][2] == prompt
    assert shown[1][2] == [*prompt, {"role": "assistant", "content": "Let me look."},
                           {"role": "user", "content": "RESULT"}]  # fmt: skip
    assert hidden[1][2][-1] == {"role": "user", "content": EMPTY_TOOL_RESPONSE}


def test_turns_from_mask_rebuild_the_messages(qwen_tok):
    first, answer = qwen_tok.encode("Calling."), qwen_tok.encode("All good.")
    block = qwen_tok.encode("<tool_response>\nsunny\n</tool_response>")
    tool = [IM_END, *qwen_tok.encode("\n"), IM_START, *qwen_tok.encode("user\n"), *block, IM_END]
    ids = [*first, *tool, *answer]
    mask = [1] * len(first) + [0] * len(tool) + [1] * len(answer)
    assert turns_from_mask(qwen_tok, ids, mask) == [
        {"role": "assistant", "content": "Calling."},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "All good."},
    ]
    assert turns_from_mask(qwen_tok, first, [1] * len(first)) == [
        {"role": "assistant", "content": "Calling."}
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("just an answer<|im_end|>", None),
        (
            "Calling.<|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nAll good.<|im_end|>",
            [
                {"role": "assistant", "content": "Calling."},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "All good."},
            ],
        ),
    ],
)
def test_turns_from_chatml(text, expected):
    assert turns_from_chatml(text) == expected
