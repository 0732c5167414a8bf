"""Suite-wide settings and the shared tiny checkpoints (built once per session, offline)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def qwen_tok():
    """The real Qwen3 tokenizer (no chat template)."""
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    return qwen_tokenizer()


@pytest.fixture(scope="session")
def tiny_gen_path(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight Qwen3Guard-Gen-shaped checkpoint folder."""
    from guard_reward.tiny.gen import build_tiny_gen

    return build_tiny_gen(tmp_path_factory.mktemp("tiny_gen"), seed=0)


@pytest.fixture(scope="session")
def trained_gen_path(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Gen stand-in fine-tuned to emit the bundled examples' verdict lines."""
    from guard_reward.tiny.gen_training import build_trained_tiny_gen

    return build_trained_tiny_gen(tmp_path_factory.mktemp("trained_gen"))
