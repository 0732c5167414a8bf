"""OpenAIGenGuard's protocol and arithmetic against a small stand-in HTTP server (the real vLLM is tested in
tests/vllm): which prompts carry which label positions, how the label log-probabilities add up, and the one clear
error for a server that cannot serve the guard. The server here stands in for the transport only; no model."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from guard_reward.guards.gen import gen_label_tree
from guard_reward.guards.gen_spec import is_server_spec, load_gen_guard, parse_server_spec
from guard_reward.guards.openai_gen import OpenAIGenGuard, ServerMismatch, _trie_paths


def fake_logprob(tail: list[int], token: int) -> float:
    """A deterministic, position-dependent log-probability (what the stand-in server answers)."""
    return -((sum(tail[-3:]) * 7 + token * 13) % 97) / 10.0


class Fake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, honour_ids: bool = True, models: tuple[str, ...] = ("guard",), root: str | None = None
    ):
        super().__init__(("127.0.0.1", 0), Handler)
        self.honour_ids, self.models, self.root = honour_ids, models, root
        self.bodies: list[dict] = []
        self.fail_next = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Fake

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        cards = [{"id": m, "root": self.server.root or m, "max_model_len": 4096} for m in self.server.models]
        self._send(200, {"data": cards})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        if self.server.fail_next:
            self.server.fail_next -= 1
            return self._send(503, {"error": {"message": "overloaded"}})
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            asked = body["logprob_token_ids"] if self.server.honour_ids else []
            top = {f"token_id:{t}": fake_logprob(prompt, t) for t in asked}
            choices.append({"index": i, "logprobs": {"tokens": ["token_id:151645"], "top_logprobs": [top]}})
        self._send(200, {"choices": choices})


@pytest.fixture
def fake():
    servers: list[Fake] = []

    def make(**kw) -> Fake:
        server = Fake(**kw)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_each_label_is_the_sum_of_its_token_log_probabilities_renormalised(fake, tiny_gen_path):
    server = fake(root=str(tiny_gen_path))
    guard = OpenAIGenGuard(server.url)
    conv = [{"role": "user", "content": "How do I bake bread?"}]
    verdict = guard.moderate([conv])[0]
    tree = gen_label_tree(guard.tokenizer)
    ids = guard.tokenizer.encode(
        guard.tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False
    )
    paths = _trie_paths(tree)
    assert len(paths) == 3  # the prefix end and the two inner tokens of " Controversial"
    scores = {}
    for label, steps in zip(tree.labels, tree.label_steps, strict=True):
        scores[label] = sum(fake_logprob(ids + list(tree.prefix_ids) + paths[pos], tok) for pos, tok in steps)
    total = sum(math.exp(s) for s in scores.values())
    assert verdict.probs == pytest.approx({k: math.exp(s) / total for k, s in scores.items()}, abs=1e-12)
    scoring = server.bodies[-1]  # after the first-call probe: one request, every position of the unit
    assert [p[len(ids) :] for p in scoring["prompt"]] == [list(tree.prefix_ids) + p for p in paths]
    assert scoring["max_tokens"] == 1 and scoring["return_tokens_as_token_ids"] is True
    assert sorted(scoring["logprob_token_ids"]) == sorted({t for s in tree.label_steps for _, t in s})


def test_a_server_that_ignores_logprob_token_ids_is_one_clear_error(fake, tiny_gen_path):
    server = fake(honour_ids=False, root=str(tiny_gen_path))
    with pytest.raises(ServerMismatch, match=r"logprob_token_ids.*Accepted: an OpenAI-compatible server"):
        OpenAIGenGuard(server.url).moderate([[{"role": "user", "content": "hi"}]])


def test_a_model_without_the_gen_template_is_one_clear_error(fake, tmp_path):
    from guard_reward.tiny.policy import CHATML
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    qwen_tokenizer(CHATML).save_pretrained(tmp_path / "chat")
    server = fake(root=str(tmp_path / "chat"))
    with pytest.raises(ServerMismatch, match="does not ask for a 'Safety:' verdict"):
        OpenAIGenGuard(server.url).moderate([[{"role": "user", "content": "hi"}]])


def test_no_model_named_with_several_served_names_them(fake, tiny_gen_path):
    server = fake(models=("a", "b"))
    with pytest.raises(ServerMismatch, match=r"serves \['a', 'b'\]; name one"):
        OpenAIGenGuard(server.url).connect()
    assert OpenAIGenGuard(server.url, "b", tokenizer=str(tiny_gen_path)).connect().model == "b"


def test_overload_is_retried_and_an_unreachable_server_is_counted(fake, tiny_gen_path):
    server = fake(root=str(tiny_gen_path))
    guard = OpenAIGenGuard(server.url, backoff=0.01).connect()
    server.fail_next = 2
    assert guard.moderate([[{"role": "user", "content": "hi"}]])[0].ok
    assert guard.client.stats["retries"] == 2
    server.shutdown()
    server.server_close()
    guard.client.retries, guard.client.timeout = 1, 2.0
    out = guard.moderate([[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]])
    assert [v.reason for v in out] == ["guard_unavailable"] * 2 and guard.stats["guard_unavailable"] == 2


def test_the_spec_form():
    assert is_server_spec("openai+http://h:8000/v1?model=Qwen/Qwen3Guard-Gen-4B")
    assert not is_server_spec("Qwen/Qwen3Guard-Gen-4B") and not is_server_spec("http://h:8000")
    url, opts = parse_server_spec(
        "openai+https://h:8000/v1?model=Qwen/Qwen3Guard-Gen-4B&parallel=8&timeout=30"
    )
    assert url == "https://h:8000/v1" and opts == {
        "model": "Qwen/Qwen3Guard-Gen-4B",
        "parallel": 8,
        "timeout": 30.0,
    }
    with pytest.raises(ValueError, match="unknown option 'modle'; accepted: model, tokenizer"):
        parse_server_spec("openai+http://h:8000?modle=x")
    with pytest.raises(ValueError, match="parallel='many' is not a int"):
        parse_server_spec("openai+http://h:8000?parallel=many")
    with pytest.raises(TypeError, match=r"does not take \['attn_implementation'\]"):
        load_gen_guard("openai+http://h:8000", attn_implementation="sdpa")
    guard = load_gen_guard("openai+http://h:8000?model=m", device="cpu", dtype="float32", thinking="whole")
    assert guard.url == "http://h:8000/v1" and guard.model == "m" and guard.thinking == "whole"


def test_eval_records_a_served_judge_as_it_is():
    from guard_reward.cli.eval import _source

    assert _source("openai+http://h:8000/v1?model=a/b") == "openai+http://h:8000/v1?model=a/b"
