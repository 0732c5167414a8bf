"""The ingress's request merging (``RequestBatcher``), on plain asyncio: what goes into a batch, when a batch is
sealed, and that every caller gets its own result or its batch's error."""

from __future__ import annotations

import asyncio

import pytest

from guard_reward.serving.batcher import BatcherFull, RequestBatcher

#: a wait no test reaches: a batch sealed in time was sealed by another rule
NEVER = 30.0


class Guard:
    """Records each batch; answers ``item * 10``; holds a batch while ``hold`` is clear."""

    def __init__(self, fail_on: int | None = None, short_by: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail_on, self.short_by = fail_on, short_by

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.hold.wait()
            if self.fail_on in items:
                raise ValueError(f"item {self.fail_on} breaks the guard")
            return [i * 10 for i in items][: len(items) - self.short_by]
        finally:
            self.running -= 1


def run(coro):
    """``asyncio.run`` with a deadline: a batcher that never answers fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, 20))


async def settle() -> None:
    """Let every ready task run (submissions reach the queue, the worker wakes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_concurrent_requests_merge_into_one_batch_each_answered_in_place():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=32, max_wait_s=NEVER, quiet_s=0.05)
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(10))), 10)
        return guard, results

    guard, results = run(go())
    assert results == [i * 10 for i in range(10)]
    assert guard.batches == [list(range(10))]  # sealed by the quiet gap, long before max_wait


def test_a_full_batch_goes_at_once_and_the_rest_form_the_next():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=4, max_wait_s=NEVER, quiet_s=NEVER)
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(8)]
        return guard, await asyncio.wait_for(asyncio.gather(*tasks), 10)

    guard, results = run(go())
    assert results == [i * 10 for i in range(8)]
    assert guard.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_partial_batch_waits_at_most_max_wait_even_while_requests_keep_coming():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=100, max_wait_s=0.2, quiet_s=NEVER)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(40):  # a steady trickle, never quiet: only max_wait can seal
            tasks.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        return guard, loop.time() - start

    guard, elapsed = run(go())
    assert [i for batch in guard.batches for i in batch] == list(range(40))
    assert len(guard.batches) >= 2  # sealed on max_wait, not when the trickle ended
    assert elapsed < NEVER


def test_requests_arriving_while_the_guard_runs_go_together_when_it_frees():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=32, max_wait_s=0.0, quiet_s=0.0)
        guard.hold.clear()
        first = asyncio.ensure_future(batcher.submit(0))
        await settle()
        assert guard.batches == [[0]] and guard.running == 1
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # past every wait: still no second batch while the guard is busy
        assert len(guard.batches) == 1
        guard.hold.set()
        return guard, await first, await asyncio.gather(*later)

    guard, first, later = run(go())
    assert first == 0 and later == [10, 20, 30, 40, 50]
    assert guard.batches == [[0], [1, 2, 3, 4, 5]]
    assert guard.most_running == 1


def test_max_concurrent_batches_run_side_by_side():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=1, max_wait_s=0.0, quiet_s=0.0, max_concurrent=2)
        guard.hold.clear()
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await settle()
        running = guard.running
        guard.hold.set()
        await asyncio.gather(*tasks)
        return running, guard

    running, guard = run(go())
    assert running == 2 and guard.most_running == 2
    assert sorted([i for batch in guard.batches for i in batch]) == [0, 1, 2]


def test_a_failed_batch_fails_its_requests_only_and_the_next_batch_is_answered():
    async def go():
        guard = Guard(fail_on=2)
        batcher = RequestBatcher(guard, max_batch_size=3, max_wait_s=NEVER, quiet_s=NEVER)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        second = await asyncio.gather(*(batcher.submit(i) for i in range(3, 6)))
        return first, second

    first, second = run(go())
    assert all(isinstance(r, ValueError) and "item 2" in str(r) for r in first)
    assert second == [30, 40, 50]


def test_a_guard_returning_too_few_results_fails_the_batch_instead_of_misassigning():
    async def go():
        batcher = RequestBatcher(Guard(short_by=1), max_batch_size=2, max_wait_s=NEVER, quiet_s=NEVER)
        return await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)

    results = run(go())
    assert all(isinstance(r, RuntimeError) and "1 results for 2 requests" in str(r) for r in results)


def test_a_caller_gone_before_its_batch_is_not_judged():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=32, max_wait_s=NEVER, quiet_s=0.05)
        gone = asyncio.ensure_future(batcher.submit(99))
        kept = asyncio.ensure_future(batcher.submit(1))
        await settle()
        gone.cancel()
        return guard, await asyncio.wait_for(kept, 10)

    guard, kept = run(go())
    assert kept == 10 and guard.batches == [[1]]


def test_too_many_waiting_requests_are_refused_not_queued():
    async def go():
        guard = Guard()
        batcher = RequestBatcher(guard, max_batch_size=1, max_wait_s=0.0, quiet_s=0.0, max_pending=2)
        guard.hold.clear()
        running = asyncio.ensure_future(batcher.submit(0))
        await settle()
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await settle()
        with pytest.raises(BatcherFull, match="2 requests already wait"):
            await batcher.submit(3)
        guard.hold.set()
        return await asyncio.gather(running, *waiting)

    assert run(go()) == [0, 10, 20]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        RequestBatcher(Guard(), max_batch_size=0, max_wait_s=0.0, quiet_s=0.0)
    with pytest.raises(ValueError, match="waits >= 0"):
        RequestBatcher(Guard(), max_batch_size=1, max_wait_s=-1.0, quiet_s=0.0)
