"""The official response-level rule: hand-checked cases, the online form, TokenRisk input, errors."""

from __future__ import annotations

import random

import pytest
import torch

from guard_reward.guards.debounce import Debouncer, debounce, token_levels
from guard_reward.types import TokenRisk

S, U, C = "Safe", "Unsafe", "Controversial"


@pytest.mark.parametrize(
    ("levels", "mode", "mixed", "expected"),
    [
        ([S, U, U], "strict", False, (2, U)),
        ([U, C, U], "strict", False, (None, S)),  # a mixed pair does not trigger in the official code
        ([C, C], "strict", False, (1, C)),
        (
            [C, C, S, U, U],
            "strict",
            False,
            (4, U),
        ),  # an Unsafe pair anywhere beats an earlier Controversial one
        ([U], "strict", False, (None, S)),
        ([], "strict", False, (None, S)),
        ([C, C], "loose", False, (None, S)),
        ([S, C, U, U, C], "loose", False, (3, U)),
        ([U, C, U], "strict", True, (1, U)),
        ([S, C, C], "strict", True, (2, C)),
        ([C, U], "loose", True, (None, S)),
    ],
)
def test_hand_checked_cases(levels, mode, mixed, expected):
    assert debounce(levels, mode, mixed_pairs=mixed) == expected


@pytest.mark.parametrize("mode", ["strict", "loose"])
@pytest.mark.parametrize("mixed", [False, True])
def test_online_form_flags_where_the_cut_response_is_flagged(mode, mixed):
    rng = random.Random(0)
    for _ in range(300):
        levels = rng.choices([S, U, C], weights=[5, 2, 2], k=rng.randint(0, 12))
        online = Debouncer(mode, mixed_pairs=mixed)
        flagged_at = [t for t, level in enumerate(levels) if online.push(level)]
        # plain loop: the first prefix whose verdict is flagged
        first = next(
            (t for t in range(len(levels)) if debounce(levels[: t + 1], mode, mixed_pairs=mixed)[0]), None
        )
        assert flagged_at == ([] if first is None else [first])
        assert online.result == debounce(
            levels[: first + 1] if first is not None else levels, mode, mixed_pairs=mixed
        )


def _risk(probs: list[list[float]]) -> TokenRisk:
    p = torch.tensor(probs)
    n = p.shape[0]
    return TokenRisk(
        torch.zeros(n, dtype=torch.long), torch.zeros((n, 2), dtype=torch.long), p[:, 0], p[:, 1], p[:, 2],
        torch.zeros((n, 1)), ("x",),
    )  # fmt: skip


def test_token_risk_input_uses_the_most_probable_level():
    # columns: safe, unsafe, controversial; the tie in row 3 goes to the head order (Unsafe before Controversial)
    risk = _risk([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.2, 0.4, 0.4], [0.1, 0.8, 0.1]])
    assert token_levels(risk) == [S, U, C, U, U]
    assert debounce(risk) == (4, U)
    assert debounce(_risk([[0.9, 0.05, 0.05]])) == (None, S)


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="mode='medium' is not accepted"):
        debounce([S], "medium")
    with pytest.raises(ValueError, match="level 'unsafe' at token 1"):
        debounce([S, "unsafe"])
    with pytest.raises(ValueError, match="mode="):
        Debouncer("strictest")
