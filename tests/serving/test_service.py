"""The served guards against the local ones: concurrency, merging, bad items, malformed bodies, OpenRLHF's
``/get_reward``, and faults (a replica killed under load, the HTTP proxy restarted, a client timing out).

All on one local Ray Serve application (``conftest.server``), loopback only.
"""

from __future__ import annotations

import json
import pickle
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from guard_reward import RemoteGenGuard, RemoteStreamGuard
from guard_reward.faults import GUARD_UNAVAILABLE, INVALID_INPUT
from guard_reward.guards.remote import GuardUnavailable, RemoteGuardError
from tests.guards import stream_ckpt

pytestmark = pytest.mark.slow

N_CLIENTS = 32


def conversations(n: int) -> list[list[dict[str, str]]]:
    """``n`` distinct conversations sharing a prompt in pairs (as a GRPO group would)."""
    return [
        [
            {"role": "user", "content": f"How do I make thing number {i // 2}?"},
            {"role": "assistant", "content": f"Answer {i}: carefully, with step {i} first."},
        ]
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def local_gen(server):
    from guard_reward.guards.gen import GenGuard

    return GenGuard.from_pretrained(server.gen_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def local_stream(server):
    return stream_ckpt.guard("single")


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_verdicts_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.level == w.level and g.moderation == w.moderation and g.error == w.error
        assert g.probs.keys() == w.probs.keys()
        for k in w.probs:
            assert abs(g.probs[k] - w.probs[k]) < 1e-5


def assert_risks_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.token_ids, w.token_ids) and torch.equal(g.offsets, w.offsets)
        assert g.span == w.span and g.category_names == w.category_names
        for name in ("p_safe", "p_unsafe", "p_controversial", "category_probs"):
            a, b = getattr(g, name), getattr(w, name)
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert torch.allclose(a, b.float(), atol=1e-5, rtol=0), name
        for k, v in (w.query_probs or {}).items():
            assert abs(g.query_probs[k] - v) < 1e-5


def batch_sizes(server, guard: str) -> list[int]:
    with urllib.request.urlopen(f"{server.url}/v1/stats", timeout=30) as resp:
        return json.loads(resp.read())[guard]["batch_sizes"]


def test_health_names_guards_and_label_maps(server):
    info = RemoteGenGuard(server.url).health()
    assert info["status"] == "ok"
    assert info["guards"]["gen"]["levels"] == ["Safe", "Controversial", "Unsafe"]
    maps = info["guards"]["stream"]["label_maps"]
    assert maps["categories"] == list(stream_ckpt.CUSTOM_CATEGORIES)


def test_concurrent_single_sample_gen_clients_are_merged_and_equal_local(server, local_gen):
    convs = conversations(N_CLIENTS)
    want = local_gen.moderate(convs)
    before = len(batch_sizes(server, "gen"))
    guard = RemoteGenGuard(server.url)
    barrier = threading.Barrier(N_CLIENTS)

    def one(i):
        barrier.wait()
        return guard.moderate([convs[i]])

    with ThreadPoolExecutor(N_CLIENTS) as pool:
        got = list(pool.map(one, range(N_CLIENTS)))
    assert all(len(g) == 1 for g in got)  # every request answered once, in its own place
    assert_verdicts_equal([g[0] for g in got], want)
    sizes = batch_sizes(server, "gen")[before:]
    assert sum(sizes) == N_CLIENTS and max(sizes) > 1, sizes  # concurrent requests merged into one call


def test_concurrent_stream_clients_score_and_score_ids_equal_local(server, local_stream):
    convs = conversations(N_CLIENTS)
    tok = local_stream.tokenizer
    prompts = [c[:1] for c in convs]
    ids = [
        [*tok.encode(c[1]["content"], add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]
        for c in convs
    ]
    want_text = local_stream.score(convs)
    want_ids = local_stream.score_ids(prompts, ids)
    guard = RemoteStreamGuard(server.url)
    barrier = threading.Barrier(N_CLIENTS)

    def one(i):
        barrier.wait()
        if i % 2:
            return guard.score([convs[i]])
        return guard.score_ids([prompts[i]], [ids[i]])

    with ThreadPoolExecutor(N_CLIENTS) as pool:
        got = list(pool.map(one, range(N_CLIENTS)))
    assert_risks_equal([got[i][0] for i in range(1, N_CLIENTS, 2)], want_text[1::2])
    assert_risks_equal([got[i][0] for i in range(0, N_CLIENTS, 2)], want_ids[0::2])
    assert guard.shares_tokenizer(tok) and not guard.shares_tokenizer(stream_ckpt.qwen36_tokenizer())


def test_large_call_is_chunked_and_reassembled_in_order(server, local_gen):
    convs = conversations(23)
    guard = RemoteGenGuard(server.url, chunk_size=4, parallel=3)
    assert_verdicts_equal(guard.moderate(convs), local_gen.moderate(convs))
    clone = pickle.loads(pickle.dumps(guard))  # TRL's async worker pickles rewards and their guards
    assert_verdicts_equal(clone.moderate(convs[:3]), local_gen.moderate(convs[:3]))


def test_bad_items_get_their_own_error_and_the_others_are_answered(server, local_gen):
    convs = conversations(3)
    status, body = post(
        f"{server.url}/v1/gen/moderate", {"conversations": [convs[0], 7, [{"role": "x"}], convs[2]]}
    )
    assert status == 200
    verdicts = body["verdicts"]
    assert len(verdicts) == 4
    assert verdicts[1]["reason"] == INVALID_INPUT and verdicts[1]["level"] is None and verdicts[1]["error"]
    assert verdicts[2]["reason"] == INVALID_INPUT
    want = local_gen.moderate([convs[0], convs[2]])
    for got, w in ((verdicts[0], want[0]), (verdicts[3], want[1])):
        assert got["error"] is None and abs(got["probs"]["Unsafe"] - w.probs["Unsafe"]) < 1e-5
    status, body = post(
        f"{server.url}/v1/stream/score_ids", {"prompts": ["hi", "hi"], "completion_ids": [[9707, 0], ["x"]]}
    )
    assert status == 200 and body["risks"][0]["error"] is None and body["risks"][1]["reason"] == INVALID_INPUT


@pytest.mark.parametrize(
    ("route", "body", "names"),
    [
        ("/v1/gen/moderate", b"{not json", "not valid JSON"),
        ("/v1/gen/moderate", {"conversation": []}, "unknown field(s) conversation"),
        ("/v1/gen/moderate", {"conversations": {}}, "'conversations' must be a list"),
        ("/v1/gen/moderate", {"conversations": [], "decode": "yes"}, "decode must be true or false"),
        ("/v1/stream/score", {"conversations": [], "thinking": "separate"}, "thinking='separate'"),
        ("/v1/stream/score_ids", {"prompts": ["a"], "completion_ids": []}, "1 prompts but 0 completion_ids"),
        ("/get_reward", {"query": ["a"]}, "missing field 'prompts'"),
    ],
)
def test_malformed_body_is_400_naming_the_problem(server, route, body, names):
    status, answer = post(server.url + route, body)
    assert status == 400 and names in answer["error"], answer


def test_remote_guard_raises_on_a_400(server):
    with pytest.raises(RemoteGuardError, match="400"):
        RemoteGenGuard(server.url).moderate([[{"role": "user", "content": "hi"}]], thinking="nonsense")


def test_get_reward_follows_openrlhf_protocol(server, local_gen):
    from guard_reward.rewards.safety import SafetyReward

    chatml = "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    plain = "Tell me a joke."
    queries = [
        chatml + "Mix flour and water.<|im_end|>\n<|endoftext|>",
        plain + " Why did the chicken...",
        "other",
    ]
    status, body = post(
        f"{server.url}/get_reward",
        {"query": queries, "prompts": [chatml, plain, "mismatch"], "labels": [None] * 3},
    )
    assert status == 200, body
    local = SafetyReward(local_gen, mode="soft", refusal=False, failure_value=0.0)
    want = local(
        prompts=[
            [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "How do I bake bread?"}],
            [{"role": "user", "content": plain}],
        ],
        completions=["Mix flour and water.", " Why did the chicken..."],
    )
    assert body["rewards"][:2] == pytest.approx(want, abs=1e-5) and body["scores"] == body["rewards"]
    logs = body["extra_logs"]
    assert logs["guard_failed"] == [0.0, 0.0, 1.0] and body["rewards"][2] == 0.0  # query without its prompt
    assert set(logs) >= {"p_unsafe", "unsafe", "refusal"} and all(len(v) == 3 for v in logs.values())
    assert 0.0 <= logs["p_unsafe"][0] <= 1.0 and logs["judged"] == [1.0, 1.0, 0.0]


def _replica_actors(prefix: str):
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if prefix in a["name"]]
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names]


