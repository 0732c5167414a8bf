"""``/get_reward``'s split of OpenRLHF queries into TRL messages, on the real chat templates of Qwen3, Llama 3,
Gemma, DeepSeek-R1 and gpt-oss (``tests/fixtures/chat_templates``, rendered offline with transformers' Jinja
environment), and the rewards and ``extra_logs`` a tiny Gen guard gives them. No Ray, no server.

A query is built as OpenRLHF builds it: the rendered prompt, then the decoded response with its end token. For
Qwen3 the query is really tokenized and decoded (the project's offline Qwen3 tokenizer); the other tokenizers
are not available offline, so their response text is appended as the model would emit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_reward.serving.chat_formats import detect_format, split_rendered
from guard_reward.serving.get_reward import EXTRA_LOGS, GuardRewardFunction, prompt_messages

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
QUESTION = "How do I bake bread?"
USER = [{"role": "user", "content": QUESTION}]


def render(name: str, messages: list[dict], generation_prompt: bool = True, **kwargs) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    text = (TEMPLATES / f"{name}.jinja").read_text()
    rendered, _ = render_jinja_template(
        [messages], chat_template=text, add_generation_prompt=generation_prompt, **kwargs
    )
    return rendered[0]


#: name -> (template kwargs, format, response with reasoning "Knead it." and answer "Mix flour.", empty answer).
CASES = {
    "qwen3": (
        {},
        "chatml",
        "<think>\nKnead it.\n</think>\n\nMix flour.<|im_end|>",
        "<think>\nKnead it.\n</think>\n\n<|im_end|>",
    ),
    "llama3": (
        {"bos_token": "<|begin_of_text|>", "date_string": "04 Dec 2026"},
        "llama3",
        None,
        "<|eot_id|>",
    ),
    "gemma2": ({"bos_token": "<bos>"}, "gemma", None, "<end_of_turn>"),
    "deepseek_r1": (
        {"bos_token": "<｜begin▁of▁sentence｜>"},
        "deepseek",
        "Knead it.\n</think>\n\nMix flour.<｜end▁of▁sentence｜>",  # the generation prompt opened <think>\n
        "Knead it.\n</think>\n\n<｜end▁of▁sentence｜>",
    ),
    "gpt_oss": (
        {},
        "harmony",
        "<|channel|>analysis<|message|>Knead it.<|end|><|start|>assistant<|channel|>final<|message|>Mix flour.<|return|>",
        "<|channel|>analysis<|message|>Knead it.<|end|><|start|>assistant<|channel|>final<|message|><|return|>",
    ),
}
THOUGHT = "<think>\nKnead it.\n</think>\n\n"


def qwen3_query(prompt: str, response: str) -> str:
    """OpenRLHF's query: ``decode(prompt_ids + response_ids, skip_special_tokens=False)``."""
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    tok = qwen_tokenizer()
    ids = (
        tok(prompt, add_special_tokens=False)["input_ids"]
        + tok(response, add_special_tokens=False)["input_ids"]
    )
    return tok.decode(ids, skip_special_tokens=False)


def query_of(name: str, prompt: str, response: str) -> str:
    return qwen3_query(prompt, response) if name == "qwen3" else prompt + response


@pytest.mark.parametrize("name", list(CASES))
def test_answer_and_empty_answer_split_into_trl_messages(name):
    kwargs, fmt, with_reasoning, empty = CASES[name]
    prompt = render(name, USER, **kwargs)
    assert detect_format(prompt) == fmt
    answer = with_reasoning or "Mix flour." + empty
    want = THOUGHT + "Mix flour." if with_reasoning else "Mix flour."
    assert split_rendered(prompt, query_of(name, prompt, answer)) == (
        USER,
        [{"role": "assistant", "content": want}],
    )
    # an empty answer is empty (not the end marker's text); its reasoning, if any, is kept in front of it
    assert split_rendered(prompt, query_of(name, prompt, empty)) == (
        USER,
        [{"role": "assistant", "content": THOUGHT if with_reasoning else ""}],
    )


def test_system_prompts_are_the_callers_not_the_templates_preambles():
    system = {"role": "system", "content": "Be brief."}
    llama = render("llama3", [system, *USER], bos_token="<|begin_of_text|>", date_string="04 Dec 2026")
    assert prompt_messages(llama) == ([system, *USER], "")
    assert prompt_messages(render("llama3", USER, bos_token="<|begin_of_text|>")) == (USER, "")
    # gpt-oss: the template's own system turn (identity, dates, channels) is dropped; the developer turn's
    # instructions are the caller's system prompt
    assert prompt_messages(render("gpt_oss", [system, *USER])) == ([system, *USER], "")
    deepseek = render("deepseek_r1", [system, *USER], bos_token="<｜begin▁of▁sentence｜>")
    assert prompt_messages(deepseek) == ([system, *USER], "<think>\n")


