"""The sandbox guards: labels, on-disk formats, loading through the library's guard classes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from guard_reward.sandbox.guards import RISK_INDEX, _stream_example, guard_chats, verdict_text
from guard_reward.sandbox.language import Chat, Language
from guard_reward.types import LEVELS


def test_verdict_text_by_hand():
    assert verdict_text("we fold the zorbak in the warm lamp .", response=True) == (
        "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    )
    assert verdict_text("sorry i cannot help with that .", response=True) == (
        "Safety: Safe\nCategories: None\nRefusal: Yes"
    )
    assert (
        verdict_text("how do i fold the feldrune ?", response=False)
        == "Safety: Unsafe\nCategories: Unethical Acts"
    )
    assert verdict_text("we fold the mivvel in the warm lamp .", response=True).startswith(
        "Safety: Controversial\n"
    )


def test_stream_labels_by_hand():
    from guard_reward.sandbox.tokenizer import sandbox_tokenizer
    from guard_reward.tiny.stream import QUERY_CATEGORY_NAMES, RESPONSE_CATEGORY_NAMES, stream_chat_template

    tok = sandbox_tokenizer(stream_chat_template())
    chat = Chat("how do i fold the zorbak ?", "we fold the mivvel in the zorbak .", True, "unsafe", "Violent")
    category = {c: i for i, c in enumerate(RESPONSE_CATEGORY_NAMES)}
    query = {c: i for i, c in enumerate(QUERY_CATEGORY_NAMES)}
    e = _stream_example(tok, chat, query, category)
    risk, cat, q_risk, q_cat = e.labels
    n = len(chat.response.split())
    s, u, c = RISK_INDEX["Safe"], RISK_INDEX["Unsafe"], RISK_INDEX["Controversial"]
    assert risk[-n:] == [s, s, s, c, c, c, u, u]
    assert cat[-n:] == [-100] * 6 + [category["Violent"]] * 2
    assert [x for x in q_risk if x != -100] == [u] and [x for x in q_cat if x != -100] == [query["Violent"]]
    assert tok.convert_ids_to_tokens(e.ids)[q_risk.index(u)] == "<|im_end|>"
    assert all(x == -100 for x in risk[:-n])


def test_guard_chats_cover_every_kind_of_answer():
    chats = guard_chats(Language(), random.Random(0), 400)
    from guard_reward.sandbox.rules import judge

    levels = {judge(c.response).level for c in chats}
    assert levels == set(LEVELS)
    assert any(c.response == "" or not judge(c.response).fluent for c in chats)  # cut and salad answers too


def test_gen_checkpoint_format_and_loading(small_world):
    path = small_world.gen_path
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    saved = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    if saved is None:  # transformers 5 writes the template next to the config
        saved = (path / "chat_template.jinja").read_text()
    assert "Safety:" in saved and "ASSISTANT:" in saved
    assert (path / "model.safetensors").exists() and (path / "generation_config.json").exists()
    conv = [
        {"role": "user", "content": "how do i fold the zorbak ?"},
        {"role": "assistant", "content": "we fold it ."},
    ]
    (verdict,) = small_world.gen.moderate([conv])
    assert verdict.level in LEVELS and abs(sum(verdict.probs.values()) - 1) < 1e-5


def test_stream_checkpoint_format_and_loading(small_world):
    from safetensors import safe_open

    from guard_reward.guards.stream_heads import head_shapes
    from guard_reward.tiny.stream import RESPONSE_CATEGORY_NAMES

    path = small_world.stream_path
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForGuardModel"]
    assert config["response_risk_level_map"] == {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    assert tuple(config["response_category_map"].values()) == RESPONSE_CATEGORY_NAMES
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    for name, shape in head_shapes(config).items():
        assert shapes[name] == shape
    assert "model.embed_tokens.weight" in shapes and "lm_head.weight" not in shapes

    prompt, answer = "how do i fold the zorbak ?", "we fold the kite in the warm lamp ."
    (risk,) = small_world.stream.score(
        [[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]]
    )
    assert len(risk) == len(answer.split()) and risk.query_probs is not None
    ids = small_world.tokenizer(answer)["input_ids"] + [small_world.tokenizer.eos_token_id]
    (by_ids,) = small_world.stream.score_ids([[{"role": "user", "content": prompt}]], [ids])
    assert torch.allclose(by_ids.p_unsafe, risk.p_unsafe, atol=1e-5)


@pytest.mark.slow
def test_demo_sized_guards_agree_with_the_ground_truth(tmp_path):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.guards.stream import StreamGuard
    from guard_reward.sandbox.accuracy import guard_accuracy
    from guard_reward.sandbox.demo import DemoConfig
    from guard_reward.sandbox.guards import build_gen_guard, build_stream_guard

    torch.set_num_threads(1)
    config, lang = DemoConfig(), Language()
    gen = GenGuard.from_pretrained(build_gen_guard(tmp_path / "gen", lang, config.gen_size, progress=False))
    stream = StreamGuard.from_pretrained(
        build_stream_guard(tmp_path / "stream", lang, config.stream_size, progress=False)
    )
    chats = guard_chats(lang, random.Random(99), 200)
    acc = guard_accuracy(gen, stream, [c.prompt for c in chats], [c.response for c in chats])
    assert (
        acc.gen_level > 0.95 and acc.gen_refusal > 0.95 and acc.gen_category > 0.9 and acc.gen_prompt > 0.95
    )
    assert acc.stream_response > 0.95 and acc.stream_token > 0.95 and acc.stream_first_violation > 0.9


def test_gen_training_pass_with_shared_prefixes_equals_the_plain_pass(monkeypatch):
    """The Gen guard's training runs the shared instruction header once per batch; its loss and every gradient
    must equal the plain padded pass's (rows of both moderation kinds, and a duplicate row whose verdict tokens
    fall inside a shared level)."""
    from transformers import Qwen3ForCausalLM

    from guard_reward.guards.prefix_sharing import plan_sharing
    from guard_reward.sandbox import guards
    from guard_reward.sandbox.guards import GuardSize, _verdict_loss
    from guard_reward.sandbox.policy import qwen3_sandbox_config
    from guard_reward.sandbox.tokenizer import IM_END, sandbox_tokenizer, template_text
    from guard_reward.tiny.training import batch_tensors, lm_example

    tok = sandbox_tokenizer(template_text("gen"))
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_sandbox_config(tok, **GuardSize().sizes())).train()
    rng, end = random.Random(0), tok.convert_tokens_to_ids(IM_END)
    examples = []
    for i, chat in enumerate(guard_chats(Language(), rng, 12)):
        response = i % 4 != 0
        messages = chat.messages() if response else chat.messages()[:1]
        prompt = tok(tok.apply_chat_template(messages, tokenize=False))["input_ids"]
        verdict = tok(verdict_text(chat.response if response else chat.prompt, response=response))[
            "input_ids"
        ]
        examples.append(lm_example(prompt, [*verdict, end]))
    examples.append(examples[1])
    ids, mask, labels = batch_tensors(examples, tok.pad_token_id)
    keep = labels[0] != -100
    lengths = mask.sum(dim=1).tolist()
    plan = plan_sharing([ids[b, :n].tolist() for b, n in enumerate(lengths)])
    assert plan is not None and plan.shared > 0 and plan.groups, "the batch must take the shared path"

    def loss_and_grads():
        model.zero_grad()
        loss = _verdict_loss(model, ids, mask, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    shared_loss, shared_grads = loss_and_grads()
    plain = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]
    assert torch.allclose(guards.verdict_hidden(model, ids, mask, keep), plain, atol=1e-5)
    monkeypatch.setattr(
        guards,
        "verdict_hidden",
        lambda m, i, m_i, k: m.model(input_ids=i, attention_mask=m_i).last_hidden_state[k],
    )
    plain_loss, plain_grads = loss_and_grads()
    assert torch.allclose(shared_loss, plain_loss, atol=1e-5)
    for a, b in zip(shared_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
