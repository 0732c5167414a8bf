"""GenGuard on tiny stand-in checkpoints: exact probabilities against a plain reference, invariance, dedup,
thinking modes, context policy and loading."""

import socket

import pytest
import torch

from guard_reward.guards.gen import GenGuard

CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Sure, here is a long answer. " * 6},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate 你好 and مرحبا 🙂"},
        {"role": "assistant", "content": "Hello and hello."},
        {"role": "user", "content": "Thanks!"},
    ],
    [{"role": "user", "content": "x"}],
]
LABELS = ("Safe", "Controversial", "Unsafe")


def close(p, q, tol=1e-5) -> bool:
    return all(abs(p[k] - q[k]) < tol for k in LABELS)


def reference_probs(guard: GenGuard, conversation) -> torch.Tensor:
    """Slow and obvious: one full forward per label over prompt + 'Safety:' + label, summing log-probs."""
    tok, model = guard.tokenizer, guard.model
    prompt = tok.encode(tok.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)
    prompt += tok.encode("Safety:", add_special_tokens=False)
    scores = []
    for label in LABELS:
        label_ids = tok.encode(" " + label, add_special_tokens=False)
        with torch.no_grad():
            hidden = model.model(torch.tensor([prompt + label_ids])).last_hidden_state[0]
            logp = torch.log_softmax(model.lm_head(hidden[len(prompt) - 1 :]).float(), dim=-1)
        scores.append(sum(logp[k, t] for k, t in enumerate(label_ids)))
    return torch.softmax(torch.stack(scores), dim=0)


@pytest.fixture(scope="module")
def guard(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path, dtype="float32")


def test_controversial_is_several_tokens(guard):
    assert len(guard.tokenizer.encode(" Controversial", add_special_tokens=False)) > 1
    assert guard.tree.node_ids.numel() >= 1


def test_probs_match_the_plain_reference(guard):
    verdicts = guard.moderate(CONVERSATIONS)
    for conv, verdict in zip(CONVERSATIONS, verdicts):
        ref = reference_probs(guard, conv)
        got = torch.tensor([verdict.probs[label] for label in LABELS])
        assert torch.allclose(got, ref, atol=1e-5), (got, ref)
        assert abs(sum(verdict.probs.values()) - 1) < 1e-6
        assert verdict.level == LABELS[int(ref.argmax())]
    assert [v.moderation for v in verdicts] == ["prompt", "response", "prompt", "prompt"]


def test_batch_and_padding_invariance(guard):
    alone = [guard.moderate([c])[0].probs for c in CONVERSATIONS]
    for budget in (512, 100_000):  # several micro-batches, then one padded batch
        guard.token_budget = budget
        together = guard.moderate(CONVERSATIONS[::-1])[::-1]
        for a, b in zip(alone, together):
            assert close(a, b.probs)
    guard.token_budget = 16384


def test_identical_conversations_are_judged_once(guard):
    guard.stats.clear()
    verdicts = guard.moderate([CONVERSATIONS[1], CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[1]])
    assert guard.stats["judged"] == 2 and guard.stats["deduplicated"] == 2
    assert verdicts[0] == verdicts[2] == verdicts[3]


def test_thinking_modes(guard):
    reasoning, answer = "Let me think about bread.", "Knead the dough."
    conv = [
        {"role": "user", "content": "bread?"},
        {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"},
    ]
    as_answer = lambda text: [conv[0], {"role": "assistant", "content": text}]  # noqa: E731
    only_answer = guard.moderate([conv], thinking="answer")[0]
    assert close(only_answer.probs, guard.moderate([as_answer(answer)])[0].probs)
    whole = guard.moderate([conv], thinking="whole")[0]
    assert close(whole.probs, guard.moderate([as_answer(conv[1]["content"])], thinking="whole")[0].probs)
    assert not close(whole.probs, only_answer.probs, tol=1e-9)
    sep = guard.moderate([conv], thinking="separate")[0]
    r, a = sep.parts["reasoning"], sep.parts["answer"]
    assert close(r.probs, guard.moderate([as_answer(reasoning)])[0].probs)
    assert close(a.probs, only_answer.probs)
    assert sep.probs["Safe"] == pytest.approx(r.probs["Safe"] * a.probs["Safe"])
    assert sep.probs["Unsafe"] == pytest.approx(1 - (1 - r.probs["Unsafe"]) * (1 - a.probs["Unsafe"]))
    assert sum(sep.probs.values()) == pytest.approx(1.0)
    # without a think block, "separate" judges the answer alone
    plain = guard.moderate([as_answer(answer)], thinking="separate")[0]
    assert plain.parts is None and close(plain.probs, only_answer.probs)


def test_context_policy_trims_earlier_turns(tiny_gen_path):
    small = GenGuard.from_pretrained(tiny_gen_path, max_length=420)
    long_turns = [
        {"role": "user", "content": "old question " * 40},
        {"role": "assistant", "content": "old answer " * 40},
        {"role": "user", "content": "new question"},
        {"role": "assistant", "content": "new answer"},
    ]
    verdict = small.moderate([long_turns])[0]
    assert verdict.truncated and small.stats["truncated"] == 1
    expected = small.moderate([long_turns[2:]])[0]
    assert not expected.truncated
    assert close(verdict.probs, expected.probs)
    with pytest.raises(ValueError, match="context window"):
        small.moderate([[{"role": "user", "content": "word " * 500}]])


@pytest.mark.parametrize(
    ("conversations", "error", "match"),
    [
        ([[]], ValueError, "empty"),
        (
            [[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]],
            ValueError,
            "last message",
        ),
        ([[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]], ValueError, "last message"),
        ([[{"role": "user", "content": ["part"]}]], TypeError, "content must be a string"),
        ([[{"role": "robot", "content": "a"}]], ValueError, "unknown role"),
        ([{"role": "user", "content": "a"}], TypeError, "list of conversations"),
        (["just a string"], TypeError, "list of"),
    ],
)
def test_bad_input(guard, conversations, error, match):
    with pytest.raises(error, match=match):
        guard.moderate(conversations)


def test_bad_thinking_option(guard):
    with pytest.raises(ValueError, match="thinking"):
        guard.moderate(CONVERSATIONS[:1], thinking="both")


def test_checkpoint_without_chat_template(tmp_path):
    from guard_reward.tiny.gen import build_tiny_gen

    path = build_tiny_gen(tmp_path / "g", hidden_size=32, num_hidden_layers=1)
    (path / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        GenGuard.from_pretrained(path)


def test_non_gen_checkpoints(tmp_path):
    import json

    from guard_reward.tiny.gen import build_tiny_gen

    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    plain = build_tiny_gen(tmp_path / "plain", chat_template=chatml, hidden_size=32, num_hidden_layers=1)
    with pytest.raises(ValueError, match="not a Qwen3Guard-Gen"):
        GenGuard.from_pretrained(plain)
    config = json.loads((plain / "config.json").read_text())
    config["architectures"] = ["Qwen3ForGuardModel"]
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="StreamGuard"):
        GenGuard.from_pretrained(plain)
    config["architectures"] = ["Qwen3ForSequenceClassification"]
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="causal LM"):
        GenGuard.from_pretrained(plain)


def test_local_folder_never_touches_the_network(tiny_gen_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    guard = GenGuard.from_pretrained(tiny_gen_path)
    assert guard.device == torch.device("cpu")
    assert guard.moderate(CONVERSATIONS[:1])[0].ok