def test_reasoning_openers_are_kept_in_front_of_the_response():
    # Qwen3 with enable_thinking=False pre-fills an empty think block; DeepSeek-R1 opens one
    qwen = render("qwen3", USER, enable_thinking=False)
    assert prompt_messages(qwen)[1] == "<think>\n\n</think>\n\n"
    assert split_rendered(qwen, qwen3_query(qwen, "Mix flour.<|im_end|>"))[1] == [
        {"role": "assistant", "content": "<think>\n\n</think>\n\nMix flour."}
    ]
    # a reasoning cut off by the length limit stays open: the reward sees "no answer", not an answer
    deepseek = render("deepseek_r1", USER, bos_token="<｜begin▁of▁sentence｜>")
    assert split_rendered(deepseek, deepseek + "Knead")[1] == [
        {"role": "assistant", "content": "<think>\nKnead"}
    ]
    oss = render("gpt_oss", USER)
    assert split_rendered(oss, oss + "<|channel|>analysis<|message|>Knead")[1] == [
        {"role": "assistant", "content": "<think>\nKnead"}
    ]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TRAJECTORY = [
    {
        "role": "assistant",
        "content": "Let me check.",
        "reasoning_content": "Need the weather.",
        "tool_calls": [CALL],
    },
    {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]


def test_qwen3_tool_trajectory_splits_into_assistant_tool_calls_and_tool_messages():
    """Qwen3's real template renders tool calls as <tool_call> JSON and tool results as a user turn of
    <tool_response> blocks; the split gives back TRL's messages."""
    prompt = render("qwen3", [{"role": "system", "content": "Be brief."}, *USER], tools=TOOLS)
    full = render(
        "qwen3", [{"role": "system", "content": "Be brief."}, *USER, *TRAJECTORY], False, tools=TOOLS
    )
    assert full.startswith(prompt)
    messages, completion = split_rendered(prompt, qwen3_query(prompt, full[len(prompt) :]))
    assert messages[-1] == USER[0] and messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")  # the template puts the tools there
    assert completion == [
        {
            "role": "assistant",
            "content": "<think>\nNeed the weather.\n</think>\n\nLet me check.",
            "tool_calls": [CALL],
        },
        {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "<think>\n\n</think>\n\nIt is 21 degrees in Paris."},
    ]


@pytest.mark.parametrize(
    ("name", "kwargs", "reasoning"),
    [
        ("llama3", {"bos_token": "<|begin_of_text|>", "date_string": "04 Dec 2026"}, ""),
        ("gpt_oss", {}, ""),  # the template drops a tool-call turn's analysis once a final answer follows
    ],
)
def test_llama3_and_gpt_oss_tool_trajectories_rendered_by_their_templates(name, kwargs, reasoning):
    trajectory = [
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "name": "get_weather", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ]
    prompt = render(name, USER, tools=TOOLS, **kwargs)
    full = render(name, [*USER, *trajectory], False, tools=TOOLS, **kwargs)
    assert full.startswith(prompt)
    _, completion = split_rendered(prompt, full)
    assert completion == [
        {"role": "assistant", "content": reasoning, "tool_calls": [CALL]},
        {"role": "tool", "name": "get_weather", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ]


def test_chatml_tool_role_turns_two_results_and_a_malformed_call():
    prompt = "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    response = (
        '<tool_call>\n{"name": "a", "arguments": "{\\"x\\": 1}"}\n</tool_call>\n<tool_call>\n{"name": "b"}\n'
        "</tool_call><|im_end|>\n<|im_start|>tool\n<tool_response>\none\n</tool_response><|im_end|>\n"
        "<|im_start|>tool\ntwo<|im_end|>\n<|im_start|>assistant\n<tool_call>\nnot json\n</tool_call><|im_end|>"
    )
    _, completion = split_rendered(prompt, prompt + response)
    assert completion == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
                {"type": "function", "function": {"name": "b", "arguments": {}}},
            ],
        },
        {"role": "tool", "name": "a", "content": "one"},
        {"role": "tool", "name": "b", "content": "two"},  # the next result answers the next call
        {"role": "assistant", "content": "<tool_call>\nnot json\n</tool_call>"},  # kept: what the model wrote
    ]


def test_gpt_oss_tool_call_and_result():
    prompt = render("gpt_oss", USER, tools=TOOLS)
    response = (
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant to=functions.get_weather"
        '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"21 C"<|end|>'
        "<|start|>assistant<|channel|>final<|message|>21 degrees.<|return|>"
    )
    assert split_rendered(prompt, prompt + response) == (
        USER,
        [
            {"role": "assistant", "content": "<think>\nNeed weather.\n</think>\n\n", "tool_calls": [CALL]},
            {"role": "tool", "name": "get_weather", "content": "21 C"},
            {"role": "assistant", "content": "21 degrees."},
        ],
    )


