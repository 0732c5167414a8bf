"""Running a synchronous reward on the ingress's event loop, its guard calls merged like any other request.

``/get_reward`` values samples with a ``SafetyReward``, whose guard call ``guard.moderate(...)`` is synchronous,
while a served guard call is a wait for a merged batch. The usual bridge, ``asyncio.to_thread``, blocks one
worker thread per request for that whole wait, so no more requests reach the batcher than the thread pool has
threads (on 2 CPUs: 6, and guard calls of 2-6 samples for 128 concurrent callers).

Here no thread waits: the reward runs on the event loop against :class:`PrefetchedGen`, a guard that answers
only from verdicts fetched beforehand. A call it holds no verdicts for stops the run with :class:`NeedVerdicts`
(a ``BaseException``, so no reward code catches it), :func:`run_reward` awaits those verdicts through the batcher
and runs the reward again from the start. A ``SafetyReward`` asks its guard before it counts or logs anything
(the responses, then the prompts when refusal handling needs them), so a rerun counts nothing twice; a request
costs one run of shaping arithmetic per guard call, two at most.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from guard_reward.faults import check_on_error, raise_first_failure
from guard_reward.types import Verdict
from guard_reward.wire import verdict_from_json

#: Guard calls one reward run may make; a reward that keeps asking is a bug, not a reason to loop forever.
MAX_CALLS = 8


class NeedVerdicts(BaseException):
    """The reward asked :class:`PrefetchedGen` for verdicts it does not hold yet; ``call`` is the request."""

    def __init__(self, call: dict[str, Any]) -> None:
        super().__init__("verdicts not fetched yet")
        self.call = call


def call_key(call: dict[str, Any]) -> str:
    """A Gen call's identity: its conversations, ``decode`` and ``thinking``."""
    return json.dumps(call, sort_keys=True, ensure_ascii=False)


class PrefetchedGen:
    """A Gen guard whose ``moderate`` answers from ``answers`` (call key -> verdicts), set around each run."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Verdict]] | None = None

    def moderate(
        self,
        conversations: Sequence[Any],
        decode: bool = False,
        thinking: str | None = None,
        on_error: str = "raise",
    ) -> list[Verdict]:
        """The fetched verdicts of this call (see ``GenGuard.moderate``); :class:`NeedVerdicts` if none."""
        if not conversations:
            return []
        call = {"conversations": list(conversations), "decode": decode, "thinking": thinking}
        verdicts = None if self.answers is None else self.answers.get(call_key(call))
        if verdicts is None:
            raise NeedVerdicts(call)
        if check_on_error(on_error) == "raise":  # the replicas judge with "skip"
            raise_first_failure(verdicts, "gen deployment")
        return verdicts


async def run_reward(
    reward: Callable[[], Any],
    guard: PrefetchedGen,
    fetch: Callable[[dict[str, Any]], Awaitable[list[dict[str, Any]]]],
) -> Any:
    """``reward()`` (which asks ``guard``), with each guard call it makes answered by ``await fetch(call)``
    (verdicts as JSON, one per conversation).

    ``reward`` runs synchronously between the fetches, so concurrent requests sharing ``guard`` never see each
    other's verdicts."""
    answers: dict[str, list[Verdict]] = {}
    for _ in range(MAX_CALLS + 1):
        guard.answers = answers
        try:
            return reward()
        except NeedVerdicts as need:
            call = need.call
        finally:
            guard.answers = None
        results = await fetch(call)
        if len(results) != len(call["conversations"]):
            raise RuntimeError(
                f"the guard returned {len(results)} verdicts for {len(call['conversations'])} conversations"
            )
        answers[call_key(call)] = [verdict_from_json(v) for v in results]
    raise RuntimeError(f"the reward asked the guard more than {MAX_CALLS} times for one request")
