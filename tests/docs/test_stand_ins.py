"""What the documentation's snippets stand on: the stand-in policy's tool-capable chat template, and the hub
cache that maps the real models' ids to the stand-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from guard_reward.tiny.policy import CHATML, policy_tokenizer


def lookup(topic: str) -> str:
    """Look a topic up.

    Args:
        topic: The topic.
    """
    return topic


CALL = {"type": "function", "function": {"name": "lookup", "arguments": {"topic": "the oven"}}}


@pytest.fixture(scope="module")
def tok():
    return policy_tokenizer()


def test_trl_accepts_the_template_for_tool_calling(tok):
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    assert supports_tool_calling(tok)
    assert is_chat_template_prefix_preserving(tok)  # TRL then keeps it for multi-turn training


def test_the_template_has_qwen3s_tool_structure(tok):
    chat = [
        {"role": "user", "content": "Where is the oven?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "name": "lookup", "content": "in the kitchen"},
        {"role": "tool", "name": "lookup", "content": "next to the sink"},
        {"role": "assistant", "content": "In the kitchen."},
    ]
    text = tok.apply_chat_template(chat, tools=[lookup], tokenize=False)
    system, _, rest = text.partition("<|im_end|>\n")
    assert system.startswith("<|im_start|>system\n# Tools\n") and "<tools>\n{" in system
    schema = json.loads(system.split("<tools>\n")[1].split("\n</tools>")[0])
    assert (
        schema["function"]["name"] == "lookup" and "topic" in schema["function"]["parameters"]["properties"]
    )
    assert rest == (
        "<|im_start|>user\nWhere is the oven?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "lookup", "arguments": {"topic": "the oven"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nin the kitchen\n</tool_response>\n<tool_response>\nnext to the sink\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\nIn the kitchen.<|im_end|>\n"
    )


def test_plain_chats_render_as_chatml_and_responses_parse(tok):
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for kw in ({}, {"add_generation_prompt": True}):
        assert tok.apply_chat_template(chat, tokenize=False, **kw) == qwen_tokenizer(
            CHATML
        ).apply_chat_template(chat, tokenize=False, **kw)
    text = (
        'Let me look.\n<tool_call>\n{"name": "lookup", "arguments": {"topic": "x"}}\n</tool_call><|im_end|>'
    )
    parsed = tok.parse_response(text, prefix="<|im_start|>assistant\n")
    assert parsed["content"] == "Let me look."
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "lookup", "arguments": {"topic": "x"}}}
    ]


def test_hub_ids_resolve_offline_to_the_stand_ins(tmp_path):
    """A fresh interpreter with the cache's variables loads ``Qwen/Qwen3Guard-Gen-4B`` from the stand-in folder;
    an id the cache does not hold still fails with the library's offline message."""
    from guard_reward.tiny.hub_cache import build_hub_cache, hub_cache_env
    from guard_reward.tiny.policy import build_tiny_policy

    policy = build_tiny_policy(tmp_path / "policy")
    cache = build_hub_cache(tmp_path / "hub", {"policy": policy, "gen": policy})
    assert (cache / "models--Qwen--Qwen3-0.6B" / "refs" / "main").read_text()
    code = (
        "from transformers import AutoConfig\n"
        "from guard_reward.guards.common import read_config_json\n"
        "print(AutoConfig.from_pretrained('Qwen/Qwen3Guard-Gen-4B').hidden_size)\n"
        "try:\n    read_config_json('Qwen/Qwen3Guard-Gen-99B')\nexcept Exception as e:\n    print(e)\n"
    )
    env = {**os.environ, **hub_cache_env(cache)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.strip().splitlines()[:2]
    assert first == "32"
    assert "Qwen/Qwen3Guard-Gen-99B" in second and "offline" in second