def test_replica_killed_under_load_every_request_answered_or_failed_explicitly(server, local_gen):
    import ray

    convs = conversations(N_CLIENTS)
    want = local_gen.moderate(convs)
    guard = RemoteGenGuard(server.url, retries=8, backoff=0.5, backoff_max=4.0, timeout=60)
    started = threading.Event()

    def one(i):
        if i == 4:
            started.set()
        return guard.moderate([convs[i]])

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(N_CLIENTS)]
        started.wait(30)
        replicas = _replica_actors("SERVE_REPLICA::guard_reward#GenGuard")
        assert replicas, "no Gen replica actor found"
        ray.kill(replicas[0], no_restart=True)
        got = [f.result(timeout=300)[0] for f in futures]
    answered = [i for i, v in enumerate(got) if v.reason != GUARD_UNAVAILABLE]
    failed = [i for i, v in enumerate(got) if v.reason == GUARD_UNAVAILABLE]
    assert len(answered) + len(failed) == N_CLIENTS  # nothing lost, nothing duplicated
    assert_verdicts_equal([got[i] for i in answered], [want[i] for i in answered])
    assert all(got[i].error and got[i].level is None for i in failed)
    assert len(answered) >= N_CLIENTS // 2, f"only {len(answered)} answered after the restart"
    # the replica is back: a fresh call is answered
    assert_verdicts_equal(guard.moderate(convs[:2]), want[:2])


