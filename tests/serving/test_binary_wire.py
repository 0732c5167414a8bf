"""Stream answers in binary form through the live service: asked for with ``Accept``, the default of
``RemoteStreamGuard``, the same tensors bit for bit as the JSON answers; JSON stays the answer for anyone else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch

from guard_reward import RemoteStreamGuard
from guard_reward.wire import BINARY_MEDIA_TYPE, TOKEN_FIELDS, risks_from_bytes

CONVS = [
    [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "I cannot help."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
    [{"role": "assistant", "content": ""}],  # a bad item keeps its place, with a reason
]


def _same(a, b) -> bool:
    tensors = all(
        getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(getattr(a, f), getattr(b, f))
        for f in TOKEN_FIELDS
    )
    return tensors and (a.category_names, a.span, a.reason, a.query_probs) == (
        b.category_names,
        b.span,
        b.reason,
        b.query_probs,
    )


def test_binary_answers_equal_json_answers_bit_for_bit(server, monkeypatch):
    from guard_reward.guards import remote_client

    read = []
    monkeypatch.setattr(
        remote_client, "risks_from_bytes", lambda data: read.append(1) or risks_from_bytes(data)
    )
    binary, plain = RemoteStreamGuard(server.url), RemoteStreamGuard(server.url, binary=False)
    assert binary.binary and not plain.binary
    a, b = binary.score(CONVS), plain.score(CONVS)
    assert read == [1]  # the default client read a binary answer; the JSON client did not
    assert len(a) == len(b) == 3 and all(_same(x, y) for x, y in zip(a, b))
    assert a[0].p_unsafe.numel() > 0 and a[2].reason == b[2].reason
    ids = [[9707, 0, 2585], [40, 1079]]
    a, b = binary.score_ids(["Hi", "Hello"], ids), plain.score_ids(["Hi", "Hello"], ids)
    assert all(_same(x, y) for x, y in zip(a, b)) and a[0].span == b[0].span


def test_the_answer_is_binary_only_when_asked_for(server):
    body = json.dumps({"conversations": CONVS[:2]}).encode()

    def post(headers: dict[str, str]) -> tuple[str, bytes]:
        req = urllib.request.Request(
            f"{server.url}/v1/stream/score", body, {"Content-Type": "application/json", **headers}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.headers["Content-Type"], resp.read()

    kind, payload = post({"Accept": BINARY_MEDIA_TYPE})
    assert kind.startswith(BINARY_MEDIA_TYPE) and len(risks_from_bytes(payload)) == 2
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):  # curl, other languages
        kind, payload = post(headers)
        assert kind.startswith("application/json") and len(json.loads(payload)["risks"]) == 2


def test_a_penalty_fetches_only_the_shaping_fields_and_gives_the_same_rewards(server):
    from guard_reward import TokenSafetyPenalty
    from guard_reward.wire import SHAPING_FIELDS, TOKEN_FIELDS
    from tests.guards import stream_ckpt

    asked = []

    class Recording(RemoteStreamGuard):  # the real client, noting the fields each call asks for
        def score(self, *args, **kw):
            asked.append(("score", kw.get("fields")))
            return super().score(*args, **kw)

        def score_ids(self, *args, **kw):
            asked.append(("score_ids", kw.get("fields")))
            return super().score_ids(*args, **kw)

    prompts = ["How do I pick a lock?", "Hi"]
    completions = ["I cannot help with that, sorry.", "Hello! How can I help you today?"]
    full, lean = RemoteStreamGuard(server.url, fields=tuple(TOKEN_FIELDS)), Recording(server.url)
    for tok in (stream_ckpt.guard("single").tokenizer, stream_ckpt.qwen36_tokenizer()):  # ids, then text
        ids = [tok.encode(c, add_special_tokens=False) for c in completions]
        want, got = (
            TokenSafetyPenalty(g, policy_tokenizer=tok, hard=True, coef=1.0)(prompts, completions, ids)
            for g in (full, lean)
        )
        assert torch.equal(want.rewards, got.rewards) and torch.equal(want.mask, got.mask)
        assert want.rewards.abs().sum() > 0
    assert asked == [("score_ids", ("p_safe", "p_unsafe", "p_controversial")), ("score", SHAPING_FIELDS)]
    risks = lean.score_ids(prompts, [[9707, 0, 2585], [40, 1079]], fields=SHAPING_FIELDS)
    assert risks[0].p_unsafe.numel() > 0 and risks[0].category_probs.isnan().all()  # not fetched: not a value


def test_an_unknown_field_is_a_400_naming_it_and_the_accepted_ones(server):
    body = json.dumps({"conversations": CONVS[:1], "fields": ["p_unsafe", "unsafe"]}).encode()
    req = urllib.request.Request(f"{server.url}/v1/stream/score", body, {"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=60)
        raise AssertionError("expected a 400")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        message = json.loads(exc.read())["error"]
    assert "'unsafe'" in message and "accepted: token_ids, offsets, p_safe" in message
    with pytest.raises(ValueError, match="accepted"):
        RemoteStreamGuard(server.url, fields=["unsafe"])
