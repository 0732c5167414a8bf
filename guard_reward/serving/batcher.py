"""Merging concurrent requests into batches, sealed when the burst ends or a guard frees up.

Ray Serve's ``@serve.batch`` waits the full ``batch_wait_timeout_s`` unless a batch is full, and seals the next
batch on that timer while the previous one still runs, so requests that arrive during a long guard call are
split over batches and every partial batch pays the whole wait. Here a batch is sealed when the first of these
holds:

* it holds ``max_batch_size`` requests, or the next request would take it over ``max_batch_bytes``;
* no request has arrived for ``quiet_s``: the burst (a GRPO step's samples, N ranks sending at once) is over;
* its oldest request has waited ``max_wait_s``;

and only while fewer than ``max_concurrent`` batches run (one per guard replica): requests that arrive while
every replica is busy all wait for the next free one, and then go as one batch (they have already waited
``max_wait_s`` by then, or the burst is over). No replica idles while requests wait past those limits, and none
runs a batch the burst could still fill.

A batch belongs to no caller: the workers run in a fresh ``contextvars.Context``, not in the request that
happened to start them. Ray Serve cancels the calls a request made when its client disconnects (it finds them
through the request's context), so a worker that inherited the first caller's context would see the merged call
cancelled for everyone in the batch. Whatever ends a guard call, cancellation included, fails that batch's
futures: no caller waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
#: A waiting request: (arrival time, item, its caller's future, its size in bytes).
Pending = tuple[float, Any, asyncio.Future, int]


class BatcherFull(RuntimeError):
    """More requests wait than the batcher may hold (the caller should answer "busy, retry")."""


class BatchCancelled(RuntimeError):
    """The merged guard call was cancelled, or the batcher stopped, before the guard answered (retryable)."""


class RequestBatcher(Generic[Item, Result]):
    """Runs ``run(items) -> results`` (one result per item, in order) on merged concurrent :meth:`submit` calls.

    Args:
        run: the guard call over one batch.
        max_batch_size: requests per batch at most.
        max_wait_s: how long the oldest request of a batch may wait for more to arrive.
        quiet_s: a batch is sealed once no request has arrived for this long (``>= max_wait_s``: never early).
        max_concurrent: batches running at once at most.
        max_pending: requests waiting for a batch at most; one more raises :class:`BatcherFull`.
        max_batch_bytes: the sizes given to :meth:`submit` summed over a batch at most (a request larger than
            this goes alone); ``None``: no limit.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        max_batch_size: int,
        max_wait_s: float,
        quiet_s: float,
        max_concurrent: int = 1,
        max_pending: int | None = None,
        max_batch_bytes: int | None = None,
    ) -> None:
        limits = (max_batch_size, max_concurrent, max_pending or 1, max_batch_bytes or 1)
        if min(limits) < 1 or min(max_wait_s, quiet_s) < 0:
            raise ValueError(
                "max_batch_size, max_concurrent, max_pending and max_batch_bytes must be >= 1 and the waits "
                f">= 0, got {max_batch_size}, {max_concurrent}, {max_pending}, {max_batch_bytes}, "
                f"{max_wait_s}, {quiet_s}"
            )
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.quiet_s = quiet_s
        self.max_concurrent = max_concurrent
        self.max_pending = max_pending
        self.max_batch_bytes = max_batch_bytes
        self._pending: deque[Pending] = deque()
        self._last_arrival = 0.0
        self._arrived = asyncio.Event()  # bound to the loop of its first use (Python >= 3.10)
        self._workers: list[asyncio.Task] = []

    async def submit(self, item: Item, queue: bool = False, size: int = 0) -> Result:
        """``item``'s result, once the batch it joined has run (the batch's exception if that call failed).

        Args:
            item: one request.
            queue: wait in line even when ``max_pending`` requests already wait (for callers that cannot
                retry a refusal; they still count towards ``max_pending``).
            size: the request's size in bytes (what ``max_batch_bytes`` limits).

        Raises:
            BatcherFull: ``max_pending`` requests already wait (and ``queue`` is false).
            BatchCancelled: the guard call of its batch was cancelled, or the batcher stopped.
        """
        loop = asyncio.get_running_loop()
        if not queue and self.max_pending is not None and len(self._pending) >= self.max_pending:
            raise BatcherFull(f"{len(self._pending)} requests already wait for a guard")
        self._workers = [w for w in self._workers if not w.done()]
        while len(self._workers) < self.max_concurrent:
            # a fresh context: the worker must not belong to (and be cancelled with) this request
            self._workers.append(contextvars.Context().run(loop.create_task, self._work()))
        future: asyncio.Future = loop.create_future()
        self._last_arrival = loop.time()
        self._pending.append((self._last_arrival, item, future, size))
        self._arrived.set()
        return await future  # cancelled with its caller: the worker then skips it

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[Pending] = []
        try:
            while True:
                batch = await self._seal()
                items = [p[1] for p in batch]
                guard_call = loop.create_task(self._call(items))
                # wait() never cancels ``guard_call`` and raises only when this worker itself is cancelled
                await asyncio.wait([guard_call])
                if guard_call.cancelled():
                    self._fail(batch, BatchCancelled("the guard call was cancelled before it answered"))
                elif guard_call.exception() is not None:
                    self._fail(batch, guard_call.exception())
                else:
                    for (_, _, future, _), result in zip(batch, guard_call.result(), strict=True):
                        if not future.done():  # its caller may have gone (client disconnected)
                            future.set_result(result)
                batch = []
        except BaseException as exc:  # cancelled (the server stops) or a bug here: nobody may wait forever
            stopped = BatchCancelled(f"the batcher stopped ({type(exc).__name__}) before the guard answered")
            self._fail(batch, stopped)
            if not any(not w.done() and w is not asyncio.current_task() for w in self._workers):
                self._fail(list(self._pending), stopped)
                self._pending.clear()
            raise

    async def _call(self, items: list[Item]) -> list[Result]:
        results = await self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"the guard returned {len(results)} results for {len(items)} requests")
        return results

    @staticmethod
    def _fail(batch: list[Pending], exc: BaseException) -> None:
        """Fail every still-waiting future of ``batch`` with ``exc`` (logged once)."""
        waiting = [p[2] for p in batch if not p[2].done()]
        if waiting:
            logger.warning("a merged call of %d requests failed: %s: %s", len(batch), type(exc).__name__, exc)
        for future in waiting:
            future.set_exception(exc)

    def _fitting(self) -> int:
        """How many of the oldest waiting requests one batch takes (at least one)."""
        n, total = 0, 0
        for _, _, _, size in self._pending:
            if n == self.max_batch_size:
                break
            if n and self.max_batch_bytes is not None and total + size > self.max_batch_bytes:
                break
            n, total = n + 1, total + size
        return n

    async def _seal(self) -> list[Pending]:
        """Wait until the pending requests form a batch (the rules in the module docstring); take it."""
        loop = asyncio.get_running_loop()
        while True:
            if any(p[2].done() for p in self._pending):  # callers gone before their batch ran
                self._pending = deque(p for p in self._pending if not p[2].done())
            now = loop.time()
            if self._pending:
                if self._fitting() < len(self._pending) or len(self._pending) >= self.max_batch_size:
                    break  # full: by count, or the next request does not fit
                deadline = min(self._pending[0][0] + self.max_wait_s, self._last_arrival + self.quiet_s)
                if now >= deadline:
                    break
                timeout: float | None = deadline - now
            else:
                timeout = None
            self._arrived.clear()
            # asyncio.TimeoutError: before Python 3.11 it is not the builtin TimeoutError
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        return [self._pending.popleft() for _ in range(self._fitting())]
