"""The transport of the remote guards: pooled keep-alive HTTP/JSON with retries, and calls cut into chunks.

A call is split into chunks of at most ``chunk_size`` samples and ``chunk_bytes`` of JSON (a Stream answer is
some 40 times its request, so a byte budget, not a sample count, keeps answers of long conversations at a sane
size), sent over pooled keep-alive connections (up to ``parallel`` at once) and reassembled in input order. A
sample too large for any request (over the wire's ``MAX_REQUEST_BYTES``) is not sent: it gets a failed result
with reason ``invalid_input``. A chunk is retried ``retries`` times with exponential backoff and jitter on
connection errors, timeouts and the statuses in :data:`RETRY_STATUSES` (429, 500, 502, 503, 504;
``Retry-After`` is honoured). A chunk still unanswered after that gives each of its samples a failed result with reason
``guard_unavailable`` (``on_error="skip"``) or raises :class:`GuardUnavailable` (``on_error="raise"``). Any
other 4xx answer is a bug in the request and raises :class:`RemoteGuardError` at once. Only the standard
library is used.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guard_reward.faults import GUARD_UNAVAILABLE, INVALID_INPUT, OnError, check_on_error, raise_first_failure
from guard_reward.types import TokenRisk
from guard_reward.wire import BINARY_MEDIA_TYPE, MAX_REQUEST_BYTES, risks_from_bytes

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying: the server is overloaded, restarting or failed transiently.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Bytes of a request's fields other than the samples (field names, options): room kept under the limit.
_BODY_OVERHEAD = 4096


#: Words of a server's refusal of a prompt longer than its context (vLLM, SGLang, OpenAI wording).
_CONTEXT_WORDS = ("maximum context length", "context length", "max_model_len", "too long")


class RemoteGuardError(RuntimeError):
    """The server refused the request itself (4xx): retrying would not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status

    @property
    def context_too_long(self) -> bool:
        """Whether an OpenAI-compatible server refused the request as longer than its context (vLLM: 400 with
        "maximum context length"; others 413/422)."""
        text = str(self).lower()
        return self.status in (400, 413, 422) and any(w in text for w in _CONTEXT_WORDS)


class GuardUnavailable(ConnectionError):
    """The server did not answer a chunk after all retries."""


def openai_api_root(url: str) -> str:
    """An OpenAI-compatible server's API root, ``http://HOST:PORT/v1``, from its address (``/v1`` added when
    missing)."""
    base = url.rstrip("/")
    return base if urllib.parse.urlsplit(base).path.endswith("/v1") else base + "/v1"


def served_model(client: GuardClient, model: str | None) -> tuple[str, dict[str, Any]]:
    """``(name, card)`` of the model to use on an OpenAI-compatible server (its ``GET /models``): ``model``, or the
    one model it serves when ``model`` is ``None``. ``ValueError`` naming the served models otherwise;
    :class:`GuardUnavailable` when the server does not answer."""
    answer = client.request("GET", "/models")
    data = answer.get("data") if isinstance(answer, dict) else None
    cards = {m.get("id"): m for m in data or [] if isinstance(m, dict)}
    names = list(cards)
    if model is None:
        if len(names) != 1:
            raise ValueError(f"no model named and the server serves {names or 'none'}; name one")
        model = names[0]
    if model not in cards:
        raise ValueError(f"model {model!r} is not served; the server serves {names}")
    return model, cards[model]


