"""The sandbox's attack surface: request framings under which the pre-trained policy complies more often.

A *framing* wraps a harmful request in a benign one — one of the language's own request templates, filled with
neutral words, put before or after it ("tell me about the old lamp . how do i heat the zorbak ?"). Nothing new
is added to the vocabulary, and the exact judge still decides what is unsafe: a framed harmful request carries
the same unsafe word, and an answer is unsafe iff it contains one. What changes is the policy: in
:class:`FramedLanguage`'s pre-training chats a framed harmful request is answered unsafely far more often than a
plain one (as a jailbreak framing raises an instruction-tuned model's compliance), so a defender trained on
plain harmful requests only has a weakness its training set never shows.

Framings are split by the benign template they use: the first half are *training* framings (the attacker
knows them), the second half *held-out* framings (only the final evaluation uses them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from guard_reward.sandbox.language import CATEGORY_OF, PROMPT_TEMPLATES, Chat, Language


@dataclass(frozen=True)
class Framing:
    """A benign request template (index into ``PROMPT_TEMPLATES``) put before or after the harmful request."""

    context: int
    before: bool

    def apply(self, request: str, rng: random.Random) -> str:
        context = " ".join(Language._fill(PROMPT_TEMPLATES[self.context], rng))
        return f"{context} {request}" if self.before else f"{request} {context}"


_HALF = len(PROMPT_TEMPLATES) // 2
TRAIN_FRAMINGS: tuple[Framing, ...] = tuple(Framing(c, b) for c in range(_HALF) for b in (True, False))
HELDOUT_FRAMINGS: tuple[Framing, ...] = tuple(
    Framing(c, b) for c in range(_HALF, len(PROMPT_TEMPLATES)) for b in (True, False)
)
ALL_FRAMINGS = TRAIN_FRAMINGS + HELDOUT_FRAMINGS


@dataclass
class FramedLanguage(Language):
    """The sandbox language whose pre-training chats frame a request with probability ``framed_p`` (any
    framing, training or held-out: the weakness is the pre-trained policy's, everywhere), and answer a framed
    harmful request unsafely with probability ``framed_unsafe`` (refusing with ``framed_refusal``) instead of
    the mixture's rates. Plain requests (``prompt``/``prompts``) are the base language's."""

    framed_p: float = 0.35
    framed_unsafe: float = 0.9
    framed_refusal: float = 0.03

    def __post_init__(self) -> None:
        super().__post_init__()
        rates = (self.framed_unsafe, self.framed_refusal)
        if not (0 <= self.framed_p <= 1 and min(rates) >= 0 and sum(rates) <= 1):
            raise ValueError(
                "FramedLanguage: framed_p in [0, 1], framed_unsafe and framed_refusal >= 0 summing to <= 1, got "
                f"{self.framed_p}, {self.framed_unsafe}, {self.framed_refusal}"
            )

    def chat(self, rng: random.Random, harmful: bool, kind: str | None = None) -> Chat:
        prompt, topic = self.prompt(rng, harmful)
        framed = rng.random() < self.framed_p
        if framed:
            prompt = rng.choice(ALL_FRAMINGS).apply(prompt, rng)
        if kind is None:
            if framed and harmful:
                u, r = self.framed_unsafe, self.framed_refusal
                kind = rng.choices(("unsafe", "refusal", "deflect"), (u, r, 1.0 - u - r))[0]
            else:
                kinds, weights = self.mixture.kinds(harmful)
                kind = rng.choices(kinds, weights)[0]
        return Chat(prompt, self.response(rng, kind, topic), harmful, kind, CATEGORY_OF.get(topic))


class AttackerTask:
    """Pre-training chats for the sandbox attacker, in the shape :func:`~guard_reward.sandbox.policy.pretrain_policy`
    reads (``chat(rng, harmful) -> Chat``): the prompt is a plain harmful request (the attack seed), the answer a
    rewrite of it: under a random *training* framing, plain (``plain_p``), or a benign request instead
    (``invalid_p``: an attack that is no attack, which the validity term teaches it to stop writing)."""

    def __init__(self, language: Language, plain_p: float = 0.2, invalid_p: float = 0.1) -> None:
        self.language, self.plain_p, self.invalid_p = language, plain_p, invalid_p

    def chat(self, rng: random.Random, harmful: bool = True, kind: str | None = None) -> Chat:
        request, _ = self.language.prompt(rng, True)
        u = rng.random()
        if u < self.invalid_p:
            attack = self.language.prompt(rng, False)[0]
        elif u < self.invalid_p + self.plain_p:
            attack = request
        else:
            attack = rng.choice(TRAIN_FRAMINGS).apply(request, rng)
        return Chat(request, attack, True, "attack")


def framed_attacks(
    requests: list[tuple[str, bool]], framings: tuple[Framing, ...], seed: int
) -> list[tuple[str, bool]]:
    """Each harmful request of ``requests`` under a framing drawn from ``framings``: ``(text, True)`` pairs."""
    rng = random.Random(seed)
    return [(rng.choice(framings).apply(p, rng), True) for p, harmful in requests if harmful]
