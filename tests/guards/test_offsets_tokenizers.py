"""Offsets from token ids for tokenizers that are not Qwen's: a SentencePiece BPE with byte fallback (the Llama 2,
Mistral, Gemma kind; as a fast and as a slow tokenizer) and a small byte-level BPE, both trained offline here on
English, Chinese, Arabic and emoji text, checked against plain loops over the tokens' bytes."""

from __future__ import annotations

import io
import re

import pytest
import torch

from guard_reward.guards.offsets import _prefix_decode_offsets, token_char_offsets
from tests.guards import stream_ckpt

TEXTS = stream_ckpt.TEXTS
# Training text: the test texts' scripts, but not every character, so that rare ones (most emoji, some CJK)
# fall back to bytes.
CORPUS = [
    "Mix the flour and water, then knead it. Bake the bread and let it rest.",
    "先把面粉和水混合。不要着急。",
    "اخلط الدقيق والماء ثم اعجنه.",
    "done 🔥 hot",
] * 20
BYTE = re.compile(r"^<0x([0-9A-F]{2})>$")


@pytest.fixture(scope="module")
def sp_model_dir(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("sp_byte_fallback")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,
        hard_vocab_limit=False,
        normalization_rule_name="identity",  # as Llama 2 and Mistral: text is kept as written
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder


@pytest.fixture(scope="module")
def sp_tokenizers(sp_model_dir):
    """The same SentencePiece model as a fast (``tokenizers``) and a slow (``sentencepiece``) tokenizer."""
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class SlowSentencePiece(SentencePieceBackend):
        """What a slow Llama/Mistral tokenizer does: pieces back to text with SentencePiece itself."""

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            return self.sp_model.decode(tokens)

    fast = LlamaTokenizer.from_pretrained(sp_model_dir)
    slow = SlowSentencePiece(
        vocab_file=str(sp_model_dir / "tokenizer.model"), unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    return {"fast": fast, "slow": slow}


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A byte-level BPE (GPT-2 style alphabet) with its own small vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def _complete_bytes(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole characters (a trailing partial UTF-8 sequence is not)."""
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            data[:cut].decode("utf-8")
            return cut
        except UnicodeDecodeError:
            continue
    raise AssertionError("invalid UTF-8 in the test text")


def _loop_offsets(pieces: list[bytes], strip_one_leading_space: bool) -> tuple[str, list[list[int]]]:
    """The convention written as a plain loop over the tokens' bytes: a token starts at the character in
    progress and ends after the last character it completes, or on the character it leaves unfinished."""
    spans, seen = [], b""
    for piece in pieces:
        start = len(seen[: _complete_bytes(seen)].decode("utf-8"))
        seen += piece
        cut = _complete_bytes(seen)
        spans.append([start, len(seen[:cut].decode("utf-8")) + int(bool(piece) and cut < len(seen))])
    text = seen.decode("utf-8")
    if strip_one_leading_space and text.startswith(" "):
        text = text[1:]
        spans = [[max(0, s - 1), max(0, e - 1)] for s, e in spans]
    return text, spans


def _sp_pieces(tokenizer, ids: list[int]) -> list[bytes]:
    out = []
    for piece in tokenizer.convert_ids_to_tokens(ids):
        byte = BYTE.match(piece)
        out.append(bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode())
    return out


@pytest.mark.parametrize("name", list(TEXTS))
@pytest.mark.parametrize("kind", ["fast", "slow"])
def test_sentencepiece_byte_fallback_offsets_match_the_plain_loop(sp_tokenizers, name, kind):
    tok = sp_tokenizers[kind]
    ids = tok.encode(TEXTS[name], add_special_tokens=False)
    if name in ("chinese", "emoji"):
        assert any(BYTE.match(p) for p in tok.convert_ids_to_tokens(ids)), "the text exercises byte fallback"
    text, offsets = token_char_offsets(tok, ids)
    want_text, want = _loop_offsets(_sp_pieces(tok, ids), strip_one_leading_space=True)
    assert text == want_text == TEXTS[name]
    assert offsets.tolist() == want


@pytest.mark.parametrize("name", list(TEXTS))
def test_byte_level_bpe_offsets_match_its_offset_mapping(byte_level_bpe, name):
    tok = byte_level_bpe
    enc = tok(TEXTS[name], add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    text, offsets = token_char_offsets(tok, ids)
    assert text == TEXTS[name]
    assert offsets.tolist() == [list(span) for span in enc["offset_mapping"]]
    by_prefix = _prefix_decode_offsets(tok, ids, skip_special_tokens=True)
    assert by_prefix.tolist() == offsets.tolist(), "the generic path agrees with the byte-level one"


def test_offsets_are_not_shifted_after_a_multibyte_character(sp_tokenizers):
    """The former prefix decoding counted a partial character's replacement marks as text: every later
    token took a later span and the last ones fell off the end."""
    tok = sp_tokenizers["fast"]
    ids = tok.encode("🔥🍞 ok", add_special_tokens=False)
    text, offsets = token_char_offsets(tok, ids)
    assert int(offsets[-1, 1]) == len(text)
    pieces = tok.convert_ids_to_tokens(ids)
    assert BYTE.match(pieces[1]), "the emoji is spelled in bytes"
    for k, piece in enumerate(pieces):
        if not BYTE.match(piece) and k > 0:  # a whole piece: its span holds exactly its text
            assert text[int(offsets[k, 0]) : int(offsets[k, 1])] == piece.replace("\u2581", " ")


def test_special_tokens_and_ids_past_the_tokenizer_have_no_text(sp_tokenizers, qwen_tok):
    tok = sp_tokenizers["fast"]
    ids = [tok.bos_token_id, *tok.encode("ok 你", add_special_tokens=False), tok.eos_token_id]
    text, offsets = token_char_offsets(tok, ids)
    assert text == "ok 你" and offsets[0].tolist() == [0, 0] and offsets[-1].tolist() == [len(text)] * 2
    padded = [*qwen_tok.encode("hi"), len(qwen_tok) + 5]  # a Qwen padded embedding row
    text, offsets = token_char_offsets(qwen_tok, padded)
    assert text == "hi" and offsets[-1].tolist() == [2, 2]
    assert torch.equal(offsets[:-1], token_char_offsets(qwen_tok, padded[:-1])[1])