class GuardClient:
    """Pooled keep-alive HTTP/JSON with retries, shared by both remote guards; picklable (the pool is not)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        backoff_max: float,
        chunk_size: int,
        parallel: int,
        on_error: OnError,
        chunk_bytes: int = 2**20,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must look like http://HOST:PORT, got {url!r}")
        if not 1 <= chunk_bytes <= MAX_REQUEST_BYTES - _BODY_OVERHEAD:
            raise ValueError(
                f"chunk_bytes must be between 1 and {MAX_REQUEST_BYTES - _BODY_OVERHEAD} (the server's request "
                f"limit less room for the other fields), got {chunk_bytes}"
            )
        if timeout <= 0 or retries < 0 or backoff < 0 or chunk_size < 1 or parallel < 1:
            raise ValueError(
                "timeout must be > 0, retries and backoff >= 0, chunk_size and parallel >= 1; got "
                f"timeout={timeout}, retries={retries}, backoff={backoff}, chunk_size={chunk_size}, "
                f"parallel={parallel}"
            )
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.chunk_size = int(chunk_size)
        self.chunk_bytes = int(chunk_bytes)
        self.parallel = int(parallel)
        self.on_error = check_on_error(on_error)
        self.stats: Counter[str] = Counter()
        self._init_pool()

    def _init_pool(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_idle", "_pid")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_pool()

    # ------------------------------------------------------------------------------------ connections

    def _take(self) -> http.client.HTTPConnection:
        if os.getpid() != self._pid:
            # a forked child must not share the parent's keep-alive sockets (two processes reading one socket
            # mix up answers), nor a lock another parent thread held at the fork: it starts an empty pool
            self._init_pool()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        parsed = urllib.parse.urlsplit(self.url)
        cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        return cls(parsed.hostname, parsed.port, timeout=self.timeout)

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        base = min(self.backoff_max, self.backoff * 2**attempt)
        delay = base / 2 + random.uniform(0, base / 2)  # jitter: concurrent clients do not retry in step
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(retry_after), self.backoff_max))
        return delay

    def request(self, method: str, path: str, body: Any = None, binary: bool = False) -> Any:
        """One JSON request with retries; the decoded JSON answer. ``binary``: ask for a Stream answer in binary
        form (``Accept``), read back as ``{"risks": [TokenRisk, ...]}``; a server that answers JSON still works."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if binary:
            headers["Accept"] = f"{BINARY_MEDIA_TYPE}, application/json;q=0.5"
        prefix = urllib.parse.urlsplit(self.url).path
        last = "no attempt"
        for attempt in range(self.retries + 1):
            self.stats["requests"] += 1
            retry_after = None
            conn = self._take()
            try:
                conn.request(method, prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.will_close:
                    conn.close()
                else:
                    self._give(conn)
                if resp.status == 200:
                    if (resp.getheader("Content-Type") or "").startswith(BINARY_MEDIA_TYPE):
                        return {"risks": _binary_risks(payload, method, path)}
                    return json.loads(payload)
                message = _error_message(payload)
                if resp.status not in RETRY_STATUSES:
                    raise RemoteGuardError(resp.status, f"{method} {path}: {message}")
                last = f"HTTP {resp.status}: {message}"
                retry_after = resp.getheader("Retry-After")
            if attempt < self.retries:
                self.stats["retries"] += 1
                time.sleep(self._delay(attempt, retry_after))
        raise GuardUnavailable(
            f"{method} {self.url}{path}: no answer after {self.retries + 1} attempts ({last})"
        )

    # ------------------------------------------------------------------------------------------ chunks

    def chunked(
        self,
        path: str,
        columns: dict[str, list[Any]],
        extra: dict[str, Any],
        result_key: str,
        decode: Callable[[dict[str, Any]], Any],
        fail: Callable[[int, str, str], Any],
        on_error: OnError | None = None,
        binary: bool = False,
    ) -> list[Any]:
        """POST ``columns`` (equal-length lists) in chunks; one decoded result per row, in input order.

        ``fail(row, reason, message)`` builds a row's result when its chunk is unavailable after the retries
        (``guard_unavailable``) or the row alone is over the server's request limit (``invalid_input``).
        ``on_error`` (default: the client's): ``"raise"`` raises :class:`GuardUnavailable` then, and a
        :class:`~guard_reward.faults.SampleError` for the first row the server could not judge. ``binary``: see
        :meth:`request` (rows that arrive decoded skip ``decode``)."""
        policy = self.on_error if on_error is None else check_on_error(on_error)
        n = len(next(iter(columns.values()))) if columns else 0

        def one(span: tuple[int, int, int]) -> list[Any]:
            start, stop, size = span
            if size > MAX_REQUEST_BYTES - _BODY_OVERHEAD:
                message = (
                    f"{path}: sample {start} is {size} bytes of JSON, over the server's limit of "
                    f"{MAX_REQUEST_BYTES} bytes per request"
                )
                self.stats[INVALID_INPUT] += 1
                logger.warning("%s; it gets reason %s", message, INVALID_INPUT)
                return [fail(start, INVALID_INPUT, message)]
            body = {**{k: v[start:stop] for k, v in columns.items()}, **extra}
            try:
                answer = self.request("POST", path, body, binary=binary)
            except GuardUnavailable as exc:
                if policy == "raise":
                    raise
                self.stats[GUARD_UNAVAILABLE] += stop - start
                logger.warning("%s; %d samples get reason %s", exc, stop - start, GUARD_UNAVAILABLE)
                return [fail(i, GUARD_UNAVAILABLE, str(exc)) for i in range(start, stop)]
            rows = answer.get(result_key) if isinstance(answer, dict) else None
            if not isinstance(rows, list) or len(rows) != stop - start:
                # never shift results onto other samples
                raise RemoteGuardError(
                    200, f"{path}: expected {stop - start} {result_key}, got {answer!r:.200}"
                )
            return [r if isinstance(r, TokenRisk) else decode(r) for r in rows]

        spans = self._spans(columns, n)
        if len(spans) <= 1 or self.parallel == 1:
            parts = [one(s) for s in spans]
        else:
            with ThreadPoolExecutor(min(self.parallel, len(spans))) as pool:
                parts = list(pool.map(one, spans))
        results = [r for part in parts for r in part]
        if policy == "raise":  # as the local guards do: a sample they cannot judge raises
            raise_first_failure(results, path)
        return results

    def _spans(self, columns: dict[str, list[Any]], n: int) -> list[tuple[int, int, int]]:
        """``(start, stop, bytes)`` of each chunk: at most ``chunk_size`` rows and ``chunk_bytes`` of JSON; a
        row over the budget on its own is a chunk of one."""
        spans: list[tuple[int, int, int]] = []
        start, total = 0, 0
        for i in range(n):
            size = len(json.dumps([v[i] for v in columns.values()])) + 2  # ", " between rows
            if i > start and (i - start >= self.chunk_size or total + size > self.chunk_bytes):
                spans.append((start, i, total))
                start, total = i, 0
            total += size
        if n > start:
            spans.append((start, n, total))
        return spans


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", payload[:300]))
    except (ValueError, AttributeError):
        return payload[:300].decode(errors="replace")


def _binary_risks(payload: bytes, method: str, path: str) -> list[TokenRisk]:
    try:
        return risks_from_bytes(payload)
    except ValueError as exc:  # a broken answer is the server's bug: never guessed around
        raise RemoteGuardError(200, f"{method} {path}: {exc}") from None
