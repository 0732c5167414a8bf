"""Multi-turn, tool-calling completions for the scalar rewards: which turns are judged, in one guard call, how
their values make the completion's value, and which completions were cut off.

TRL 1.16's tool loop (``tools=``, ``environment_factory``) hands a reward the whole trajectory after the prompt:
assistant turns (text, reasoning, ``tool_calls``) and the ``tool`` results between them. The Qwen3Guard-Gen
template judges only the last message of a conversation and drops tool messages, so judging the trajectory as
one message would miss every tool call and read tool output as the policy's words. Here every assistant turn
is judged as a response in the context of the conversation before it (tool calls rendered as text, tool
results as user-side context: :mod:`guard_reward.conversations`), all turns of all samples in **one** batched
``moderate`` call (the turns of one trajectory share their prefix, which the guard's prefix sharing encodes
once). The completion's value is its worst turn's (``turns="worst"``, default: one unsafe tool call is not
washed out by a polite final answer) or its last turn's (``turns="last"``: only the final turn is judged).

Truncation follows TRL's own test (``GRPOTrainer``: ``completion_ids[i][-1]`` not an EOS or pad id, the rule of
``mask_truncated_completions`` and ``completions/clipped_ratio``): a cut-off completion is judged as it is by
default, or its unfinished turn gets ``truncated_value`` (``None``: no signal for the sample, like TRL masking
it out of the loss).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from guard_reward.faults import INVALID_INPUT
from guard_reward.rewards.inputs import trainer_of
from guard_reward.rewards.turns import completion_turns
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

TURN_RULES: tuple[str, ...] = ("worst", "last")
#: ``truncated_value`` meaning "judge a cut-off completion as it is".
JUDGE = "judge"


@dataclass
class Judged:
    """One sample's judged assistant turns.

    Attributes:
        verdicts: per judged turn, the guard's verdict (one ``invalid_input`` verdict for a malformed sample).
        tool_calls: per judged turn, its number of tool calls.
        ends_with_tool: the completion ends with tool results (the policy's next turn never came).
        valid: whether the sample could be split into turns at all.
    """

    verdicts: list[Verdict]
    tool_calls: list[int]
    ends_with_tool: bool = False
    valid: bool = True


def check_turns(turns: object) -> str:
    if turns not in TURN_RULES:
        raise ValueError(f"turns={turns!r} is not accepted; use one of {', '.join(map(repr, TURN_RULES))}")
    return turns  # type: ignore[return-value]


def judge_turns(
    guard: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    rule: str,
    decode: bool,
    thinking: str,
) -> list[Judged]:
    """Judge the assistant turns of every sample (all of them, or with ``rule="last"`` the last one) in one
    ``guard.moderate`` call; a malformed sample is one ``invalid_input`` verdict and is not sent."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions; they must pair up")
    out: list[Judged] = []
    units: list[Any] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        try:
            turns = completion_turns(prompt, completion, i)
        except (TypeError, ValueError) as exc:
            out.append(Judged([Verdict.failed(INVALID_INPUT, f"sample {i}: {exc}")], [0], valid=False))
            continue
        keep = slice(-1, None) if rule == "last" else slice(None)
        out.append(Judged([], turns.tool_calls[keep], turns.ends_with_tool))
        units.extend(turns.conversations[keep])
    verdicts = iter(guard.moderate(units, decode=decode, thinking=thinking, on_error="skip") if units else [])
    for judged in out:
        if judged.valid:
            judged.verdicts = [next(verdicts) for _ in judged.tool_calls]
    return out


Outcome = tuple[float | None, str | None, str | None]  # (value, failure reason, error message)


def choose(outcomes: Sequence[Outcome]) -> int:
    """The turn that decides a completion's value: the first that failed (its worst is unknown), else the
    first without a value, else the lowest value (the first of equals)."""
    for k, (_, reason, _) in enumerate(outcomes):
        if reason is not None:
            return k
    for k, (value, _, _) in enumerate(outcomes):
        if value is None:
            return k
    return min(range(len(outcomes)), key=lambda k: outcomes[k][0])  # type: ignore[return-value,arg-type]


