"""One vLLM server per test session, on a trained tiny Gen stand-in with head size 32 (vLLM's CPU attention takes
32-512), started from ``.venv-vllm032`` (built once; the tests skip, with pip's reason, only when no package index
can be reached)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import cached_checkpoint
from tests.vllm.vllm_env import EnvUnavailable, start_server, vllm_env

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def gen32_path() -> Path:
    """The trained Gen stand-in of ``trained_gen_path`` with head_dim 32 (cached by content)."""
    import guard_reward.tiny as tiny
    from guard_reward.tiny.gen_training import build_trained_tiny_gen

    package = Path(tiny.__file__).parent
    inputs = [package / n for n in ("gen.py", "gen_training.py", "training.py", "tokenizer.py")]
    inputs += [
        package / "templates" / "qwen3guard_gen.jinja",
        package.parent / "data" / "moderation_examples.jsonl",
    ]
    return cached_checkpoint(
        "trained-gen-hd32",
        inputs,
        lambda path: build_trained_tiny_gen(path, head_dim=32),
        extra="head_dim=32",
    )


@pytest.fixture(scope="session")
def vllm_server(gen32_path):
    """A vLLM server on :func:`gen32_path` (served as ``guard``); its start-up seconds are logged."""
    try:
        vllm_env()
    except EnvUnavailable as exc:
        pytest.skip(str(exc))
    with start_server(gen32_path, max_model_len=4096) as server:
        logger.warning("vLLM server up in %.1f s at %s", server.startup_s, server.url)
        yield server


@pytest.fixture
def live_server(vllm_server):
    """The session's server, skipping when an earlier test has already stopped it."""
    if vllm_server.process.poll() is not None:
        pytest.skip("the session's vLLM server was stopped by an earlier test")
    return vllm_server
