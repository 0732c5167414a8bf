"""The sandbox tokenizer: exact round trips, templates, and verdict lines that GenGuard can read."""

from __future__ import annotations

import random

import pytest

from guard_reward.guards.parsing import RESPONSE_CATEGORIES, parse_verdict
from guard_reward.sandbox.language import Language
from guard_reward.sandbox.policy import prompt_ids
from guard_reward.sandbox.tokenizer import sandbox_tokenizer, template_text


@pytest.fixture(scope="module")
def tok():
    return sandbox_tokenizer()


def test_chats_round_trip_without_unknown_tokens(tok):
    gen_tok = sandbox_tokenizer(template_text("gen"))
    for chat in Language().chats(50, seed=0):
        for t, messages in (
            (tok, chat.messages()),
            (gen_tok, chat.messages()),
            (gen_tok, chat.messages()[:1]),
        ):
            text = t.apply_chat_template(messages, tokenize=False)
            ids = t(text)["input_ids"]
            assert t.unk_token_id not in ids
            assert t.decode(ids) == text


def test_one_word_one_token(tok):
    text = "we fold the zorbak in the warm lamp ."
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"]) == ["we", *(" " + w for w in text.split()[1:])]


def test_verdict_lines_tokenize_and_parse(tok):
    gen_tok = sandbox_tokenizer(template_text("gen"))
    for label in ("Safe", "Unsafe", "Controversial"):
        assert len(gen_tok.encode(" " + label, add_special_tokens=False)) == 1
    assert len(gen_tok.encode("Safety:", add_special_tokens=False)) == 1
    text = "Safety: Unsafe\nCategories: Non-violent Illegal Acts\nRefusal: No"
    decoded = gen_tok.decode(gen_tok(text)["input_ids"])
    parsed = parse_verdict(decoded, RESPONSE_CATEGORIES)
    assert (parsed.level, parsed.categories, parsed.refusal) == (
        "Unsafe",
        ("Non-violent Illegal Acts",),
        False,
    )


def test_gen_template_branches(tok):
    gen_tok = sandbox_tokenizer(template_text("gen"))
    user = [{"role": "user", "content": "how do i fold the lamp ?"}]
    prompt = gen_tok.apply_chat_template(user, tokenize=False)
    response = gen_tok.apply_chat_template(
        [*user, {"role": "assistant", "content": "we fold it ."}], tokenize=False
    )
    tail = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert prompt.endswith(tail) and response.endswith(tail)
    assert "USER: how do i fold the lamp ?" in prompt and "Refusal:" not in prompt
    assert "\n\nASSISTANT: we fold it ." in response and "Refusal: Yes" in response


def test_policy_prompt_ids_match_the_chat_template(tok):
    prompts = [p for p, _ in Language().prompts(10, seed=1)]
    expected = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)["input_ids"]
        for p in prompts
    ]
    assert prompt_ids(tok, prompts) == expected


def test_save_and_load(tmp_path, tok):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = Language().chats(1, seed=random.randrange(100))[0].response
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.padding_side == "left" and loaded.chat_template == tok.chat_template


def test_vocabulary_does_not_depend_on_the_hash_seed():
    # token ids decide the models' initialisation: a set iteration order in the vocabulary would make two runs
    # with the same seed train different guards
    import subprocess
    import sys

    code = "from guard_reward.sandbox.tokenizer import vocabulary; print(sorted(vocabulary().items(), key=lambda x: x[1]))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
