"""Turn-level safety rewards: each assistant turn's own Gen verdict, on that turn's own tokens.

A scalar reward (:class:`~guard_reward.SafetyReward` with ``turns="worst"``) gives a whole agent trajectory one
number: a 5-turn trajectory with one unsafe tool call in turn 2 puts the same value on every token of every
turn, so the safe turns share the blame and the unsafe one gets no more of it than they do.
:class:`TurnSafetyReward` is a dense reward (the :class:`~guard_reward.types.DenseRewards` contract, so
``DenseGRPOTrainer``, ``ConstrainedGRPOTrainer`` and ``GuardPPOTrainer`` all take it) that places each judged
turn's value on that turn's tokens instead.

* **What a turn is worth** is exactly what the wrapped scalar reward computes for it (the same judging, one
  guard call, the same rules: refusal handling, empty answers, a cut-off reasoning block, ``truncated_value``
  for the unfinished turn; :meth:`~guard_reward.rewards.base.GuardReward.evaluate_turns`). With ``turns="last"``
  only the final turn is judged, so only it is placed. A turn that could not be valued gets no signal (its
  tokens are outside the mask); the other turns keep theirs.
* **Where it goes**: ``placement="last"`` (default) puts the value on the turn's last token, a reward for the
  turn as a whole, as a terminal score is for a completion (GAE / return-to-go then credit every token of the
  turn, and the turns before it); ``"spread"`` divides it evenly over the turn's tokens (the turn's tokens sum
  to its value; the form for ``dense_advantage="token"``, which credits each token with its own reward only).
* **Relation to the scalar value**: the scalar value of a ``turns="worst"`` trajectory is the minimum of its
  turn values (a missing turn after trailing tool results, valued by ``truncated_value``, has no tokens and is
  not placed); the turn-level rewards sum them. The scalar reward stays available, unchanged: use one or the
  other as the safety signal, not both, or the same verdicts count twice.
* **With Stream** (``violations=TokenSafetyPenalty(...)``): a turn the Gen guard judges unsafe gets its value
  on the token where Stream saw it become unsafe (the first token of that turn the penalty touches; the turn's
  last token when Stream saw nothing) instead of its last token. Stream only says *where*, Gen says *how much*:
  each turn's tokens still sum to its Gen value, so nothing is counted twice (do not also pass the penalty as a
  dense reward).

Bad input — a ``tool_mask`` whose runs of policy tokens do not match the completion's assistant turns (count,
or a run that does not hold its turn's text), a completion the scalar reward could not split into turns — gives
that sample no turn-level signal (its whole mask row False), counted per reason (``<prefix>/turn_unplaced/
<reason>``) and logged once with an example; the trajectory's scalar value is unaffected.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from guard_reward.rewards import metrics
from guard_reward.rewards.base import GuardReward
from guard_reward.rewards.inputs import check_name
from guard_reward.rewards.turns import (
    TURN_COUNT_MISMATCH,
    TURN_NOT_FOUND,
    check_tool_mask,
    locate_turns,
    policy_turns,
)
from guard_reward.shaping.scalar import finite_number, is_unsafe
from guard_reward.types import DenseRewards, Verdict

logger = logging.getLogger(__name__)

PLACEMENTS: tuple[str, ...] = ("last", "spread")
#: A sample the scalar reward could not split into assistant turns (a malformed message list).
NOT_SPLIT = "not_split"
UNPLACED_REASONS: tuple[str, ...] = (TURN_COUNT_MISMATCH, TURN_NOT_FOUND, NOT_SPLIT)


def place_turn_values(
    values: Sequence[float | None], policy_mask: Sequence[int] | torch.Tensor, placement: str = "last"
) -> torch.Tensor:
    """One trajectory's turn values on its tokens, as :class:`TurnSafetyReward` places them: ``(T,)`` float32.

    For a caller that has the values and the policy mask but not the messages (a verl ``assemble_rm_scores``
    with ``reward_extra_info["turn_values"]`` and ``response_mask``): the ``k``-th run of 1s in ``policy_mask``
    ``(T,)`` is turn ``k``; ``None``/NaN values place nothing. With ``turns="last"`` pass the last run's value
    alone: a list shorter than the runs is aligned to the last runs.

    Raises:
        ValueError when there are more values than runs of policy tokens (the turns cannot be located).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not accepted; use one of {', '.join(PLACEMENTS)}")
    keep = [bool(int(m)) for m in (policy_mask.tolist() if hasattr(policy_mask, "tolist") else policy_mask)]
    runs = policy_turns(keep)
    if len(values) > len(runs):
        raise ValueError(f"{len(values)} turn values for {len(runs)} runs of policy tokens")
    out = torch.zeros(len(keep))
    for (start, end), value in zip(runs[len(runs) - len(values) :], values, strict=True):
        if value is None or value != value:  # NaN: no value
            continue
        if placement == "last":
            out[end - 1] = float(value)
        else:
            out[start:end] = float(value) / (end - start)
    return out


