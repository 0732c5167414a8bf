"""``reward_func(queries, prompts, labels)`` for OpenRLHF's ``--reward.remote_url path/to/this_file.py``.

OpenRLHF 0.11 calls it in its rollout actors (through ``asyncio.to_thread``, usually one sample at a time) with
the decoded prompt+response texts and the prompt texts; it asks the served guard (``$GUARD_REWARD_URL``,
e.g. ``http://HOST:8000``) and returns ``{"rewards": tensor, "scores": tensor, "extra_logs": {...}}`` (the keys of
:data:`guard_reward.serving.get_reward.EXTRA_LOGS`). Queries are split into messages as ``/get_reward`` splits
them (:mod:`guard_reward.serving.chat_formats`); the guard is asked through ``RemoteGenGuard``, whose retries
honour the service's ``Retry-After`` (OpenRLHF's own HTTP client does not).
Reward settings: ``$GUARD_REWARD_CONFIG`` (a YAML file of ``SafetyReward`` fields), else the defaults.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from guard_reward.guards.remote import RemoteGenGuard
from guard_reward.serving.get_reward import GuardRewardFunction

_FUNCTION: GuardRewardFunction | None = None


def _function() -> GuardRewardFunction:
    global _FUNCTION
    if _FUNCTION is None:
        url = os.environ.get("GUARD_REWARD_URL")
        if not url:
            raise ValueError("set GUARD_REWARD_URL to the address printed by `guard-reward serve`")
        config = None
        if os.environ.get("GUARD_REWARD_CONFIG"):
            from guard_reward.serving.config import load_reward_config

            config = load_reward_config(os.environ["GUARD_REWARD_CONFIG"])
        _FUNCTION = GuardRewardFunction(RemoteGenGuard(url), config)
    return _FUNCTION


def reward_func(queries: list[str], prompts: list[str], labels: list[Any] | None = None) -> dict[str, Any]:
    """One reward per query: ``rewards``/``scores`` ``(B,)`` float tensors, ``extra_logs`` ``{name: (B,)}``."""
    result = _function()(queries, prompts)
    return {
        "rewards": torch.tensor(result["rewards"], dtype=torch.float32),
        "scores": torch.tensor(result["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in result["extra_logs"].items()},
    }
