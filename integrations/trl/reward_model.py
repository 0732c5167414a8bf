"""``GuardRewardModel``: a guard-based scalar reward in the shape TRL 1.9-1.12's ``PPOTrainer`` reads.

``trl.experimental.ppo.PPOTrainer`` (removed in TRL 1.13) accepts only a sequence-classifier reward model: it
calls ``getattr(model, model.base_model_prefix)(input_ids=..., attention_mask=..., position_ids=...,
output_hidden_states=True, ...)`` on the **policy's token ids** (padding replaced by 0, masked out), applies
``model.score`` to the last hidden state and reads the value at each row's last non-pad token. A generative
guard cannot be passed there. This module is that shape around any TRL scalar reward function (e.g.
``SafetyReward``): the "backbone" decodes the ids with the policy tokenizer, splits prompt from response,
calls the reward function(s) and writes each row's score at every position, so whichever position PPOTrainer
reads holds the score; ``score`` is the identity.

Where the response starts is not passed to the reward model by PPOTrainer, so it is found from the policy's
chat template: the last occurrence of the generation prompt (``<|im_start|>assistant\\n`` for ChatML) in the
row, as token ids, or as text when a plain-text marker merged with its neighbours into other tokens. A ChatML
prompt is turned back into messages (TRL's conversational format); any other prompt is passed as decoded text
(standard format). Pass ``response_marker=`` for templates whose generation prompt cannot be derived. The
guard keeps its own device: ``.to()`` on this module moves nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ScalarRewardFunc = Callable[..., Sequence[float | None]]
_CHATML = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)<\|im_end\|>", re.DOTALL)


def generation_prompt(tokenizer: Any) -> str:
    """The text a chat template appends for ``add_generation_prompt=True`` (``<|im_start|>assistant\\n``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template, so the response start cannot be derived; pass "
            "response_marker= (the text that precedes every response in the policy's input)"
        )
    messages = [{"role": "user", "content": "x"}]
    with_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    without = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError(
            "could not derive the generation prompt from the chat template; pass response_marker= (the text "
            "that precedes every response in the policy's input)"
        )
    return with_prompt[len(without) :]


def _last_occurrence(ids: list[int], marker: list[int]) -> int:
    """Index just past the last occurrence of ``marker`` in ``ids``, or -1."""
    n = len(marker)
    for start in range(len(ids) - n, -1, -1):
        if ids[start : start + n] == marker:
            return start + n
    return -1


def _first_token_at(tokenizer: Any, ids: list[int], char: int) -> int:
    """Smallest ``k`` such that ``ids[:k]`` decodes to at least ``char`` characters (binary search)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=False)) >= char:
            hi = mid
        else:
            lo = mid + 1
    return lo


class _DecodeAndJudge(nn.Module):
    """The ``backbone``: policy ids -> texts -> reward functions -> ``(B, L, 1)`` scores."""

    def __init__(self, owner_config: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = owner_config
        self.last_metrics: dict[str, float] = {}
        self.last_extra: dict[str, list[Any]] = {}

    def split(self, ids: list[int], row: int) -> tuple[Any, Any, list[int]]:
        """``(prompt, completion, response_ids)`` of one row of real (unpadded) policy ids."""
        tok, marker, marker_ids = self.cfg["tokenizer"], self.cfg["marker"], self.cfg["marker_ids"]
        cut = _last_occurrence(ids, marker_ids)
        if cut >= 0:  # the usual case: a chat template's generation prompt, delimited by special tokens
            prompt_raw = tok.decode(ids[: cut - len(marker_ids)], skip_special_tokens=False)
        else:  # a plain-text marker may merge with its neighbours into other tokens: find it in the text
            text = tok.decode(ids, skip_special_tokens=False)
            pos = text.rfind(marker)
            if pos < 0:
                raise ValueError(
                    f"row {row}: the response marker {marker!r} is not in the policy's input, so prompt "
                    "and response cannot be told apart; pass response_marker= matching how the dataset's "
                    "prompts end"
                )
            cut = _first_token_at(tok, ids, pos + len(marker))
            prompt_raw = text[:pos]
        response_ids = ids[cut:]
        completion_text = tok.decode(response_ids, skip_special_tokens=True)
        messages = [
            {"role": role.strip(), "content": content} for role, content in _CHATML.findall(prompt_raw)
        ]
        if messages:
            return messages, [{"role": "assistant", "content": completion_text}], response_ids
        for special in getattr(tok, "all_special_tokens", []):
            prompt_raw = prompt_raw.replace(special, "")
        return prompt_raw, completion_text, response_ids

    def judge(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float32 scores for ``(B, L)`` policy ids (real tokens where ``attention_mask`` is 1)."""
        prompts, completions, completion_ids = [], [], []
        for row in range(input_ids.shape[0]):
            ids = input_ids[row][attention_mask[row].bool()].tolist()
            prompt, completion, response_ids = self.split(ids, row)
            prompts.append(prompt)
            completions.append(completion)
            completion_ids.append(response_ids)
        self.last_metrics, self.last_extra = {}, {}
        total = torch.zeros(len(prompts), dtype=torch.float64)
        seen = torch.zeros(len(prompts), dtype=torch.bool)
        for func, weight in zip(self.cfg["reward_funcs"], self.cfg["weights"], strict=True):
            values = func(
                prompts=prompts,
                completions=completions,
                completion_ids=completion_ids,
                trainer_state=None,
                log_metric=self._log_metric,
                log_extra=self._log_extra,
            )
            if len(values) != len(prompts):
                raise ValueError(
                    f"reward function returned {len(values)} values for {len(prompts)} completions"
                )
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += weight * float(v)
                    seen[i] = True
        if not bool(seen.all()):
            missing = int((~seen).sum())
            if self.cfg["none_score"] is None:
                raise ValueError(
                    f"{missing} of {len(prompts)} completions got None from every reward function and "
                    "PPOTrainer cannot skip a sample; pass none_score= to give them a fixed score"
                )
            logger.warning("%d of %d completions unscorable; scored none_score=%s", missing, len(prompts),
                           self.cfg["none_score"])  # fmt: skip
            total[~seen] = float(self.cfg["none_score"])
        return total.float()

    def _log_metric(self, name: str, value: float) -> None:
        self.last_metrics[name] = float(value)

    def _log_extra(self, column: str, values: list[Any]) -> None:
        self.last_extra[column] = list(values)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():
            scores = self.judge(input_ids, attention_mask).to(input_ids.device)
        hidden = scores.view(-1, 1, 1).expand(input_ids.shape[0], input_ids.shape[1], 1).contiguous()
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