class TurnSafetyReward:
    """A dense reward: each judged assistant turn's value (from ``reward``) on that turn's own tokens.

    Args:
        reward: the scalar Gen reward whose per-turn values are placed (a
            :class:`~guard_reward.rewards.base.GuardReward`: ``SafetyReward``, ``HybridSafetyReward``). When the
            same object is also a scalar reward of the trainer, the batch it has just judged is reused: no
            second guard call, nothing logged twice.
        placement: ``"last"`` (the turn's last token) or ``"spread"`` (evenly over the turn's tokens).
        coef: multiplies every value.
        violations: a Stream penalty (``TokenSafetyPenalty``) that says where an unsafe turn became unsafe; its
            own penalties are not added (see the module docstring).
        policy_tokenizer: the policy's tokenizer, to check that each turn's tokens hold its text; the trainers
            bind it (:meth:`bind_tokenizer`). Without one only the number of turns is checked.
        name: the reward's ``__name__``; default ``<reward>_turns``.
    """

    def __init__(
        self,
        reward: GuardReward,
        *,
        placement: str = "last",
        coef: float = 1.0,
        violations: Callable[..., DenseRewards] | None = None,
        policy_tokenizer: Any = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(reward, GuardReward):
            raise TypeError(
                f"reward must be a Gen scalar reward (SafetyReward, HybridSafetyReward), got {type(reward).__name__}"
            )
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r} is not accepted; use one of {', '.join(PLACEMENTS)}")
        if violations is not None and not callable(violations):
            raise TypeError(f"violations must be a dense reward (TokenSafetyPenalty), got {type(violations)}")
        self.reward, self.placement, self.violations = reward, placement, violations
        self.coef = finite_number("coef", coef)
        self.policy_tokenizer = policy_tokenizer
        self.__name__ = check_name(name or f"{reward.__name__}_turns")
        self.unplaced: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"TurnSafetyReward(name={self.__name__!r}, reward={self.reward!r}, placement={self.placement!r})"
        )

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` as the policy's (to check each turn's tokens against its text)."""
        self.policy_tokenizer = tokenizer
        bind = getattr(self.violations, "bind_tokenizer", None)
        if callable(bind):
            bind(tokenizer)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        tool_mask: Any = None,
        **kwargs: Any,
    ) -> DenseRewards:
        """``(B, T)`` rewards and mask aligned to ``completion_ids`` (``T`` the longest), True on the tokens of
        every turn that has a value.

        ``tool_mask``: TRL's (or verl's ``response_mask``), 1 on the policy's tokens; each run of them is one
        assistant turn. Without one, a completion must have a single assistant turn (all its tokens).
        """
        if completion_ids is None:
            raise ValueError(
                f"{self.__name__} needs completion_ids (TRL passes them to every reward function)"
            )
        ids = [list(map(int, row)) for row in completion_ids]
        keep = check_tool_mask(tool_mask, [len(row) for row in ids])
        call = dict(kwargs, completion_ids=completion_ids, log_metric=log_metric)
        judged = self.reward.evaluate_turns(prompts, completions, **call)
        anchors = self._violations(prompts, completions, call, tool_mask)
        width = max((len(row) for row in ids), default=0)
        rewards = torch.zeros(len(ids), width)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        batch: Counter[str] = Counter()
        for i, completion in enumerate(completions):
            spans = self._spans(i, completion, ids[i], None if keep is None else keep[i], judged, batch)
            if spans is None:
                continue
            verdicts = judged.judged[i].verdicts
            for (start, end), value, verdict in zip(spans, judged.turn_values[i], verdicts, strict=True):
                if value is None:
                    continue
                at = self._anchor(anchors, i, start, end, verdict)
                mask[i, start:end] = True
                if self.placement == "last":
                    rewards[i, at if at is not None else end - 1] = self.coef * value
                else:
                    first = start if at is None else at
                    rewards[i, first:end] = self.coef * value / (end - first)
        self._emit(log_metric, batch, mask, ids)
        return DenseRewards(rewards, mask)

    def _spans(
        self,
        i: int,
        completion: Any,
        ids: list[int],
        keep: list[bool] | None,
        judged: Any,
        batch: Counter[str],
    ) -> list[tuple[int, int]] | None:
        """The token spans of sample ``i``'s judged turns, or ``None`` (counted) when they cannot be placed."""
        if not judged.judged[i].valid:
            return self._unplaced(i, NOT_SPLIT, "the completion could not be split into turns", batch)
        try:
            where = locate_turns(self.policy_tokenizer, completion, ids, keep)
        except (TypeError, AttributeError) as exc:
            return self._unplaced(i, NOT_SPLIT, str(exc), batch)
        if isinstance(where, str):
            n_runs = "all tokens" if keep is None else f"{len(policy_turns(keep))} runs of policy tokens"
            return self._unplaced(
                i, where, f"{len(judged.judged[i].tool_calls)} judged turns, {n_runs}", batch
            )
        n = len(judged.turn_values[i])
        return where[-n:] if n else []  # turns="last": the judged turn is the last one

    def _unplaced(self, i: int, reason: str, detail: str, batch: Counter[str]) -> None:
        batch[reason] += 1
        self.unplaced[reason] += 1
        if self.unplaced[reason] == 1:
            logger.warning(
                "%s: sample %d gets no turn-level reward (%s: %s); its scalar value stands. Further cases are "
                "only counted (turn_unplaced/%s).",
                self.__name__,
                i,
                reason,
                detail,
                reason,
            )
        return None

    def _violations(self, prompts: Any, completions: Any, call: dict[str, Any], tool_mask: Any) -> Any:
        """The Stream penalty's ``(B, T)`` rewards and mask, or ``None`` without ``violations``."""
        if self.violations is None:
            return None
        return self.violations(prompts=prompts, completions=completions, tool_mask=tool_mask, **call)

    def _anchor(self, anchors: Any, i: int, start: int, end: int, verdict: Verdict) -> int | None:
        """The token where Stream saw an unsafe turn become unsafe, or ``None`` (then the default place)."""
        if anchors is None or not verdict.ok:
            return None
        shaping = getattr(self.reward, "shaping", None)
        if not is_unsafe(verdict, getattr(shaping, "controversial", "strict")):
            return None
        rewards, mask = anchors
        hit = (mask[i, start:end] & (rewards[i, start:end] != 0)).nonzero()
        return start + int(hit[0, 0]) if hit.numel() else None

    def _emit(self, log_metric: Any, batch: Counter[str], mask: torch.Tensor, ids: list[list[int]]) -> None:
        prefix = self.reward.metric_prefix
        placed = [float(bool(mask[i].any())) for i, row in enumerate(ids) if row]
        totals = {
            metrics.metric_name(prefix, f"turn_unplaced/{r}"): float(batch[r]) for r in UNPLACED_REASONS
        }
        metrics.emit_metrics(
            log_metric, rates={metrics.metric_name(prefix, "turn_placed_rate"): placed}, totals=totals
        )
