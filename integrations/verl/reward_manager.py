"""A verl 0.9 reward-loop manager that values each sample with the served Qwen3Guard-Gen.

verl's ``RewardLoopWorker`` calls :meth:`GuardRewardManager.run_single` once per sample, concurrently; each
call is one HTTP request, and the service's dynamic batching merges the concurrent ones into guard batches.
Configure (Hydra overrides)::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=GuardRewardManager
    reward.reward_manager.module.path=pkg://guard_reward.integrations.verl.reward_manager
    +reward.guard_reward.url=http://HOST:8000          # or $GUARD_REWARD_URL
    +reward.guard_reward.mode=soft                     # optional SafetyReward fields
    +reward.guard_reward.turns=worst                   # multi-turn: "worst" (default) or "last"
    +reward.guard_reward.turn_values=true              # optional: each turn's own value in reward_extra_info

The prompt is ``non_tensor_batch["raw_prompt"]`` (messages) when verl keeps it, else the decoded prompt tokens
(ChatML turns parsed back into messages). The response is split into the policy's turns and the tool results
between them (:mod:`~guard_reward.integrations.verl.turns`: a kept message list, else ``response_mask``, else
ChatML markers), so only the policy's words are judged, each turn in its context; a single-turn response is
decoded without special tokens, as before. verl needs a float for every sample, so one the guard could not
judge gets ``failure_value`` (0.0 unless set) and ``guard_failed = 1`` in ``reward_extra_info``, which also
carries ``turns`` (assistant turns judged), ``tool_calls`` and ``truncated`` (no EOS at the end), and with
``turn_values`` each judged turn's value (a list; ``place_turn_values`` puts it on the turns' tokens).
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from guard_reward.guards.remote import RemoteGenGuard
from guard_reward.integrations.verl.scoring import GuardScorer
from guard_reward.integrations.verl.settings import split_settings
from guard_reward.integrations.verl.turns import completion_from_messages, kept_messages
from guard_reward.rewards.turns import turns_from_chatml, turns_from_mask
from guard_reward.serving.get_reward import prompt_messages


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
        self.scorer = GuardScorer(self.guard, reward_config, end_ids(tokenizer))

    def _sample(self, item: Any) -> tuple[list[dict[str, Any]], str | list[dict[str, Any]], list[int]]:
        """``(prompt messages, completion, policy response ids)`` of one ``DataProtoItem``; the completion is
        the decoded text of a single-turn response, else its messages (module docstring)."""
        prompt_ids = item.batch["prompts"]
        prompt_length = prompt_ids.shape[-1]
        mask = item.batch["attention_mask"]
        valid_prompt = int(mask[:prompt_length].sum())
        valid_response = int(mask[prompt_length:].sum())
        ids = item.batch["responses"][:valid_response].tolist()
        raw = item.non_tensor_batch.get("raw_prompt", None)
        opening = ""
        if raw is not None and len(raw) and isinstance(raw[0], dict):
            messages = [dict(m) for m in raw]
        else:
            text = self.tokenizer.decode(
                prompt_ids[prompt_length - valid_prompt :], skip_special_tokens=False
            )
            messages, opening = prompt_messages(text)
        policy = ids
        completion: Any = None
        kept = kept_messages(item.non_tensor_batch, item.non_tensor_batch.get("extra_info", None))
        if kept is not None:
            completion = completion_from_messages(kept, messages)
        if completion is None and "response_mask" in item.batch.keys():  # noqa: SIM118 - a TensorDict refuses `in`
            policy_mask = item.batch["response_mask"][:valid_response].tolist()
            policy = [t for t, m in zip(ids, policy_mask, strict=True) if m]
            if 0 in policy_mask:
                completion = turns_from_mask(self.tokenizer, ids, policy_mask)
        if completion is None:
            completion = turns_from_chatml(self.tokenizer.decode(ids, skip_special_tokens=False))
        if completion is None:
            completion = self.tokenizer.decode(ids, skip_special_tokens=True)
        if opening:  # an open think block from the generation prompt belongs to the first turn
            if isinstance(completion, str):
                completion = opening + completion
            else:
                completion[0] = {**completion[0], "content": opening + (completion[0].get("content") or "")}
        return messages, completion, policy

    async def run_single(self, data: DataProto) -> dict:
        """``{"reward_score": float, "reward_extra_info": GuardScorer.score's extras}`` (0/1 indicators,
        ``p_unsafe``, ``tool_calls``, ``turns``, ``truncated``)."""
        item = data[-1:][0]  # multi-sequence outputs: the last sequence, as verl's own managers do
        messages, completion, policy_ids = await asyncio.to_thread(self._sample, item)
        score, extra = await asyncio.to_thread(self.scorer.score, messages, completion, policy_ids)
        return {"reward_score": score, "reward_extra_info": extra}


def end_ids(tokenizer: Any) -> list[int]:
    """The policy's end-of-sequence ids: its EOS, ``<|im_end|>`` when it has one, and its pad id."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if isinstance(i, int))
