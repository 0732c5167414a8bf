"""Helpfulness rewards for the hybrid rule: a sequence-classification reward model as a TRL reward function,
and loading any reward function named in a config.

``RewardModelScore`` scores like TRL does for a model given in ``reward_funcs`` (chat template for
conversational data, right padding, the logit of the last real token); wrapping it as a callable is what lets
``HybridSafetyReward`` combine it with the guard's verdict (a model in ``reward_funcs`` is summed, never
``min``-ed). Like the guards, it pickles as its checkpoint reference and loads on first use.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from guard_reward.guards.common import hub_kwargs, resolve_device, resolve_dtype
from guard_reward.rewards.inputs import check_name

logger = logging.getLogger(__name__)


class RewardModelScore:
    """A sequence-classification reward model (one logit) as a TRL reward function.

    Args:
        name_or_path: hub id or local folder of an ``AutoModelForSequenceClassification`` checkpoint.
        device, dtype: placement (default: this process's accelerator; bfloat16 on a GPU that supports it).
        batch_size: completions per forward pass.
        max_length: inputs are truncated from the left to this many tokens (``None``: the tokenizer's limit).
        name: the reward's ``__name__``.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        name: str = "helpfulness",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name_or_path = os.fspath(name_or_path)
        self.device, self.dtype = device, dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = check_name(name)
        self._model: Any = None
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None, "_tokenizer": None}

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dev = resolve_device(self.device)
        kw = hub_kwargs(self.name_or_path)
        self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, **kw)
        self._tokenizer.truncation_side = "left"  # keep the end of the response, where the score is read
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            self.name_or_path, dtype=resolve_dtype(self.dtype, dev), **kw
        )
        if model.config.num_labels != 1:
            raise ValueError(
                f"{self.name_or_path} has {model.config.num_labels} labels; a reward model has 1"
            )
        model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.to(dev).eval()

    def _text(self, prompt: Any, completion: Any) -> str:
        if isinstance(prompt, str) and isinstance(completion, str):
            return prompt + completion
        if isinstance(prompt, str) or isinstance(completion, str):
            raise TypeError("prompt and completion must both be strings or both be message lists")
        if getattr(self._tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.name_or_path} has no chat template, needed for conversational data")
        return self._tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self._model is None:
            self._load()
        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        tok = self._tokenizer
        for start in range(0, len(texts), self.batch_size):
            batch = tok(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                truncation=self.max_length is not None,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self._model.device)
            logits = self._model(**batch).logits[:, 0]
            scores.extend(float(x) for x in logits.float().cpu())
        return scores


def load_reward_function(spec: str) -> Callable[..., Sequence[float | None]]:
    """A reward function named in a config: ``"package.module:attribute"`` (a function, or a class that is
    instantiated without arguments), or a sequence-classification reward model (hub id or folder)."""
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"cannot import {module_name!r} for reward function {spec!r}: {exc}") from exc
        if not hasattr(module, attr):
            raise AttributeError(
                f"module {module_name!r} has no attribute {attr!r} (reward function {spec!r})"
            )
        obj = getattr(module, attr)
        func = obj() if isinstance(obj, type) else obj
        if not callable(func):
            raise TypeError(f"{spec!r} is not callable")
        return func
    return RewardModelScore(spec)
