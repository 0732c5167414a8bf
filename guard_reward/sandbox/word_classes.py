"""Word-class structure in a fresh model's input embeddings, from the sandbox language's word lists.

Used before the sandbox policy and guards are trained (:mod:`guard_reward.sandbox.policy`,
:mod:`guard_reward.sandbox.guards`): the word lists are the sandbox's own, so this lives beside them rather
than in the generic training loop of :mod:`guard_reward.tiny.training`.
"""

from __future__ import annotations

from typing import Any

import torch

from guard_reward.sandbox.language import ADJECTIVES, CONTROVERSIAL_WORDS, NOUNS, UNSAFE_WORDS, VERBS


def word_class_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Token ids of each word class of the language (both spellings of a word: with and without the space)."""
    classes = {"noun": NOUNS, "verb": VERBS, "adjective": ADJECTIVES, "controversial": CONTROVERSIAL_WORDS}
    classes |= {"unsafe": tuple(w for ws in UNSAFE_WORDS.values() for w in ws)}
    # Sub-classes: each unsafe category, and the controversial words as one more "category" (so a controversial
    # word stands out as much as an unsafe one, which also carries a class and a category component).
    classes |= {f"unsafe:{c}": ws for c, ws in UNSAFE_WORDS.items()} | {
        "controversial:all": CONTROVERSIAL_WORDS
    }
    vocab = tokenizer.get_vocab()
    return {c: [vocab[t] for w in ws for t in (w, " " + w) if t in vocab] for c, ws in classes.items()}


@torch.no_grad()
def init_word_classes(model: torch.nn.Module, tokenizer: Any, scale: float = 2.0, seed: int = 0) -> None:
    """Give the input embeddings a shared random component per word class, and the space-less twin of a word
    its spaced twin's embedding.

    A stand-in for the word knowledge a pre-trained model brings to instruction tuning: without it, a small
    model trained from scratch takes thousands of steps to notice that all unsafe words behave alike (and so to
    make its risk depend on the request); with it, a few hundred. ``scale`` is in units of the embedding
    init's standard deviation.
    """
    emb = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    std = float(emb.std())
    for ids in word_class_ids(tokenizer).values():
        emb[ids] += torch.randn(emb.shape[1], generator=generator).to(emb) * std * scale
    vocab = tokenizer.get_vocab()
    for token, i in vocab.items():
        if not token.startswith(" ") and " " + token in vocab:
            emb[i] = emb[vocab[" " + token]]