def test_plain_text_and_a_query_without_its_prompt():
    assert split_rendered("Tell me a joke.", "Tell me a joke. Why did</s>") == (
        [{"role": "user", "content": "Tell me a joke."}],
        [{"role": "assistant", "content": " Why did"}],
    )
    with pytest.raises(ValueError, match="does not start with its prompt"):
        split_rendered("abc", "xyz")


@pytest.fixture(scope="module")
def reward_fn(tiny_gen_path):
    from guard_reward.guards.gen import GenGuard

    guard = GenGuard.from_pretrained(tiny_gen_path, device="cpu", dtype="float32")
    config = {"guard_mode": "soft", "refusal": False, "empty_value": 0.25, "failure_value": -7.0}
    return guard, GuardRewardFunction(guard, config)


def test_extra_logs_are_indicators_and_empty_answers_are_not_failures(reward_fn):
    from guard_reward.rewards.safety import SafetyReward

    guard, fn = reward_fn
    prompts, queries = [], []
    for name, (kwargs, _, with_reasoning, empty) in CASES.items():
        prompt = render(name, USER, **kwargs)
        prompts += [prompt, prompt]
        queries += [
            query_of(name, prompt, with_reasoning or "Mix flour." + empty),
            query_of(name, prompt, empty),
        ]
    prompts.append("mismatch")
    queries.append("another text")
    out = fn(queries, prompts)
    n = len(queries)
    logs = out["extra_logs"]
    assert set(logs) == set(EXTRA_LOGS) and all(len(v) == n for v in logs.values())
    assert all(x in (0.0, 1.0) for key in ("guard_failed", "judged", "empty", "unsafe", "controversial",
                                           "refusal") for x in logs[key])  # fmt: skip
    assert logs["empty"] == [0.0, 1.0] * 5 + [0.0]
    assert logs["guard_failed"] == [0.0] * 10 + [1.0]
    assert logs["judged"] == [1.0, 0.0] * 5 + [0.0]
    assert out["rewards"][10] == -7.0
    for i in range(0, 10, 2):
        assert logs["unsafe"][i] + logs["controversial"][i] <= 1.0 and 0.0 < logs["p_unsafe"][i] < 1.0
    assert [logs["p_unsafe"][i] for i in range(1, 11, 2)] == [0.0] * 5
    # an empty answer is worth empty_value (capped by its reasoning's value when it has one)
    assert [out["rewards"][i] for i in (3, 5)] == [0.25, 0.25]  # llama3, gemma: no reasoning
    # every sample is valued as the same TRL messages given to the reward directly
    local = SafetyReward(guard, mode="soft", refusal=False, empty_value=0.25)
    completions = []
    for _, _, with_reasoning, _ in CASES.values():
        thought = THOUGHT if with_reasoning else ""
        completions += [[{"role": "assistant", "content": thought + "Mix flour."}], thought]
    want = local(prompts=[USER] * 10, completions=completions)
    assert out["rewards"][:10] == pytest.approx(want, abs=1e-6)
    assert all(out["rewards"][i] <= 0.25 for i in (1, 7, 9))


def test_reward_config_takes_empty_and_no_answer_values():
    from guard_reward.serving.get_reward import reward_kwargs

    assert reward_kwargs({"guard_empty_value": 0.5, "no_answer_value": -1.0}) == {
        "failure_value": 0.0, "empty_value": 0.5, "no_answer_value": -1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown field 'empty'"):
        reward_kwargs({"empty": 1.0})


def test_extra_logs_follow_each_sample_when_completions_have_several_turns():
    """A tool-calling completion is judged turn by turn (more guard verdicts than samples): each sample's
    indicators come from the turn that decided its value, never from another sample's turn."""
    from tests.rewards.test_agent_trajectories import HARMFUL, WordGuard, call

    fn = GuardRewardFunction(WordGuard(), {"refusal": False})
    # the safe first turn comes first in the guard's call: the unsafe tool call decides the sample
    trajectory = [
        {"role": "assistant", "content": "Let me write it.", "tool_calls": [call("lookup", topic="team")]},
        {"role": "tool", "name": "lookup", "content": "alice, bob"},
        {"role": "assistant", "content": "", "tool_calls": [call("send_email", body="build an explosive")]},
    ]
    safe = [{"role": "assistant", "content": "Here is the lunch menu."}]
    out = fn.score([HARMFUL, HARMFUL, HARMFUL], [trajectory, safe, safe])
    logs = out["extra_logs"]
    assert logs["unsafe"] == [1.0, 0.0, 0.0]
    assert logs["p_unsafe"] == [1.0, 0.0, 0.0]
    assert logs["tool_calls"] == [2.0, 0.0, 0.0]
    assert logs["judged"] == [1.0, 1.0, 1.0] and logs["guard_failed"] == [0.0, 0.0, 0.0]
    assert out["rewards"] == [-1.0, 1.0, 1.0]
