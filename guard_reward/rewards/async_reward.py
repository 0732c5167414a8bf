"""An async form of any reward: TRL 1.16 runs async reward functions concurrently (``asyncio.gather`` on its
event-loop thread), so rewards that wait on a served guard overlap their requests instead of queueing them.

``AsyncReward(SafetyReward(RemoteGenGuard(url)))`` is called exactly like the wrapped reward and returns the
same values; the wrapped call runs in a worker thread (the remote clients block on their sockets there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class AsyncReward:
    """``await AsyncReward(reward)(prompts=..., completions=..., **kwargs)`` == ``reward(...)``; picklable when
    ``reward`` is, with the wrapped reward's ``__name__`` (TRL's metric key)."""

    def __init__(self, reward: Callable[..., Any]) -> None:
        if not callable(reward):
            raise TypeError(f"AsyncReward wraps a reward function, got {type(reward).__name__}")
        self.reward = reward
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)

    def __repr__(self) -> str:
        return f"AsyncReward({self.reward!r})"

    async def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.reward, prompts=prompts, completions=completions, **kwargs)