def test_server_slower_than_timeout_counts_guard_unavailable_and_the_reward_completes(server):
    from guard_reward.rewards.safety import SafetyReward

    slow = RemoteGenGuard(server.url, timeout=0.001, retries=2, backoff=0.01)
    convs = conversations(3)
    verdicts = slow.moderate(convs)
    assert all(v.level is None and v.reason == GUARD_UNAVAILABLE for v in verdicts)
    assert slow.stats[GUARD_UNAVAILABLE] == 3 and slow.stats["requests"] == 3  # 1 chunk x (1 + 2 retries)
    reward = SafetyReward(slow, refusal=False)
    values = reward(prompts=[c[:1] for c in convs], completions=[c[1]["content"] for c in convs])
    assert values == [None, None, None]  # no signal for these samples; the step goes on
    with pytest.raises(GuardUnavailable):
        RemoteGenGuard(server.url, timeout=0.001, retries=0, on_error="raise").moderate(convs)


def test_overload_is_503_with_retry_after_and_the_client_gets_through(server, local_stream):
    """A second application that runs one request at a time per batch and lets one more wait for the guard."""
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build

    options = ServeOptions(
        stream=server.stream_path, cpus_per_replica=0.25, max_batch_size=1,
        max_queued_requests=1, device="cpu", dtype="float32", torch_threads=1,
    )  # fmt: skip
    serve.run(build(options), name="small", route_prefix="/small")
    try:
        url = f"{server.url}/small"
        convs = conversations(24)

        def raw(i):
            req = urllib.request.Request(
                f"{url}/v1/stream/score", data=json.dumps({"conversations": [convs[i]]}).encode()
            )
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    return resp.status, None
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Retry-After")

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(raw, range(24)))
        assert {s for s, _ in answers} <= {200, 503}
        busy = [retry for s, retry in answers if s == 503]
        assert busy and all(retry for retry in busy), answers  # bounded queue, with a retry hint
        assert any(s == 200 for s, _ in answers)
        # the client's retries get every sample through, in place
        guard = RemoteStreamGuard(url, retries=20, backoff=0.05, backoff_max=1.0)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: guard.score([convs[i]])[0], range(8)))
        assert_risks_equal(got, local_stream.score(convs[:8]))
    finally:
        serve.delete("small")


def test_client_recovers_when_the_server_restarts_between_calls(server, local_gen):
    """Last in the module: it restarts the whole application."""
    convs = conversations(2)
    guard = RemoteGenGuard(server.url, retries=6, backoff=0.5, backoff_max=4.0)
    assert_verdicts_equal(guard.moderate(convs), local_gen.moderate(convs))  # leaves a pooled connection
    server.restart()  # that connection is now dead
    assert_verdicts_equal(guard.moderate(convs), local_gen.moderate(convs))
