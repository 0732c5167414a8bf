"""The batcher under faults, on plain asyncio: a caller that gives up never takes the others' batch with it, a
cancelled guard call or a stopped batcher fails its callers instead of stranding them, and the wait loop works
with Python 3.10's ``asyncio.TimeoutError`` (a class of its own there, not the builtin ``TimeoutError``)."""

from __future__ import annotations

import asyncio
import contextvars
import types

import pytest

from guard_reward.serving import batcher as batcher_module
from guard_reward.serving.batcher import BatchCancelled, RequestBatcher
from tests.serving.test_batcher import NEVER, Guard, run, settle

#: which request a task works for, as Ray Serve's request context says it
REQUEST = contextvars.ContextVar("request", default=None)


class CancellingServer:
    """What Ray Serve does around a guard call: it registers the call under the request in whose context it was
    made, and cancels a request's calls when its client disconnects."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.calls: dict[object, list[asyncio.Task]] = {}

    async def __call__(self, items: list[int]) -> list[int]:
        task = asyncio.ensure_future(self.guard(items))
        self.calls.setdefault(REQUEST.get(), []).append(task)
        return await task

    def disconnect(self, request: object, handler: asyncio.Task) -> None:
        handler.cancel()
        for task in self.calls.get(request, []):
            task.cancel()


async def as_request(request: str, batcher: RequestBatcher, item: int) -> int:
    REQUEST.set(request)
    return await batcher.submit(item)


def test_a_client_that_gives_up_does_not_cancel_the_batch_of_one_that_waits():
    async def go():
        guard = Guard()
        server = CancellingServer(guard)
        batcher = RequestBatcher(server, max_batch_size=32, max_wait_s=NEVER, quiet_s=0.02)
        guard.hold.clear()
        impatient = asyncio.ensure_future(as_request("impatient", batcher, 1))  # starts the workers
        await settle()
        patient = asyncio.ensure_future(as_request("patient", batcher, 2))
        while not guard.batches:
            await asyncio.sleep(0.01)
        server.disconnect("impatient", impatient)
        await settle()
        guard.hold.set()
        return guard, await asyncio.wait_for(patient, 10), server

    guard, patient, server = run(go())
    assert guard.batches == [[1, 2]]  # both were merged into one guard call
    assert patient == 20
    assert list(server.calls) == [None]  # the guard call belonged to no request


def test_a_cancelled_guard_call_fails_its_batch_and_the_next_batch_is_answered():
    async def go():
        guard = Guard()
        server = CancellingServer(guard)
        batcher = RequestBatcher(server, max_batch_size=2, max_wait_s=NEVER, quiet_s=NEVER)
        guard.hold.clear()
        first = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        while not guard.batches:
            await asyncio.sleep(0.01)
        for task in server.calls[None]:
            task.cancel()
        failed = await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), 10)
        guard.hold.set()
        second = await asyncio.wait_for(asyncio.gather(batcher.submit(3), batcher.submit(4)), 10)
        return failed, second

    failed, second = run(go())
    assert all(isinstance(r, BatchCancelled) and "cancelled" in str(r) for r in failed)
    assert second == [30, 40]


def test_a_stopped_batcher_fails_the_running_batch_and_every_waiting_request():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=1, max_wait_s=0.0, quiet_s=0.0)
        guard.hold.clear()
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await settle()
        for worker in batcher._workers:  # what the replica's shutdown does to its tasks
            worker.cancel()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    results = run(go())
    assert len(results) == 3
    assert all(isinstance(r, BatchCancelled) and "stopped" in str(r) for r in results)


def test_queued_requests_wait_past_max_pending_instead_of_being_refused():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=2, max_wait_s=0.0, quiet_s=0.0, max_pending=1)
        guard.hold.clear()
        running = asyncio.ensure_future(batcher.submit(0))
        await settle()
        queued = [asyncio.ensure_future(batcher.submit(i, queue=True)) for i in (1, 2, 3)]
        await settle()
        guard.hold.set()
        return guard, await running, await asyncio.gather(*queued)

    guard, running, queued = run(go())
    assert running == 0 and queued == [10, 20, 30]
    assert guard.batches == [[0], [1, 2], [3]]


class Py310TimeoutError(Exception):
    """``asyncio.TimeoutError`` as Python 3.10 defines it: an ``Exception``, not the builtin ``TimeoutError``."""


async def wait_for_310(awaitable, timeout):
    """``asyncio.wait_for`` raising what Python 3.10's raises on a timeout."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise Py310TimeoutError() from None


def test_the_wait_loop_survives_python_310s_timeout_class(monkeypatch):
    assert not issubclass(Py310TimeoutError, TimeoutError)
    py310 = types.SimpleNamespace(
        **{**vars(asyncio), "TimeoutError": Py310TimeoutError, "wait_for": wait_for_310}
    )
    monkeypatch.setattr(batcher_module, "asyncio", py310)

    async def go():
        guard = Guard()
        # a partial batch sealed by a timer: the wait for more requests times out before it goes
        batcher = RequestBatcher(guard, max_batch_size=32, max_wait_s=NEVER, quiet_s=0.02)
        first = await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 10)
        second = await asyncio.wait_for(batcher.submit(3), 10)
        return guard, first, second

    guard, first, second = run(go())
    assert first == [10, 20] and second == 30
    assert guard.batches == [[1, 2], [3]]


def test_queued_requests_still_count_towards_the_limit():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=1, max_wait_s=0.0, quiet_s=0.0, max_pending=1)
        guard.hold.clear()
        running = asyncio.ensure_future(batcher.submit(0))
        await settle()
        queued = asyncio.ensure_future(batcher.submit(1, queue=True))
        await settle()
        with pytest.raises(batcher_module.BatcherFull):
            await batcher.submit(2)
        guard.hold.set()
        return await asyncio.gather(running, queued)

    assert run(go()) == [0, 10]


def test_a_batch_stops_before_the_request_that_would_take_it_over_max_batch_bytes():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(
            guard, max_batch_size=32, max_wait_s=NEVER, quiet_s=0.02, max_batch_bytes=100
        )
        sizes = {1: 60, 2: 30, 3: 20, 4: 250, 5: 10}  # 4 is larger than the budget: it goes alone
        tasks = [asyncio.ensure_future(batcher.submit(i, size=n)) for i, n in sizes.items()]
        return guard, await asyncio.wait_for(asyncio.gather(*tasks), 10)

    guard, results = run(go())
    assert results == [10, 20, 30, 40, 50]
    assert guard.batches == [[1, 2], [3], [4], [5]]
