"""The sandbox tokenizer: one word-level vocabulary shared by the sandbox policy and its two guards.

Built with ``tokenizers`` (a ``WordLevel`` model) and wrapped as a ``PreTrainedTokenizerFast``, so it saves and
loads like any Hugging Face tokenizer. Unlike a plain whitespace word-level tokenizer, a word keeps the space in
front of it (``" lamp"`` and ``"lamp"`` are two tokens, as in Qwen's byte-level BPE) and newlines are tokens, so
decoding gives back the exact text: the Gen guard's ``Safety: ...`` / ``Categories: ...`` / ``Refusal: ...`` lines
decode to lines, and the Stream guard's character offsets are exact. Sharing one vocabulary between policy and
guards mirrors Qwen3 policies judged by Qwen3Guard (same tokenizer, so completion ids can be scored as they are).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from guard_reward.sandbox.language import (
    CATEGORIES,
    LANGUAGE_WORDS,
    PROMPT_TEMPLATES,
    REFUSAL,
    SENTENCE_TEMPLATES,
)

PAD, IM_START, IM_END, UNK, THINK, END_THINK = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<unk>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END, UNK, THINK, END_THINK)
NEWLINES: tuple[str, ...] = ("\n", "\n\n")
#: The words a Qwen3Guard-Gen verdict is made of (labels, line heads, category names).
VERDICT_WORDS: tuple[str, ...] = (
    "Safety:",
    "Safe",
    "Unsafe",
    "Controversial",
    "Categories:",
    "None",
    "Refusal:",
    "Yes",
    "No",
    *(w for c in CATEGORIES for w in c.split()),
)
ROLE_WORDS: tuple[str, ...] = ("user", "assistant", "system", "USER:", "ASSISTANT:")

#: The policy's chat template: ChatML, as Qwen3 instruct models use with thinking disabled but without the empty
#: think block (the sandbox policy never reasons).
POLICY_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def template_text(name: str) -> str:
    """A chat template shipped with the sandbox (``"gen"``)."""
    return (resources.files("guard_reward.sandbox") / "templates" / f"{name}.jinja").read_text()


def _template_lines(template: str) -> list[list[str]]:
    """The literal text of a Jinja template (what it renders besides the messages), as words per line."""
    text = re.sub(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", "\n", template, flags=re.S)
    for special in SPECIAL_TOKENS:
        text = text.replace(special, "\n")
    return [line.split() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens (ids 0-5), the newline tokens, every word with a leading space, and the
    words that can start a line (after a newline or a role header) without one.

    Only line-initial words get a space-less twin, so the policy cannot glue a word onto the one before it
    (``"freshlamp"``) except through those few function words.
    """
    template = _template_lines(template_text("gen"))
    texts = [*PROMPT_TEMPLATES, *SENTENCE_TEMPLATES, REFUSAL]
    words = dict.fromkeys(
        [*LANGUAGE_WORDS, *VERDICT_WORDS, *ROLE_WORDS, *(w for line in template for w in line)]
    )
    line_starts = dict.fromkeys(
        [*(t.split()[0] for t in texts), *ROLE_WORDS, *VERDICT_WORDS, *(line[0] for line in template)]
    )
    tokens = [*SPECIAL_TOKENS, *NEWLINES, *line_starts, *(" " + w for w in words)]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def sandbox_tokenizer(chat_template: str | None = POLICY_CHAT_TEMPLATE):
    """A ``PreTrainedTokenizerFast`` over :func:`vocabulary`, left-padded, ``<|im_end|>`` as end of turn.

    ``chat_template`` defaults to the policy's ChatML template; the guards pass their own.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=dict(vocabulary()), unk_token=UNK))
    # A piece is a word with at most one leading space, a run of newlines, or stray spaces; Fuse joins pieces
    # back without separators, so decode(encode(text)) == text for text written in the language.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s]+|\n+|[^\S\n]+"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
