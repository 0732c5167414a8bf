"""guard_reward: Qwen3Guard safety models as reward signals for RL fine-tuning.

``import guard_reward`` needs only torch; the public classes below are imported on first use, so
transformers and TRL load only when a guard, a reward or a trainer is actually touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from guard_reward.types import LEVELS, TokenRisk, Verdict

__version__ = "0.1.0"

_LAZY = {
    "GenGuard": "guard_reward.guards.gen",
    "StreamGuard": "guard_reward.guards.stream",
    "RemoteGenGuard": "guard_reward.guards.remote",
    "RemoteStreamGuard": "guard_reward.guards.remote",
    "SafetyReward": "guard_reward.rewards",
    "HybridSafetyReward": "guard_reward.rewards",
    "TokenSafetyPenalty": "guard_reward.rewards",
}

__all__ = [
    "LEVELS",
    "GenGuard",
    "HybridSafetyReward",
    "RemoteGenGuard",
    "RemoteStreamGuard",
    "SafetyReward",
    "StreamGuard",
    "TokenRisk",
    "TokenSafetyPenalty",
    "Verdict",
]

if TYPE_CHECKING:
    from guard_reward.guards.gen import GenGuard
    from guard_reward.guards.remote import RemoteGenGuard, RemoteStreamGuard
    from guard_reward.guards.stream import StreamGuard
    from guard_reward.rewards import HybridSafetyReward, SafetyReward, TokenSafetyPenalty


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard_reward' has no attribute {name!r}")
