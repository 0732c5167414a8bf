"""One verl sample -> a float score and ``reward_extra_info``, through a ``SafetyReward`` on the served guard.

verl needs a float for every sample, so a sample the guard could not judge scores ``failure_value`` (0.0 unless
set) with ``guard_failed = 1``. The verdict reported is the one that decided the score (the worst turn, or the
last), unlike a per-request log of whatever the guard was asked first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from guard_reward.rewards.safety import SafetyReward
from guard_reward.rewards.trajectory import truncated_flags
from guard_reward.serving.get_reward import reward_kwargs, sample_logs

#: ``SafetyReward`` fields for multi-turn samples, accepted next to the reward config's.
TURN_FIELDS = ("turns", "truncated_value")
#: Opt-in: ``reward_extra_info["turn_values"]``, each judged turn's own value (a list per sample).
TURN_VALUES = "turn_values"


class GuardScorer:
    """A ``SafetyReward`` on ``guard`` with ``reward_config`` (as for ``--reward-config``, plus ``turns`` and
    ``truncated_value``); ``eos_token_ids`` are the policy's end ids (truncation)."""

    def __init__(
        self, guard: Any, reward_config: Mapping[str, Any] | None, eos_token_ids: Sequence[int] | None
    ) -> None:
        config = {
            k: v
            for k, v in (reward_config or {}).items()
            if k.removeprefix("guard_") not in (*TURN_FIELDS, TURN_VALUES)
        }
        wanted = [v for k, v in (reward_config or {}).items() if k.removeprefix("guard_") == TURN_VALUES]
        if wanted and not isinstance(wanted[0], bool):
            raise ValueError(f"reward config: turn_values must be true or false, got {wanted[0]!r}")
        self.turn_values = bool(wanted and wanted[0])
        turn_kwargs = {
            k.removeprefix("guard_"): v
            for k, v in (reward_config or {}).items()
            if k.removeprefix("guard_") in TURN_FIELDS
        }
        kwargs = reward_kwargs(config)
        self.failure_value = float(kwargs["failure_value"])
        self.ends = frozenset(eos_token_ids or ())
        self.reward = SafetyReward(guard, **kwargs, **turn_kwargs, eos_token_ids=list(self.ends) or None)

    def score(
        self, messages: list[dict[str, Any]], completion: Any, policy_ids: Sequence[int] | None = None
    ) -> tuple[float, dict[str, Any]]:
        """``(score, reward_extra_info)``: the keys of ``get_reward.EXTRA_LOGS`` (0/1 indicators, ``p_unsafe``
        0 when not judged, ``tool_calls``), plus ``turns`` (assistant turns judged) and ``truncated`` (1 when the
        policy's last id is not an end id, 0 otherwise or when ``policy_ids`` is not given): values whose mean
        over a batch, as verl logs them, means something. With ``turn_values`` set, also ``turn_values``: each
        judged turn's own value in turn order (all turns, or the last with ``turns="last"``; NaN for a turn
        without one), for a custom ``assemble_rm_scores`` or advantage estimator to place on the turns' tokens
        (:func:`~guard_reward.rewards.turn_level.place_turn_values`); a list, which verl's batch means cannot
        average, hence off by default."""
        ids = None if policy_ids is None else [list(policy_ids)]
        judged = self.reward.evaluate_turns([messages], [completion], completion_ids=ids)
        (value,), (v,) = judged.values, judged.verdicts
        (truncated,) = truncated_flags(ids, self.ends or None, 1)
        turn_values = {}
        if self.turn_values:
            values = judged.turn_values[0]
            turn_values[TURN_VALUES] = [float("nan") if x is None else float(x) for x in values]
        return (self.failure_value if value is None else float(value)), {
            **turn_values,
            **sample_logs(value, v, completion),
            # the verdict's count also sees <tool_call> blocks left in a turn's text (verl decodes text)
            "tool_calls": float(sum(v.tool_calls)),
            "turns": float(len(v.turns)),
            "truncated": float(bool(truncated)),
        }
