"""A plain async ``compute_score`` for verl's ``reward.custom_reward_function`` that asks the served guard.

verl passes only the decoded response (``solution_str``); the prompt, when the dataset keeps it, comes from
``extra_info["prompt"]`` (a string or a message list), else the response is judged after an empty user turn.
For prompt-aware verdicts prefer :class:`~guard_reward.integrations.verl.reward_manager.GuardRewardManager`.
Settings come as ``reward.custom_reward_function.reward_kwargs`` (``url`` or ``$GUARD_REWARD_URL``, client
options, ``SafetyReward`` fields).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from guard_reward.guards.remote import RemoteGenGuard
from guard_reward.integrations.verl.settings import split_settings
from guard_reward.serving.get_reward import GuardRewardFunction

_FUNCTIONS: dict[str, GuardRewardFunction] = {}


def _function(kwargs: dict[str, Any]) -> GuardRewardFunction:
    """One client per distinct settings per process (its connection pool is reused across samples)."""
    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _FUNCTIONS:
        url, client, reward_config = split_settings(kwargs)
        _FUNCTIONS[key] = GuardRewardFunction(RemoteGenGuard(url, **client), reward_config)
    return _FUNCTIONS[key]


async def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """``{"score": float, "p_unsafe", "level", "refusal", "guard_failed"}`` for one response."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("reward_router_address", "reward_model_tokenizer")}
    prompt = (extra_info or {}).get("prompt", "")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    result = await asyncio.to_thread(_function(kwargs).score, [messages], [solution_str])
    return {"score": result["rewards"][0], **{k: v[0] for k, v in result["extra_logs"].items()}}
