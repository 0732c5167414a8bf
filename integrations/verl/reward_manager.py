"""A verl 0.9 reward-loop manager that values each sample with the served Qwen3Guard-Gen.

verl's ``RewardLoopWorker`` calls :meth:`GuardRewardManager.run_single` once per sample, concurrently; each
call is one HTTP request, and the service's dynamic batching merges the concurrent ones into guard batches.
Configure (Hydra overrides)::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=GuardRewardManager
    reward.reward_manager.module.path=pkg://guard_reward.integrations.verl.reward_manager
    +reward.guard_reward.url=http://HOST:8000          # or $GUARD_REWARD_URL
    +reward.guard_reward.mode=soft                     # optional SafetyReward fields

The prompt is ``non_tensor_batch["raw_prompt"]`` (messages) when verl keeps it, else the decoded prompt tokens
(ChatML turns parsed back into messages); the response is decoded without special tokens. verl needs a float
for every sample, so one the guard could not judge gets ``failure_value`` (0.0 unless set) and
``guard_failed = 1`` in ``reward_extra_info``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from guard_reward.guards.remote import RemoteGenGuard
from guard_reward.integrations.verl.settings import split_settings
from guard_reward.serving.get_reward import GuardRewardFunction, prompt_messages


class GuardRewardManager(RewardManagerBase):
    """verl reward-loop manager asking ``guard-reward serve`` (settings from ``config.reward.guard_reward``)."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        reward_cfg = config.get("reward", {}) if hasattr(config, "get") else {}
        settings = reward_cfg.get("guard_reward", None) if hasattr(reward_cfg, "get") else None
        if settings is not None and hasattr(settings, "items"):
            settings = {k: v for k, v in settings.items()}
        url, client, reward_config = split_settings(settings)
        self.guard = RemoteGenGuard(url, **client)
        self.reward_fn = GuardRewardFunction(self.guard, reward_config)

    def _sample(self, item: Any) -> tuple[list[dict[str, str]], str]:
        """``(prompt messages, response text)`` of one ``DataProtoItem``."""
        prompt_ids = item.batch["prompts"]
        prompt_length = prompt_ids.shape[-1]
        mask = item.batch["attention_mask"]
        valid_prompt = int(mask[:prompt_length].sum())
        valid_response = int(mask[prompt_length:].sum())
        response = self.tokenizer.decode(item.batch["responses"][:valid_response], skip_special_tokens=True)
        raw = item.non_tensor_batch.get("raw_prompt", None)
        if raw is not None and len(raw) and isinstance(raw[0], dict):
            return [dict(m) for m in raw], response
        text = self.tokenizer.decode(prompt_ids[prompt_length - valid_prompt :], skip_special_tokens=False)
        messages, opening = prompt_messages(text)
        return messages, opening + response

    async def run_single(self, data: DataProto) -> dict:
        """``{"reward_score": float, "reward_extra_info": {p_unsafe, level, refusal, guard_failed}}``."""
        item = data[-1:][0]  # multi-sequence outputs: the last sequence, as verl's own managers do
        messages, response = await asyncio.to_thread(self._sample, item)
        result = await asyncio.to_thread(self.reward_fn.score, [messages], [response])
        extra = {name: values[0] for name, values in result["extra_logs"].items()}
        return {"reward_score": result["rewards"][0], "reward_extra_info": extra}
