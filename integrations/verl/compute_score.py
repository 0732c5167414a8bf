"""A plain async ``compute_score`` for verl's ``reward.custom_reward_function`` that asks the served guard.

verl passes only the response decoded without special tokens (``solution_str``) and ``extra_info`` (the
dataset's, plus the agent loop's ``tool_extra_fields``); the prompt, when the dataset keeps it, comes from
``extra_info["prompt"]`` (a string or a message list), else the response is judged after an empty user turn.
A multi-turn response is split into the policy's turns and the tool results between them from a message list in
``extra_info["messages"]`` when the rollout keeps one, else from the ``<tool_response>`` blocks left in the
text (Qwen/Hermes templates: ``user\\n<tool_response>...</tool_response>\\nassistant\\n`` once special tokens
are gone). :class:`~guard_reward.integrations.verl.reward_manager.GuardRewardManager` sees the token ids and
``response_mask`` and is the more exact choice. Settings come as ``reward.custom_reward_function.reward_kwargs``
(``url`` or ``$GUARD_REWARD_URL``, client options, ``SafetyReward`` fields including ``turns``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from guard_reward.guards.remote import RemoteGenGuard
from guard_reward.integrations.verl.scoring import GuardScorer
from guard_reward.integrations.verl.settings import split_settings
from guard_reward.integrations.verl.turns import completion_from_messages, kept_messages

_SCORERS: dict[str, GuardScorer] = {}
#: A run of tool results between two policy turns, as Qwen/Hermes templates render it minus special tokens.
_TOOL_RUN = re.compile(r"\n*user\n((?:<tool_response>\n?.*?\n?</tool_response>\n?)+)assistant\n", re.S)
_BLOCK = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.S)


def _scorer(kwargs: dict[str, Any]) -> GuardScorer:
    """One client per distinct settings per process (its connection pool is reused across samples)."""
    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _SCORERS:
        url, client, reward_config = split_settings(kwargs)
        _SCORERS[key] = GuardScorer(RemoteGenGuard(url, **client), reward_config, None)
    return _SCORERS[key]


def split_text(solution_str: str) -> str | list[dict[str, str]]:
    """The policy's turns and the tool results in a response decoded without special tokens; the text itself
    when it holds no tool results."""
    out: list[dict[str, str]] = []
    start = 0
    for match in _TOOL_RUN.finditer(solution_str):
        out.append({"role": "assistant", "content": solution_str[start : match.start()]})
        out.extend({"role": "tool", "content": b} for b in _BLOCK.findall(match.group(1)))
        start = match.end()
    if not out:
        return solution_str
    out.append({"role": "assistant", "content": solution_str[start:]})
    return out


async def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """``{"score": float, **GuardScorer.score's reward_extra_info}`` for one response."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("reward_router_address", "reward_model_tokenizer")}
    prompt = (extra_info or {}).get("prompt", "")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    completion: Any = completion_from_messages(kept_messages({}, extra_info), messages)
    if completion is None:
        completion = split_text(solution_str)
    score, extra = await asyncio.to_thread(_scorer(kwargs).score, messages, completion)
    return {"score": score, **extra}