class GuardRewardModel(nn.Module):
    """A scalar guard reward usable as ``reward_model=`` in ``trl.experimental.ppo.PPOTrainer`` (1.9-1.12).

    Args:
        reward_funcs: a TRL scalar reward function (``fn(prompts, completions, completion_ids, **kwargs) ->
            list[float | None]``, e.g. ``SafetyReward``) or a list of them.
        tokenizer: the policy's tokenizer (PPOTrainer's ``processing_class``).
        reward_weights: one weight per reward function (default 1.0 each); the score is the weighted sum over
            the functions that did not return ``None``.
        response_marker: text that precedes every response in the policy's input; default: the chat
            template's generation prompt.
        none_score: score of a completion every function returned ``None`` for; ``None`` (default) raises,
            since PPOTrainer has no way to skip a sample.

    Attributes:
        last_metrics: what the reward functions sent to ``log_metric`` on the last call (e.g. ``guard/…``);
            TRL 1.12's PPOTrainer has no channel for them, read them from a callback if wanted.
        last_extra: what they sent to ``log_extra`` on the last call.

    Called directly, ``model(input_ids, attention_mask)`` returns an output whose ``logits`` are ``(B, 1)``.
    """

    base_model_prefix = "backbone"

    def __init__(
        self,
        reward_funcs: ScalarRewardFunc | Sequence[ScalarRewardFunc],
        tokenizer: Any,
        *,
        reward_weights: Sequence[float] | None = None,
        response_marker: str | None = None,
        none_score: float | None = None,
    ) -> None:
        super().__init__()
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs or not all(callable(f) for f in funcs):
            raise TypeError("reward_funcs must be a callable or a non-empty list of callables")
        weights = [1.0] * len(funcs) if reward_weights is None else [float(w) for w in reward_weights]
        if len(weights) != len(funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(funcs)} reward functions")
        marker = generation_prompt(tokenizer) if response_marker is None else response_marker
        marker_ids = list(tokenizer(marker, add_special_tokens=False)["input_ids"])
        if not marker_ids:
            raise ValueError(f"response_marker {marker!r} tokenizes to nothing")
        config = {
            "reward_funcs": funcs,
            "weights": weights,
            "tokenizer": tokenizer,
            "marker": marker,
            "marker_ids": marker_ids,
            "none_score": none_score,
        }
        self.backbone = _DecodeAndJudge(config)
        self.score = nn.Identity()

    @property
    def last_metrics(self) -> dict[str, float]:
        return self.backbone.last_metrics

    @property
    def last_extra(self) -> dict[str, list[Any]]:
        return self.backbone.last_extra

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Score each row; ``.logits`` is ``(B, 1)`` float32 (the sequence-classifier convention)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.backbone(input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.score(hidden)[:, -1, :])
