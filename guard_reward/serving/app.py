"""The Ray Serve application: one deployment per guard and an HTTP ingress.

The ingress parses bodies (400 on a malformed one) and merges concurrent requests for a guard
(:class:`~guard_reward.serving.batcher.RequestBatcher`) into ONE call of a guard replica, which runs them as one
call of the guard's own micro-batching (token budget, length sorting, prefix sharing and dedupe then work across
requests). Merging before the hop to the replica means one actor call per batch, not per request: the replica's
process spends its CPU on the guard. Too many waiting requests (``max_queued_requests``) or a lost replica
become 503 with ``Retry-After``, except on ``/get_reward``: OpenRLHF's client gives up after five tries a second
apart and then fails the run, so there a request waits in line instead (its client waits minutes).

Sizes: a request body is at most ``wire.MAX_REQUEST_BYTES`` (16 MiB; a larger one is a 413 naming the
limit) and a merged call at most ``MAX_BATCH_BYTES`` of requests. Ray Serve's gRPC hop between deployments
(HAProxy front) caps a message at 4 MiB by default, less than one Stream answer for 64 conversations of 900
tokens; the deployments here raise that cap to gRPC's 2 GiB maximum, which a merged call within these limits
stays under.

Deploy with ``guard-reward serve`` or, with your own Serve config, ``serve run
guard_reward.serving.app:build_app gen=PATH stream=PATH`` (``build_app`` takes the :class:`ServeOptions` fields
as strings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from guard_reward.serving.batcher import BatchCancelled, BatcherFull, RequestBatcher
from guard_reward.serving.get_reward import GuardRewardFunction, parse_get_reward, reward_kwargs
from guard_reward.serving.prefetch import PrefetchedGen, run_reward
from guard_reward.serving.protocol import (
    MAX_BATCH_BYTES,
    BadRequest,
    RequestTooLarge,
    check_body_size,
    judge_gen_calls,
    judge_stream_calls,
    parse_gen,
    parse_score,
    parse_score_ids,
)
from guard_reward.wire import BINARY_MEDIA_TYPE

logger = logging.getLogger(__name__)

#: Errors that mean "try again": too many requests wait for a guard, or its replica died or is restarting.
RETRYABLE = (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RayActorError,
    BatcherFull,
    BatchCancelled,
)
#: Seconds a client is told to wait after a 503.
RETRY_AFTER_S = 1
#: Serve's per-message cap on its gRPC hop between deployments (default 4 MiB), raised to gRPC's maximum; read
#: when a replica's process starts, so it goes into every deployment's environment.
GRPC_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}


@dataclass
class ServeOptions:
    """What ``guard-reward serve`` and :func:`build_app` configure.

    Attributes:
        gen, stream: Qwen3Guard-Gen / -Stream checkpoint (hub id or folder); either may be omitted.
        replicas: replicas per guard deployment (the ingress keeps one batch in flight per replica).
        gpus_per_replica, cpus_per_replica: Ray resources of each guard replica.
        max_batch_size: requests merged into one guard call at most.
        batch_wait_ms: how long a request may wait for more to merge with while a replica is free.
        batch_quiet_ms: a batch goes as soon as no request has arrived for this long (the burst is over).
        max_queued_requests: requests waiting per guard for a batch; more -> 503 (``/get_reward`` waits).
        device, dtype, token_budget: the guards' loading options (``None``: the guards' own defaults).
        reward_config: ``SafetyReward`` fields for ``/get_reward`` (see ``get_reward.REWARD_FIELDS``).
        torch_threads: intra-op threads of each guard replica (``None``: torch's default).
        ingress_replicas: replicas of the HTTP ingress (each parses, merges and runs ``/get_reward``'s reward on
            its own CPU; HAProxy spreads requests over them).
    """

    gen: str | None = None
    stream: str | None = None
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    batch_quiet_ms: float = 2.0
    max_queued_requests: int = 512
    device: str | None = None
    dtype: str | None = None
    token_budget: int = 16384
    reward_config: dict[str, Any] = field(default_factory=dict)
    torch_threads: int | None = None
    ingress_replicas: int = 1

    def __post_init__(self) -> None:
        if not self.gen and not self.stream:
            raise ValueError("give at least one guard: gen and/or stream")
        for name in ("replicas", "max_batch_size", "max_queued_requests", "token_budget", "ingress_replicas"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_wait_ms", "batch_quiet_ms", "gpus_per_replica", "cpus_per_replica"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        reward_kwargs(self.reward_config)  # fail here, not in a replica

    def guard_kwargs(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "token_budget": self.token_budget}


class _GuardReplica:
    """What both guard deployments share: loading options, one merged call at a time, off the event loop."""

    def _setup(self, options: ServeOptions) -> None:
        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        self.options = options
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # the latest calls only: a run is long
        self._one_at_a_time = asyncio.Lock()  # several ingress replicas may send batches at once

    async def judge_batch(self, calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Parsed requests -> each one's results as JSON, judged in ONE guard call."""
        async with self._one_at_a_time:
            self.batch_sizes.append(len(calls))
            # the guard runs in a worker thread so the replica keeps answering health checks meanwhile
            return await asyncio.to_thread(self._run, calls)

    def stats(self) -> dict[str, Any]:
        """How many requests each of the latest guard calls took (the batching at work)."""
        return {"batch_sizes": list(self.batch_sizes)}


@serve.deployment(name="GenGuard")
class GenService(_GuardReplica):
    """A Qwen3Guard-Gen replica: a checkpoint on this replica's device, or a served Gen
    (``openai+http://…``, e.g. vLLM's engine) that the replica batches requests for."""

    def __init__(self, options: ServeOptions) -> None:
        from guard_reward.guards.gen_spec import load_gen_guard

        self.guard = load_gen_guard(options.gen, **options.guard_kwargs())
        self._setup(options)

    def _run(self, calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return judge_gen_calls(self.guard, calls)

    def info(self) -> dict[str, Any]:
        from guard_reward.types import LEVELS

        return {
            "name": str(self.options.gen),
            "levels": list(LEVELS),
            "thinking": self.guard.thinking,
            "max_length": self.guard.max_length,
        }


@serve.deployment(name="StreamGuard")
class StreamService(_GuardReplica):
    """A Qwen3Guard-Stream replica."""

    def __init__(self, options: ServeOptions) -> None:
        from guard_reward.guards.stream import StreamGuard

        self.guard = StreamGuard.from_pretrained(options.stream, **options.guard_kwargs())
        self._setup(options)

    def _run(self, calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return judge_stream_calls(self.guard, calls)

    def info(self) -> dict[str, Any]:
        maps = self.guard.maps
        return {
            "name": str(self.options.stream),
            "category_names": list(self.guard.category_names),
            "query_category_names": list(self.guard.query_category_names),
            "label_maps": {k: list(v) for k, v in asdict(maps).items()},
            "thinking": self.guard.thinking,
            "max_length": self.guard.max_length,
            "vocab_rows": int(self.guard.vocab_rows),
        }

    def vocab(self) -> dict[str, int]:
        return dict(self.guard.tokenizer.get_vocab())


#: How long ``/get_reward`` retries a batch whose replica was lost before it answers 503: under OpenRLHF's own
#: 180 s per request, and longer than a replica restart that loads a multi-GB guard.
GET_REWARD_RETRY_S = 150.0


async def retry_lost_replica(call: Any, budget_s: float = GET_REWARD_RETRY_S) -> Any:
    """``await call()``, again after a :data:`RETRYABLE` error (a replica lost or restarting, a cancelled batch)
    with backoff from 0.1 s to 5 s, for up to ``budget_s`` seconds; then the error is raised (a 503)."""
    loop = asyncio.get_running_loop()
    deadline, delay, tries = loop.time() + budget_s, 0.1, 0
    while True:
        try:
            return await call()
        except RETRYABLE as exc:
            tries += 1
            if loop.time() + delay > deadline:
                raise
            if tries == 1:  # one line per request, not per try
                logger.warning("/get_reward: %s; retrying for up to %.0f s", type(exc).__name__, budget_s)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)


def _error(status: int, message: str) -> JSONResponse:
    """A JSON error answer; a 503 says when to retry."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.deployment(name="GuardAPI")  # limits: ingress_limits()
class GuardAPI:
    """The HTTP ingress (routes in docs/serving.md)."""

    def __init__(
        self, gen: DeploymentHandle | None, stream: DeploymentHandle | None, options: ServeOptions
    ) -> None:
        self.gen, self.stream, self.options = gen, stream, options
        self.batchers = {
            name: RequestBatcher(
                handle.judge_batch.remote,
                max_batch_size=options.max_batch_size,
                max_wait_s=options.batch_wait_ms / 1000,
                quiet_s=options.batch_quiet_ms / 1000,
                max_concurrent=options.replicas,  # one batch in flight per replica
                max_pending=options.max_queued_requests,
                max_batch_bytes=MAX_BATCH_BYTES,
            )
            for name, handle in (("gen", gen), ("stream", stream))
            if handle is not None
        }
        self._vocab: dict[str, int] | None = None
        self._prefetched = PrefetchedGen()
        self._reward: GuardRewardFunction | None = None

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path", "")  # the app's route prefix, when deployed under one
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path.rstrip("/") or "/"
        try:
            if request.method == "GET":
                return await self._get(path)
            if request.method != "POST":
                return _error(405, f"{request.method} is not accepted; use GET or POST")
            declared = request.headers.get("content-length", "")
            if declared.isdigit():  # refuse before reading it
                check_body_size(int(declared), path)
            raw = await request.body()
            check_body_size(len(raw), path)
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"{path}: the body is not valid JSON ({exc})") from None
            binary = BINARY_MEDIA_TYPE in request.headers.get("accept", "")
            return await self._post(path, body, len(raw), binary)
        except RequestTooLarge as exc:
            return _error(413, str(exc))
        except BadRequest as exc:
            return _error(400, str(exc))
        except RETRYABLE as exc:  # back-pressure, a replica lost mid-request: the client should retry
            logger.warning("%s: %s -> 503", path, type(exc).__name__)
            return _error(503, f"guard busy or restarting ({type(exc).__name__}); retry")
        except Exception as exc:
            logger.exception("%s failed", path)
            return _error(500, f"{type(exc).__name__}: {exc}")

    async def _get(self, path: str) -> JSONResponse:
        if path == "/health":
            guards = {}
            for name, handle in (("gen", self.gen), ("stream", self.stream)):
                if handle is not None:
                    guards[name] = await handle.info.remote()
            return JSONResponse({"status": "ok", "guards": guards})
        if path == "/v1/stream/vocab":
            stream = self._need(self.stream, "stream")
            if self._vocab is None:
                self._vocab = await stream.vocab.remote()
            return JSONResponse({"vocab": self._vocab})
        if path == "/v1/stats":
            out = {}
            for name, handle in (("gen", self.gen), ("stream", self.stream)):
                if handle is not None:
                    out[name] = await handle.stats.remote()
            return JSONResponse(out)
        return _error(404, f"no route GET {path}; see GET /health")

    async def _post(self, path: str, body: Any, size: int, binary: bool = False) -> Response:
        if path == "/v1/gen/moderate":
            return JSONResponse({"verdicts": await self._batcher("gen").submit(parse_gen(body), size=size)})
        if path in ("/v1/stream/score", "/v1/stream/score_ids"):
            call = parse_score(body) if path == "/v1/stream/score" else parse_score_ids(body)
            if binary:
                call["binary"] = True
            risks = await self._batcher("stream").submit(call, size=size)
            if binary:
                return Response(risks, media_type=BINARY_MEDIA_TYPE)
            # the replica encoded the JSON array: spliced in as it is, never decoded and encoded again here
            return Response(b'{"risks": ' + risks + b"}", media_type="application/json")
        if path == "/get_reward":
            queries, prompts = parse_get_reward(body)
            gen = self._batcher("gen")
            if self._reward is None:
                self._reward = GuardRewardFunction(self._prefetched, self.options.reward_config)
            reward = self._reward

            async def fetch(call: dict[str, Any]) -> list[dict[str, Any]]:
                # queue: OpenRLHF's client cannot wait out a 503, so a full queue makes this one wait; and a
                # replica lost mid-batch is retried here (onto a survivor, or once Serve has started a new one)
                return await retry_lost_replica(lambda: gen.submit(call, queue=True, size=size))

            return JSONResponse(await run_reward(lambda: reward(queries, prompts), self._prefetched, fetch))
        return _error(404, f"no route POST {path}; see guard_reward's docs/serving.md for the routes")

    def _batcher(self, name: str) -> RequestBatcher:
        self._need(getattr(self, name), name)
        return self.batchers[name]

    def _need(self, handle: DeploymentHandle | None, name: str) -> DeploymentHandle:
        if handle is None:
            raise BadRequest(f"this server has no {name} guard (start it with --{name})")
        return handle


#: Ingress slots kept beyond the guard queues for the routes that wait on no batch (health, stats, vocab).
INGRESS_SPARE = 64


def ingress_limits(options: ServeOptions) -> dict[str, int]:
    """``max_ongoing_requests`` / ``max_queued_requests`` of the ingress deployment, from the service's options.

    The ingress holds, per guard, up to ``max_queued_requests`` waiting requests and ``replicas x
    max_batch_size`` in running batches; its slots cover both guards' share plus :data:`INGRESS_SPARE`, so the
    service's own queue limit (a 503 with ``Retry-After`` from the batcher, on the routes whose clients retry) is
    always reached before Serve's. Serve's own queue in front of the ingress is unbounded (``-1``): the only
    requests that can fill every slot are ``/get_reward``'s, which must wait rather than be refused (OpenRLHF's
    client fails the run after five refusals a second apart), and a waiting request costs a socket, not a slot.
    """
    guards = sum(1 for g in (options.gen, options.stream) if g)
    per_guard = options.max_queued_requests + options.replicas * options.max_batch_size
    return {"max_ongoing_requests": guards * per_guard + INGRESS_SPARE, "max_queued_requests": -1}


def build(options: ServeOptions, gen_deployment: Any = None, stream_deployment: Any = None) -> Any:
    """The Serve ``Application`` for ``options`` (``serve.run(build(options))``).

    ``gen_deployment`` / ``stream_deployment``: another deployment class in place of :class:`GenService` /
    :class:`StreamService` (same constructor and methods), e.g. the transport benchmark's guard that costs nothing.
    """
    env = {"runtime_env": {"env_vars": dict(GRPC_ENV)}}
    actor = {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica, **env}
    common = dict(num_replicas=options.replicas, ray_actor_options=actor)
    gen_cls, stream_cls = gen_deployment or GenService, stream_deployment or StreamService
    gen = gen_cls.options(**common).bind(options) if options.gen else None
    stream = stream_cls.options(**common).bind(options) if options.stream else None
    ingress = GuardAPI.options(
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": 0, **env},
        **ingress_limits(options),
    )
    return ingress.bind(gen, stream, options)


def build_app(args: dict[str, str]) -> Any:
    """Application builder for ``serve run guard_reward.serving.app:build_app key=value ...``."""
    kinds = {f.name: f.type for f in fields(ServeOptions)}
    kw: dict[str, Any] = {}
    for key, value in args.items():
        if key not in kinds:
            raise ValueError(f"unknown option {key!r}; accepted: {', '.join(kinds)}")
        kind = str(kinds[key])
        if key == "reward_config":
            from guard_reward.serving.config import load_reward_config

            kw[key] = load_reward_config(value)
        elif kind.startswith("int"):
            kw[key] = int(value)
        elif kind.startswith("float"):
            kw[key] = float(value)
        else:
            kw[key] = value
    return build(ServeOptions(**kw))


def wait_healthy(url: str, timeout: float = 300.0) -> dict[str, Any]:
    """Poll ``GET {url}/health`` until it answers 200; its JSON."""
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
                return json.loads(resp.read())
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"{url}/health did not answer within {timeout:.0f} s ({last})")
