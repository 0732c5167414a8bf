"""Novelty of texts against what was seen before: word n-gram sets and their Jaccard similarity.

Red teaming pays an attacker for attacks unlike those it already found (``AttackReward``'s novelty term) and logs
how varied a round's attacks are. Word n-grams rather than an embedding distance: set operations, no model, the
same value on every rank and after a resume, and meaningful in any vocabulary (an embedding model has never seen
a made-up or domain-specific one). Their blind spot is paraphrase: a reworded copy counts as new.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def word_ngrams(text: str, n: int) -> frozenset[tuple[str, ...]]:
    """The set of word n-grams of ``text`` for every order ``1 … n`` (lower-cased, whitespace-split)."""
    words = text.lower().split()
    return frozenset(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """``|a ∩ b| / |a ∪ b|`` (1 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def batch_diversity(texts: Sequence[str], n: int) -> float | None:
    """``1 − mean pairwise Jaccard similarity`` of the texts' word n-gram sets: 0 when every text is the same,
    1 when no two share an n-gram; ``None`` for fewer than two texts."""
    grams = [word_ngrams(t, n) for t in texts]
    pairs = [(i, j) for i in range(len(grams)) for j in range(i + 1, len(grams))]
    if not pairs:
        return None
    return 1.0 - sum(jaccard(grams[i], grams[j]) for i, j in pairs) / len(pairs)


class AttackMemory:
    """The attacks found so far: a bounded first-in-first-out memory of word n-gram sets.

    Args:
        size: how many attacks it keeps (the oldest are forgotten first).
        ngram: the highest n-gram order compared.
    """

    def __init__(self, size: int = 1024, ngram: int = 2) -> None:
        if size < 1 or ngram < 1:
            raise ValueError(f"AttackMemory needs size >= 1 and ngram >= 1, got {size}, {ngram}")
        self.size, self.ngram = size, ngram
        self._texts: deque[str] = deque(maxlen=size)
        self._grams: deque[frozenset] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        return list(self._texts)

    def novelty(self, text: str) -> float:
        """``1 − max Jaccard`` against the memory (1 when it is empty)."""
        grams = word_ngrams(text, self.ngram)
        return 1.0 - max((jaccard(grams, g) for g in self._grams), default=0.0)

    def add(self, texts: Iterable[str]) -> int:
        """Remember ``texts`` (a text already remembered is not added twice); returns how many were added."""
        known = set(self._texts)
        added = 0
        for t in texts:
            if t not in known:
                known.add(t)
                self._texts.append(t)
                self._grams.append(word_ngrams(t, self.ngram))
                added += 1
        return added

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "ngram": self.ngram, "texts": self.texts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._texts.clear()
        self._grams.clear()
        self.add(state["texts"])
