"""Guards that cost nothing, served as the real service serves its guards: they isolate the transport.

``PrecomputedStream`` answers ``score`` / ``score_ids`` with risks computed once at start (1,024-token answers,
9 categories, float32 values of full precision, cut to each request's length); ``PrecomputedGen`` answers
``moderate`` with one fixed verdict. :func:`fast_deployments` wraps them in the service's own replica classes
(``judge_gen_calls`` / ``judge_stream_calls``, the same encoding and hop to the ingress), so everything but the
guard's forward is the service's own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from benchmarks.bench_wire import risks
from guard_reward.types import TokenRisk, Verdict

#: Tokens of a precomputed answer (an RL completion of realistic length) and Stream's response categories.
ANSWER_TOKENS = 1024
CATEGORIES = 9


class PrecomputedStream:
    """``StreamGuard``'s scoring interface, answered from risks computed once (module docstring)."""

    thinking = None
    max_length = 1 << 20
    vocab_rows = 151_936
    query_category_names: tuple[str, ...] = ()

    def __init__(self, tokens: int = ANSWER_TOKENS, pool: int = 8) -> None:
        self.pool = risks(pool, tokens, CATEGORIES)
        self.category_names = self.pool[0].category_names

    def _cut(self, i: int, n: int, span: tuple[int, int] | None) -> TokenRisk:
        r = self.pool[i % len(self.pool)]
        n = min(n, len(r))
        fields = ("token_ids", "offsets", "p_safe", "p_unsafe", "p_controversial", "category_probs")
        return replace(r, **{f: getattr(r, f)[:n] for f in fields}, span=span)

    def score(
        self, conversations: Sequence[Any], thinking: str | None = None, on_error: str = "skip"
    ) -> list:
        return [self._cut(i, ANSWER_TOKENS, None) for i in range(len(conversations))]

    def score_ids(
        self,
        prompts: Sequence[Any],
        ids: Sequence[Sequence[int]],
        thinking: str | None = None,
        on_error: str = "skip",
    ) -> list[TokenRisk]:
        return [self._cut(i, len(row), (0, len(row))) for i, row in enumerate(ids)]


class PrecomputedGen:
    """``GenGuard.moderate`` answered with one fixed verdict (Safe, full label probabilities)."""

    thinking = None
    max_length = 1 << 20

    def moderate(self, conversations: Sequence[Any], decode: bool = False, thinking: str | None = None,
                 on_error: str = "skip") -> list[Verdict]:  # fmt: skip
        probs = {"Safe": 0.875, "Controversial": 0.0625, "Unsafe": 0.0625}
        return [Verdict("Safe", dict(probs), "response") for _ in conversations]


def fast_deployments() -> tuple[Any, Any]:
    """``(gen, stream)`` deployments for ``guard_reward.serving.app.build``: the service's replica classes with
    the precomputed guards in place of the models."""
    from ray import serve

    from guard_reward.serving.app import GenService, StreamService

    class FastGen(GenService.func_or_class):  # type: ignore[name-defined,misc]
        def __init__(self, options: Any) -> None:
            self.guard = PrecomputedGen()
            self._setup(options)

    class FastStream(StreamService.func_or_class):  # type: ignore[name-defined,misc]
        def __init__(self, options: Any) -> None:
            self.guard = PrecomputedStream()
            self._setup(options)

        def info(self) -> dict[str, Any]:
            names = list(self.guard.category_names)
            return {"name": "precomputed", "category_names": names, "query_category_names": [],
                    "label_maps": {}, "thinking": None, "max_length": self.guard.max_length,
                    "vocab_rows": self.guard.vocab_rows}  # fmt: skip

        def vocab(self) -> dict[str, int]:
            return {}

    return serve.deployment(name="GenGuard")(FastGen), serve.deployment(name="StreamGuard")(FastStream)
