"""The fault policy: one bad sample never kills a run.

An error while judging *one sample* gives that sample no signal (``None`` for a scalar reward, masked out for a
dense one) and is counted under a short reason key; the first occurrence of each reason is logged with an
example. Only a broken guard (missing file, out of memory, a server down past its retries for a whole call
when the caller asked to raise) is a batch-level event.

Per-sample reasons (the keys of ``guard/failures/<reason>``):

========================== ===============================================================================
``context_too_long``       the judged message alone does not fit the guard's context window
``ids_outside_vocabulary`` completion ids the guard cannot embed and cannot recover as text
``unparseable``            the Gen guard's verdict lines could not be parsed
``non_finite``             the guard produced NaN or infinite probabilities
``no_answer``              the reasoning block was cut off before ``</think>``: there is no answer to judge
``invalid_input``          the sample itself is malformed (not a string / message list)
``guard_unavailable``      a remote guard did not answer after its retries
========================== ===============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

OnError = Literal["skip", "raise"]
ON_ERROR: tuple[str, ...] = ("skip", "raise")

CONTEXT_TOO_LONG = "context_too_long"
IDS_OUTSIDE_VOCABULARY = "ids_outside_vocabulary"
UNPARSEABLE = "unparseable"
NON_FINITE = "non_finite"
NO_ANSWER = "no_answer"
INVALID_INPUT = "invalid_input"
GUARD_UNAVAILABLE = "guard_unavailable"
REASONS: tuple[str, ...] = (
    CONTEXT_TOO_LONG,
    IDS_OUTSIDE_VOCABULARY,
    UNPARSEABLE,
    NON_FINITE,
    NO_ANSWER,
    INVALID_INPUT,
    GUARD_UNAVAILABLE,
)


class SampleError(ValueError):
    """An error that concerns one sample only; under ``on_error="skip"`` it becomes that sample's ``None``."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; known: {', '.join(REASONS)}")
        super().__init__(message)
        self.reason = reason


def raise_first_failure(results: Sequence[Any], where: str) -> None:
    """Under ``on_error="raise"``, for results judged elsewhere (a served guard): raise :class:`SampleError`
    for the first ``Verdict``/``TokenRisk`` that failed, as a local guard would have (a missing answer is a
    property of the completion, not an error, and is returned as it is)."""
    for i, r in enumerate(results):
        if r.reason is not None and r.reason != NO_ANSWER:
            raise SampleError(r.reason, f"{where}, sample {i}: {r.error}")


def check_on_error(value: object) -> OnError:
    if value not in ON_ERROR:
        raise ValueError(f"on_error={value!r} is not accepted; use one of {', '.join(map(repr, ON_ERROR))}")
    return value  # type: ignore[return-value]
