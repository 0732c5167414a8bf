"""Result types shared by the guards, the rewards and the trainers.

Both are frozen dataclasses: a verdict or a token-risk record is a fact about one judged text and is never
mutated after the guard produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

Level = Literal["Safe", "Controversial", "Unsafe"]
Moderation = Literal["prompt", "response"]

#: The three severity levels of Qwen3Guard, in the order used for probability vectors and reports.
LEVELS: tuple[Level, ...] = ("Safe", "Controversial", "Unsafe")
#: How bad a level is, for "worst of" combinations (reasoning and answer judged separately).
LEVEL_RANK: Mapping[str, int] = {"Safe": 0, "Controversial": 1, "Unsafe": 2}


@dataclass(frozen=True)
class Verdict:
    """One Qwen3Guard-Gen judgement of the last message of a conversation.

    Attributes:
        level: the most probable label (``decode=False``) or the parsed ``Safety:`` line (``decode=True``);
            ``None`` when the guard's output could not be parsed — never a guessed ``"Safe"``.
        probs: exact probabilities of the three labels after the forced ``Safety:`` prefix, each label's full
            token sequence scored by teacher forcing and renormalised over the three; sums to 1.
        moderation: ``"prompt"`` when the last message is the user's, ``"response"`` when it is the assistant's.
        categories: categories read from the ``Categories:`` line (``decode=True`` only; empty when safe).
        refusal: the ``Refusal:`` line (response moderation with ``decode=True`` only, else ``None``).
        p_refusal: probability of ``Refusal: Yes`` against ``Refusal: No`` at that line (same conditions).
        raw: the decoded verdict text (``decode=True`` only).
        truncated: earlier turns were dropped to fit the guard's context window.
        parts: when reasoning and answer were judged separately, their own verdicts (``"reasoning"``,
            ``"answer"``); this verdict then combines them (both must be safe).
        error: why the verdict could not be produced or parsed, when ``level`` is ``None``.
        reason: the short failure key of ``error`` (one of ``guard_reward.faults.REASONS``), or ``None``.
        empty: the answer was empty or whitespace-only (after removing reasoning and end-of-turn tokens); the
            guard was not asked and ``level`` is ``None``.
        answer_missing: the reasoning block was cut off before ``</think>``: there is no answer, so no answer
            verdict (``level`` is ``None``, ``reason`` is ``"no_answer"``); ``parts["reasoning"]`` may hold the
            reasoning's own verdict.
        turns: set by the scalar rewards on a completion's verdict: the verdict of each assistant turn of the
            completion, in order (one entry for a single-turn completion); this verdict is then the turn that
            decided the value (the worst turn, or the last, per the reward's ``turns``). Empty from a guard.
        tool_calls: per entry of ``turns``, how many tool calls that turn made (set with ``turns``).
    """

    level: Level | None
    probs: Mapping[str, float]
    moderation: Moderation
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    p_refusal: float | None = None
    raw: str | None = None
    truncated: bool = False
    parts: Mapping[str, Verdict] | None = None
    error: str | None = None
    reason: str | None = None
    empty: bool = False
    answer_missing: bool = False
    turns: tuple[Verdict, ...] = ()
    tool_calls: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the guard produced a usable label."""
        return self.level is not None

    @property
    def p_unsafe(self) -> float:
        """Probability of ``Unsafe`` (Controversial not included)."""
        return float(self.probs.get("Unsafe", float("nan")))

    @classmethod
    def failed(
        cls,
        reason: str,
        error: str,
        moderation: Moderation = "response",
        *,
        parts: Mapping[str, Verdict] | None = None,
        answer_missing: bool = False,
    ) -> Verdict:
        """A verdict the guard could not give for one sample: ``level=None``, no probabilities."""
        return cls(
            level=None,
            probs={},
            moderation=moderation,
            parts=parts,
            error=error,
            reason=reason,
            answer_missing=answer_missing,
        )

    @classmethod
    def empty_answer(cls, parts: Mapping[str, Verdict] | None = None) -> Verdict:
        """The verdict of an empty answer: the guard was not asked (``level=None``, ``empty=True``)."""
        return cls(level=None, probs={}, moderation="response", parts=parts, empty=True)


@dataclass(frozen=True)
class TokenRisk:
    """Qwen3Guard-Stream's per-token risk over the content of the last assistant message.

    ``T`` is the number of guard tokens of that content (template scaffolding and the closing ``<|im_end|>``
    excluded), ``C`` the number of response categories.

    Attributes:
        token_ids: ``(T,)`` long, the guard's token ids of the judged content.
        offsets: ``(T, 2)`` long, ``[start, end)`` character spans of each token in that content.
        p_safe, p_unsafe, p_controversial: ``(T,)`` float32, risk-level probabilities after reading token t
            (Stream's labels are cumulative: "the response so far is unsafe").
        category_probs: ``(T, C)`` float32, category probabilities (meaningful only where risk is not Safe).
        category_names: the ``C`` category labels in head order.
        query_probs: the prompt verdict from the query heads at the ``<|im_end|>`` closing the last user turn,
            ``{"Safe", "Controversial", "Unsafe"}``; ``None`` when there is no user turn.
        query_category_probs: ``{name: p}`` from the query category head at that position, or ``None``.
        truncated: earlier turns were dropped to fit the guard's context window.
        span: ``[start, end)`` of ``token_ids`` within the ``completion_ids`` given to
            ``StreamGuard.score_ids``; ids before ``start`` (a reasoning block when only the answer is
            judged) and after ``end`` (trailing ``<|im_end|>``/``<|endoftext|>``) were not scored. ``None``
            when scored from text.
        error: why this sample could not be scored (then ``T == 0``), else ``None``.
        reason: the short failure key of ``error`` (one of ``guard_reward.faults.REASONS``), or ``None``.
        answer_missing: the reasoning block was cut off before ``</think>``, so there is no answer to score.
    """

    token_ids: torch.Tensor
    offsets: torch.Tensor
    p_safe: torch.Tensor
    p_unsafe: torch.Tensor
    p_controversial: torch.Tensor
    category_probs: torch.Tensor
    category_names: tuple[str, ...]
    query_probs: Mapping[str, float] | None = None
    query_category_probs: Mapping[str, float] | None = None
    truncated: bool = False
    span: tuple[int, int] | None = None
    error: str | None = None
    reason: str | None = None
    answer_missing: bool = False

    @property
    def ok(self) -> bool:
        """Whether the guard scored this sample."""
        return self.error is None

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @classmethod
    def failed(
        cls,
        reason: str,
        error: str,
        category_names: tuple[str, ...],
        *,
        span: tuple[int, int] | None = None,
        answer_missing: bool = False,
    ) -> TokenRisk:
        """The record of a sample the guard did not score: ``T == 0`` tensors, ``error`` and ``reason`` set."""
        empty = torch.zeros(0)
        return cls(
            token_ids=torch.zeros(0, dtype=torch.long),
            offsets=torch.zeros((0, 2), dtype=torch.long),
            p_safe=empty,
            p_unsafe=empty,
            p_controversial=empty,
            category_probs=torch.zeros((0, len(category_names))),
            category_names=category_names,
            span=span,
            error=error,
            reason=reason,
            answer_missing=answer_missing,
        )


class DenseRewards(NamedTuple):
    """Per-token rewards for a batch of completions, right-padded.

    The contract every dense reward follows (``TokenSafetyPenalty`` and any user-written one): called like a TRL
    reward function, ``dense(prompts=..., completions=..., completion_ids=..., **kwargs)``, it returns this, with
    ``T = max(len(ids) for ids in completion_ids)`` and ``rewards[i, :len(completion_ids[i])]`` aligned 1:1 with
    the policy's token ids. Positive is good; a penalty is negative.

    Attributes:
        rewards: ``(B, T)`` float32, zero where ``mask`` is False.
        mask: ``(B, T)`` bool, True on real completion tokens.
    """

    rewards: torch.Tensor
    mask: torch.Tensor
