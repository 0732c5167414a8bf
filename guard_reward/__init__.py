"""guard_reward: Qwen3Guard safety models as reward signals for RL fine-tuning.

``import guard_reward`` needs only torch; the public classes below are imported on first use, so
transformers and TRL load only when a guard, a reward or a trainer is actually touched.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

from guard_reward.types import LEVELS, TokenRisk, Verdict

__version__ = "0.1.0"

_LAZY = {
    "GenGuard": "guard_reward.guards.gen",
    "StreamGuard": "guard_reward.guards.stream",
    "RemoteGenGuard": "guard_reward.guards.remote",
    "RemoteStreamGuard": "guard_reward.guards.remote",
    "OpenAIGenGuard": "guard_reward.guards.openai_gen",
    "SafetyReward": "guard_reward.rewards",
    "HybridSafetyReward": "guard_reward.rewards",
    "TokenSafetyPenalty": "guard_reward.rewards",
    "TurnSafetyReward": "guard_reward.rewards",
    "AttackReward": "guard_reward.rewards",
}

__all__ = [
    "LEVELS",
    "AttackReward",
    "GenGuard",
    "HybridSafetyReward",
    "OpenAIGenGuard",
    "RemoteGenGuard",
    "RemoteStreamGuard",
    "SafetyReward",
    "StreamGuard",
    "TokenRisk",
    "TokenSafetyPenalty",
    "TurnSafetyReward",
    "Verdict",
]

if TYPE_CHECKING:
    from guard_reward.guards.gen import GenGuard
    from guard_reward.guards.openai_gen import OpenAIGenGuard
    from guard_reward.guards.remote import RemoteGenGuard, RemoteStreamGuard
    from guard_reward.guards.stream import StreamGuard
    from guard_reward.rewards import (
        AttackReward,
        HybridSafetyReward,
        SafetyReward,
        TokenSafetyPenalty,
        TurnSafetyReward,
    )


#: Modules that moved into the layer folders: the old import path still works, and warns once when imported.
_MOVED: dict[str, tuple[str, ...]] = {
    "guard_reward.alignment": ("guard_reward.guards.offsets", "guard_reward.rewards.turns"),
    "guard_reward.annotate": ("guard_reward.evaluation.annotate",),
    "guard_reward.config": ("guard_reward.recipes.config", "guard_reward.recipes.arguments"),
    "guard_reward.constraint": ("guard_reward.shaping.constraint", "guard_reward.rewards.cost"),
    "guard_reward.intervention": ("guard_reward.guards.intervention",),
    "guard_reward.metrics": ("guard_reward.rewards.metrics",),
    "guard_reward.plots": ("guard_reward.evaluation.plots",),
    "guard_reward.protocol": ("guard_reward.serving.protocol",),
    "guard_reward.recipe_check": ("guard_reward.recipes.check",),
    "guard_reward.rewards.async_form": ("guard_reward.rewards.async_reward",),
    "guard_reward.evaluation.run": ("guard_reward.evaluation.checkpoint_eval",),
    "guard_reward.evaluation.runner": ("guard_reward.evaluation.answering",),
    "guard_reward.integrations.trl.ppo_math": (
        "guard_reward.shaping.ppo_math",
        "guard_reward.shaping.normalize",
    ),
    "guard_reward.integrations.trl.train": ("guard_reward.recipes.train",),
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as a thin alias of its new home(s), with one ``DeprecationWarning``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        homes = [importlib.import_module(name) for name in _MOVED[module.__name__]]
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(h.__name__ for h in homes)}; import it from there "
            "(the old path will be removed in a future release)",
            DeprecationWarning,
            stacklevel=2,
        )
        for home in homes:
            public = getattr(home, "__all__", None) or [n for n in vars(home) if not n.startswith("__")]
            module.__dict__.update({n: getattr(home, n) for n in public})
        module.__doc__ = homes[0].__doc__


sys.meta_path.append(_MovedModule())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard_reward' has no attribute {name!r}")
