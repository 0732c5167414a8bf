"""The KV-cache keyword across transformers releases: read from each naming's forward signature, from a wrapper's
base model, from the release when no signature tells; the cache read back from either output naming; and a real
forward of the installed transformers filled through the chosen keyword without a deprecation warning."""

import dataclasses
import importlib
import warnings
from typing import Any

import pytest
import torch
from transformers import Qwen3Config, Qwen3Model
from transformers.cache_utils import DynamicCache

from guard_reward.guards.common import cache_kwarg, output_cache


class OldForward:
    """A forward as transformers 5.0-5.23 declare it."""

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None, **kwargs):
        raise NotImplementedError


class NewForward:
    """A forward as transformers >= 5.24 declare it."""

    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None, **kwargs):
        raise NotImplementedError


class BothForward:
    """A forward that still lists the deprecated name beside the new one."""

    def forward(self, input_ids=None, past_key_values=None, cache=None, **kwargs):
        raise NotImplementedError


class Wrapper:
    """A model whose forward passes everything on (as ``Qwen3StreamGuardModel`` does)."""

    def __init__(self, base: Any = None) -> None:
        if base is not None:
            self.base_model = base

    def forward(self, input_ids, **kwargs):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (OldForward(), "past_key_values"),
        (NewForward(), "cache"),
        (BothForward(), "cache"),
        (Wrapper(OldForward()), "past_key_values"),
        (Wrapper(NewForward()), "cache"),
    ],
)
def test_the_keyword_is_the_one_the_forward_declares(model, expected):
    assert cache_kwarg(model) == expected


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("5.0.0", "past_key_values"),
        ("5.9.0", "past_key_values"),
        ("5.10.4", "past_key_values"),
        ("5.15.1", "past_key_values"),
        ("5.23.0", "past_key_values"),
        ("5.24.0.dev0", "cache"),
        ("5.24.0", "cache"),
        ("5.25.1", "cache"),
        ("6.0.0", "cache"),
    ],
)
def test_without_a_telling_signature_the_release_decides(monkeypatch, version, expected):
    # the module as imported now: importing a model class can replace the lazy top-level module object
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", version)
    assert cache_kwarg(Wrapper()) == expected


@dataclasses.dataclass
class OldOutput:
    last_hidden_state: Any = None
    past_key_values: Any = None


@dataclasses.dataclass
class NewOutput:
    last_hidden_state: Any = None
    cache: Any = None

    @property
    def past_key_values(self) -> Any:  # the deprecated alias of newer releases
        raise AssertionError("the deprecated alias was read")


def test_the_cache_is_read_from_either_output_naming():
    kv = object()
    assert output_cache(OldOutput(past_key_values=kv)) is kv
    assert output_cache(NewOutput(cache=kv)) is kv
    assert output_cache(NewOutput()) is None  # use_cache=False: no cache, and still no alias read


def test_a_real_forward_fills_the_cache_through_the_chosen_keyword_without_a_warning():
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
    )
    model = Qwen3Model(config).eval()
    cache = DynamicCache(config=config)
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), **{cache_kwarg(model): cache}, use_cache=True)
        model(input_ids=torch.tensor([[5]]), **{cache_kwarg(model): output_cache(out)}, use_cache=True)
    assert output_cache(out) is cache
    assert cache.get_seq_length() == 5
    deprecations = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert not deprecations
