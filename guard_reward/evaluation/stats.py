"""Interval estimates for evaluation rates: Wilson's score interval for one proportion, Newcombe's hybrid score
interval for a difference of two independent proportions, and Cohen's kappa for two judges' agreement.

These are the textbook formulas (Wilson 1927; Newcombe 1998, method 10; Cohen 1960). They differ from the
usual ``p ± 1.96·sqrt(p(1-p)/n)`` (Wald) interval, which collapses to zero width at 0% or 100% — exactly where
a safety rate ends up after RL — and is far too narrow at the small counts of a held-out set.

Answers sampled from the same prompt are correlated, so with several samples per prompt the intervals are
somewhat narrower than the truth (the counts treat every answer as independent); the report says how many
prompts and answers a rate rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """``count`` of ``n`` with its Wilson interval; ``rate``, ``low`` and ``high`` are NaN when ``n == 0``."""

    count: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.count / self.n if self.n else float("nan")


def wilson(count: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval for ``count`` successes out of ``n``."""
    if n < 0 or count < 0 or count > n:
        raise ValueError(f"wilson needs 0 <= count <= n, got count={count}, n={n}")
    if n == 0:
        return Rate(count, n, float("nan"), float("nan"))
    p = count / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The exact bounds at 0 and n; rounding would otherwise leave 1e-17 below 0.
    low = 0.0 if count == 0 else max(0.0, center - half)
    high = 1.0 if count == n else min(1.0, center + half)
    return Rate(count, n, low, high)


@dataclass(frozen=True)
class Difference:
    """``a.rate - b.rate`` with Newcombe's 95% interval; ``excludes_zero`` says whether the change is
    significant at that level (``False`` when either rate is undefined)."""

    a: Rate
    b: Rate
    diff: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.diff) and (self.low > 0 or self.high < 0)


def newcombe(a: Rate, b: Rate) -> Difference:
    """Newcombe's hybrid score interval (method 10) for the difference of two independent proportions."""
    if a.n == 0 or b.n == 0:
        nan = float("nan")
        return Difference(a, b, nan, nan, nan)
    p1, p2 = a.rate, b.rate
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return Difference(a, b, d, low, high)


def cohen_kappa(both: int, only_first: int, only_second: int, neither: int) -> float:
    """Cohen's kappa of two binary judges from their 2x2 table (counts of answers both / only the first /
    only the second / neither called unsafe). NaN when undefined: no answers, or both judges gave every answer
    the same single label (chance agreement is then 1)."""
    n = both + only_first + only_second + neither
    if min(both, only_first, only_second, neither) < 0:
        raise ValueError("cohen_kappa needs non-negative counts")
    if n == 0:
        return float("nan")
    observed = (both + neither) / n
    first, second = (both + only_first) / n, (both + only_second) / n
    chance = first * second + (1 - first) * (1 - second)
    if chance >= 1.0:
        return float("nan")
    return (observed - chance) / (1 - chance)
