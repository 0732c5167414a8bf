"""``SummedTokenReward``: a dense reward folded into one scalar per completion.

It turns a dense reward (:class:`~guard_reward.rewards.token.TokenSafetyPenalty`) into the sum of its per-token
rewards, for trainers that are sequence-level only, such as RLOO. With ``first_violation`` shaping the sum is
``−coef · max_t risk_t``: the worst risk the response reached. The dense reward caches its last batch, so folding
the batch it has just scored costs nothing and logs nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from guard_reward.rewards.inputs import check_name
from guard_reward.types import DenseRewards


class SummedTokenReward:
    """A dense reward folded into one scalar per completion: the sum of its per-token rewards.

    For sequence-level trainers (RLOO), or to give GRPO's group normalisation the dense signal as well.
    Args: ``dense`` a dense reward (e.g. :class:`TokenSafetyPenalty`); ``name`` (default ``<dense>_sum``).
    """

    def __init__(self, dense: Callable[..., DenseRewards], name: str | None = None) -> None:
        if not callable(dense):
            raise TypeError(f"dense must be a dense reward callable, got {type(dense).__name__}")
        self.dense = dense
        self.__name__ = check_name(name or f"{getattr(dense, '__name__', type(dense).__name__)}_sum")

    def bind_tokenizer(self, tokenizer: Any) -> None:
        bind = getattr(self.dense, "bind_tokenizer", None)
        if callable(bind):
            bind(tokenizer)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """The per-row sum; ``None`` (no signal) for a completion with tokens whose mask row is all False
        (the dense reward could not score it)."""
        rewards, mask = self.dense(prompts=prompts, completions=completions, **kwargs)
        ids = kwargs.get("completion_ids")
        lengths = [len(row) for row in ids] if ids is not None else [1] * rewards.shape[0]
        sums = (rewards * mask).sum(dim=1).tolist()
        has_signal = mask.any(dim=1).tolist()
        return [
            float(x) if ok or n == 0 else None for x, ok, n in zip(sums, has_signal, lengths, strict=True)
        ]
