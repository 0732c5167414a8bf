"""The remote client's retry policy and the wire format, without Ray: a stdlib HTTP server that answers 503
(with ``Retry-After``) a set number of times before answering, so the policy is checked deterministically (the
real service's faults are in ``test_service.py``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from guard_reward import RemoteGenGuard
from guard_reward.faults import GUARD_UNAVAILABLE, INVALID_INPUT
from guard_reward.guards.remote import RemoteGuardError
from guard_reward.types import TokenRisk, Verdict
from guard_reward.wire import (
    MAX_REQUEST_BYTES,
    failed_risk,
    risk_from_json,
    risk_to_json,
    verdict_from_json,
    verdict_to_json,
)


class Flaky(ThreadingHTTPServer):
    """Answers 503 to the first ``failures`` POSTs, then one verdict per conversation (``probs`` encode the
    conversation's number, so misplaced results show)."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures, self.status, self.posts = failures, status, 0
        self.sizes: list[int] = []  # conversations per POST
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.posts += 1
            self.server.sizes.append(len(body["conversations"]))
            fail = self.server.posts <= self.server.failures
        if fail:
            payload = json.dumps({"error": "busy"}).encode()
            self.send_response(self.server.status)
            self.send_header("Retry-After", "0.05")
        else:
            verdicts = []
            for conv in body["conversations"]:
                k = int(conv[0]["content"])
                verdicts.append(
                    verdict_to_json(Verdict("Safe", {"Safe": k / 100, "Unsafe": 1 - k / 100}, "prompt"))
                )
            payload = json.dumps({"verdicts": verdicts}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def flaky(request):
    server = Flaky(*request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def convs(n):
    return [[{"role": "user", "content": str(k)}] for k in range(n)]


@pytest.mark.parametrize("flaky", [(2,)], indirect=True)
def test_503s_are_retried_honouring_retry_after_and_chunks_come_back_in_order(flaky):
    guard = RemoteGenGuard(flaky.url, retries=3, backoff=0.01, chunk_size=3, parallel=2)
    start = time.perf_counter()
    verdicts = guard.moderate(convs(10))
    assert time.perf_counter() - start >= 0.05  # waited as the server asked
    assert [round(v.probs["Safe"] * 100) for v in verdicts] == list(range(10))
    assert guard.stats["retries"] == 2 and flaky.posts == 4 + 2


@pytest.mark.parametrize("flaky", [(100,)], indirect=True)
def test_after_the_retries_samples_are_counted_unavailable(flaky):
    guard = RemoteGenGuard(flaky.url, retries=2, backoff=0.0, chunk_size=4)
    verdicts = guard.moderate(convs(6))
    assert all(v.level is None and v.reason == GUARD_UNAVAILABLE and "503" in v.error for v in verdicts)
    assert guard.stats[GUARD_UNAVAILABLE] == 6 and flaky.posts == 2 * 3


@pytest.mark.parametrize("flaky", [(100, 422)], indirect=True)
def test_a_4xx_is_not_retried(flaky):
    with pytest.raises(RemoteGuardError, match="422"):
        RemoteGenGuard(flaky.url, retries=5).moderate(convs(1))
    assert flaky.posts == 1


@pytest.mark.parametrize("flaky", [(0,)], indirect=True)
def test_chunks_are_sized_by_bytes_and_a_sample_over_the_request_limit_is_not_sent(flaky):
    padded = [[{"role": "user", "content": str(k) + " " * 600}] for k in range(10)]  # ~630 bytes of JSON each
    huge = [{"role": "user", "content": "3" + " " * MAX_REQUEST_BYTES}]
    guard = RemoteGenGuard(flaky.url, chunk_size=64, chunk_bytes=2000, parallel=1)
    verdicts = guard.moderate([*padded[:3], huge, *padded[3:]])
    assert flaky.sizes == [3, 3, 3, 1]  # by bytes (3 x 630 < 2000 < 4 x 630), never the huge one
    ks = [None if v.level is None else round(v.probs["Safe"] * 100) for v in verdicts]
    assert ks == [0, 1, 2, None, 3, 4, 5, 6, 7, 8, 9]
    assert verdicts[3].reason == INVALID_INPUT and str(MAX_REQUEST_BYTES) in verdicts[3].error
    assert guard.stats[INVALID_INPUT] == 1


def test_bad_client_options_are_refused():
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        RemoteGenGuard("localhost:8000")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        RemoteGenGuard("http://localhost:8000", timeout=0)
    with pytest.raises(ValueError, match="chunk_bytes must be between 1 and"):
        RemoteGenGuard("http://localhost:8000", chunk_bytes=MAX_REQUEST_BYTES)


def test_wire_round_trip_keeps_every_field():
    part = Verdict(
        "Unsafe", {"Safe": 0.1, "Controversial": 0.2, "Unsafe": 0.7}, "response", categories=("PII",)
    )
    v = Verdict(
        None, {}, "response", parts={"answer": part}, error="x", reason="no_answer", answer_missing=True
    )
    assert verdict_from_json(json.loads(json.dumps(verdict_to_json(v)))) == v
    r = TokenRisk(
        token_ids=torch.tensor([5, 6]),
        offsets=torch.tensor([[0, 1], [1, 3]]),
        p_safe=torch.tensor([0.1, 0.2]),
        p_unsafe=torch.tensor([0.3, 1 / 3]),
        p_controversial=torch.tensor([0.6, 0.4666667]),
        category_probs=torch.rand(2, 3),
        category_names=("a", "b", "c"),
        query_probs={"Safe": 1.0},
        span=(1, 3),
    )
    back = risk_from_json(json.loads(json.dumps(risk_to_json(r))))
    for name in ("token_ids", "offsets", "p_safe", "p_unsafe", "p_controversial", "category_probs"):
        assert torch.equal(getattr(back, name), getattr(r, name)), name  # float32 exactly
    assert (
        back.span == (1, 3) and back.category_names == r.category_names and back.query_probs == r.query_probs
    )
    empty = risk_from_json(
        json.loads(json.dumps(risk_to_json(failed_risk(("a", "b"), "invalid_input", "e", None))))
    )
    assert empty.category_probs.shape == (0, 2) and empty.offsets.shape == (0, 2) and not empty.ok


def _connection_in_child(client, queue):
    queue.put(getattr(client._take(), "from_parent", False))


def test_a_forked_child_does_not_reuse_the_parents_keep_alive_connections():
    # two processes reading one keep-alive socket would mix up their answers
    import multiprocessing

    from guard_reward.guards.remote_client import GuardClient

    client = GuardClient(
        "http://127.0.0.1:9/v1", timeout=1.0, retries=0, backoff=0.1, backoff_max=0.1, chunk_size=1, parallel=1,
        on_error="skip",
    )  # fmt: skip
    parent_conn = client._take()
    parent_conn.from_parent = True
    client._give(parent_conn)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_connection_in_child, args=(client, queue))
    child.start()
    reused = queue.get(timeout=30)
    child.join(30)
    assert reused is False
    assert client._take() is parent_conn  # the parent keeps its own pool