def turn_outcomes(
    judged: Judged,
    outcomes: Sequence[Outcome],
    truncated: bool | None,
    truncated_value: float | str | None,
) -> list[Outcome]:
    """Each judged turn's outcome once truncation is applied: a truncated completion with a ``truncated_value``
    other than ``"judge"`` has its unfinished turn valued ``truncated_value`` (the last assistant turn, or a
    turn appended after trailing tool results: the missing turn, which has no tokens)."""
    if len(outcomes) != len(judged.verdicts):
        raise ValueError(f"got {len(outcomes)} outcomes for {len(judged.verdicts)} judged turns")
    outcomes = list(outcomes)
    if truncated and truncated_value != JUDGE and judged.valid:
        cut: Outcome = (truncated_value, None, None)  # type: ignore[assignment]
        if judged.ends_with_tool:
            outcomes.append(cut)
        else:
            outcomes[-1] = cut
    return outcomes


@dataclass
class TrajectoryValues:
    """What a scalar reward found for a batch, turn by turn.

    Attributes:
        values: per sample, its value (the worst or the last turn's; ``None``: no signal).
        verdicts: per sample, the deciding turn's verdict, every turn's in ``Verdict.turns``.
        turn_values: per sample, per judged turn (all turns, or with ``turns="last"`` the last one), its value,
            ``None`` where that turn could not be valued; after truncation (:func:`turn_outcomes`), with the
            missing turn after trailing tool results left out.
        judged: per sample, its :class:`Judged` turns.
    """

    values: list[float | None]
    verdicts: list[Verdict]
    turn_values: list[list[float | None]]
    judged: list[Judged]


def decide(
    judged: Judged,
    outcomes: Sequence[Outcome],
    truncated: bool | None,
    truncated_value: float | str | None,
) -> tuple[Outcome, Verdict]:
    """A completion's outcome and its verdict (the deciding turn's, carrying every turn in ``turns``).

    ``outcomes`` are the reward's values of ``judged.verdicts``, one per verdict. A truncated completion with a
    ``truncated_value`` other than ``"judge"``: its unfinished turn (the last assistant turn, or the missing
    turn after trailing tool results) is valued ``truncated_value`` instead.
    """
    outcomes = turn_outcomes(judged, outcomes, truncated, truncated_value)
    k = choose(outcomes)
    chosen = judged.verdicts[min(k, len(judged.verdicts) - 1)]
    if judged.valid:
        chosen = replace(chosen, turns=tuple(judged.verdicts), tool_calls=tuple(judged.tool_calls))
    return outcomes[k], chosen


def end_ids(eos_token_ids: Sequence[int] | None, log_metric: Any) -> frozenset[int] | None:
    """The ids that end a completion: ``eos_token_ids`` when given, else the trainer's (TRL's
    ``GRPOTrainer.eos_token_ids`` and its tokenizer's pad id, found through ``log_metric``), else ``None``."""
    if eos_token_ids is not None:
        return frozenset(int(i) for i in eos_token_ids)
    trainer = trainer_of(log_metric)
    eos = getattr(trainer, "eos_token_ids", None)
    if eos is None:
        return None
    ids = {int(i) for i in ([eos] if isinstance(eos, int) else eos)}
    tokenizer = getattr(trainer, "_tokenizer", None) or getattr(trainer, "processing_class", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        ids.add(pad)
    return frozenset(ids)


def truncated_flags(
    completion_ids: Sequence[Sequence[int]] | None, ends: frozenset[int] | None, n: int
) -> list[bool | None]:
    """Per sample, whether it was cut off (its last id is not an end id, TRL's rule); ``None`` where unknown
    (no ``completion_ids``, no end ids, or an empty completion)."""
    if completion_ids is None or ends is None:
        return [None] * n
    if len(completion_ids) != n:
        raise ValueError(f"got {len(completion_ids)} completion_ids for {n} completions; they must pair up")
    return [None if len(ids) == 0 else int(ids[-1]) not in ends for ids in completion_ids]
