"""The service under real traffic, through the default HAProxy front: a client that gives up never strands one
merged with it, answers far over gRPC's 4 MiB default come back, a body over the limit is a 413, and
``/get_reward`` merges concurrent single-sample calls and queues them rather than answering 503.

One application of its own (``/fresh``) beside the session's: its batchers start with the first request this
module sends (that request's context is what a batch worker used to inherit), and its queue is tiny.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from guard_reward.wire import MAX_REQUEST_BYTES
from tests.serving.test_service import conversations

pytestmark = pytest.mark.slow

#: a response of ~1100 guard tokens
LONG = " ".join(f"word{i % 97} and" for i in range(300))


@pytest.fixture(scope="module")
def fresh(server):
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build, wait_healthy

    options = ServeOptions(
        gen=server.gen_path, stream=server.stream_path, cpus_per_replica=0.25, max_batch_size=32,
        batch_wait_ms=500, batch_quiet_ms=200, max_queued_requests=8, device="cpu", dtype="float32",
        torch_threads=1, reward_config={"guard_mode": "soft", "refusal": False},  # one guard call per request
    )  # fmt: skip
    serve.run(build(options), name="fresh", route_prefix="/fresh")
    url = f"{server.url}/fresh"
    wait_healthy(url, timeout=120)
    yield url
    serve.delete("fresh")


def post(url: str, body: bytes | dict, timeout: float = 120) -> tuple[int | str, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:  # the client's own timeout
        return type(exc).__name__, b""


def gen_batch_sizes(url: str) -> list[int]:
    with urllib.request.urlopen(f"{url}/v1/stats", timeout=30) as resp:
        return json.loads(resp.read())["gen"]["batch_sizes"]


def test_a_client_that_gives_up_does_not_strand_the_one_merged_with_it(fresh):
    """First in the module: the impatient request is the first the Gen batcher sees (it used to start the batch
    worker inside that request, and Serve cancelled the merged call with it)."""
    patient_convs = [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": LONG + str(i)}]
        for i in range(96)
    ]
    answers: dict[str, tuple] = {}

    def send(name: str, convs: list, timeout: float) -> None:
        answers[name] = post(f"{fresh}/v1/gen/moderate", {"conversations": convs}, timeout)

    impatient = threading.Thread(target=send, args=("impatient", conversations(1), 1.0))
    patient = threading.Thread(target=send, args=("patient", patient_convs, 60.0))
    impatient.start()
    time.sleep(0.05)  # it arrives first, and both arrive within the batch's quiet gap
    patient.start()
    impatient.join()
    patient.join()
    assert gen_batch_sizes(fresh) == [2]  # one merged guard call
    assert answers["impatient"][0] == "TimeoutError"  # it gave up while the guard ran
    status, body = answers["patient"]
    assert status == 200, body[:300]
    verdicts = json.loads(body)["verdicts"]
    assert len(verdicts) == 96 and all(v["error"] is None for v in verdicts)


def test_a_stream_answer_over_8_mib_comes_back_through_haproxy(fresh):
    convs = [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": LONG}] for i in range(32)
    ]
    status, body = post(f"{fresh}/v1/stream/score", {"conversations": convs})
    assert status == 200, body[:300]  # it was a 500 RESOURCE_EXHAUSTED over 4 MiB
    assert len(body) > 8 * 2**20
    risks = json.loads(body)["risks"]
    assert len(risks) == 32 and all(r["error"] is None and len(r["p_unsafe"]) > 1000 for r in risks)


def test_a_body_over_the_limit_is_a_413_naming_it(fresh):
    big = {"conversations": [[{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 10)}]]}
    status, body = post(f"{fresh}/v1/gen/moderate", big)
    assert status == 413
    assert "16 MiB" in json.loads(body)["error"]


def test_the_ingress_limits_follow_the_guard_queues():
    """Serve's limits of the ingress come from the service's options: its slots hold every guard's queue and
    running batches plus the spare ones, and Serve's own queue never refuses (only the service's does)."""
    from guard_reward.serving.app import INGRESS_SPARE, ServeOptions, build, ingress_limits

    for kw, guards in (({"gen": "g"}, 1), ({"gen": "g", "stream": "s", "replicas": 3}, 2)):
        options = ServeOptions(**kw, max_queued_requests=100, max_batch_size=8)
        limits = ingress_limits(options)
        assert limits["max_ongoing_requests"] == guards * (100 + options.replicas * 8) + INGRESS_SPARE
        assert limits["max_queued_requests"] == -1
        ingress = build(options)._bound_deployment  # what serve.run deploys
        assert (ingress.max_ongoing_requests, ingress.max_queued_requests) == tuple(limits.values())


def test_get_reward_merges_concurrent_single_sample_calls_and_queues_past_the_limit(fresh):
    """160 concurrent calls against a guard queue of 8 and 144 ingress slots: /v1 routes would answer 503;
    /get_reward waits in line, in the guard's queue and then in Serve's before the ingress."""
    prompt = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    before = len(gen_batch_sizes(fresh))
    n = 160

    def one(i: int) -> tuple[int | str, bytes]:
        body = {"query": [f"{prompt}Answer {i}<|im_end|>"], "prompts": [prompt], "labels": [""]}
        return post(f"{fresh}/get_reward", body, timeout=180)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    assert [status for status, _ in answers] == [200] * n
    assert all(len(json.loads(body)["rewards"]) == 1 for _, body in answers)
    sizes = gen_batch_sizes(fresh)[before:]
    assert sum(sizes) == n
    assert max(sizes) >= 16, sizes  # merged well past the thread pool's size (2-6 on 2 CPUs before)
