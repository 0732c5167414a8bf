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


def pytest_collection_finish(session: pytest.Session) -> None:
    """When vLLM's tests are selected and its environment is not built yet, build it in the background from the
    start: pip's downloads and unpacking (minutes) overlap the tests collected before them, which wait on the
    builder's lock only if it is still running when they get there."""
    import subprocess
    import sys

    from tests.vllm.vllm_env import ROOT, STAMP

    if STAMP.exists() or not any(item.nodeid.startswith("tests/vllm/") for item in session.items):
        return
    log = open(ROOT / ".venv-vllm032.build.log", "w")  # noqa: SIM115 -- the builder outlives this hook
    subprocess.Popen(
        [sys.executable, "-c", "from tests.vllm.vllm_env import vllm_env; vllm_env()"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


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


def cached_checkpoint(name: str, inputs: list, build, extra: str = ""):
    """A checkpoint folder built once per content: ``build(folder)`` runs only when no folder exists under a key
    hashing the ``inputs`` files, ``extra`` (e.g. sizes) and the torch/transformers versions, so any change to
    what determines the weights builds a fresh one. The folder appears atomically (never half-built)."""
    import hashlib
    import shutil
    import tempfile
    from pathlib import Path

    import transformers

    key = f"{torch.__version__} {transformers.__version__}" + (f" {extra}" if extra else "")
    digest = hashlib.sha256(key.encode())
    for file in inputs:
        digest.update(Path(file).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "guard_reward-tests"
    target = cache / f"{name}-{digest.hexdigest()[:16]}"
    if not (target / "model.safetensors").exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))
        build(staging / "model")
        shutil.rmtree(target, ignore_errors=True)
        (staging / "model").rename(target)  # atomic: a half-built folder is never used
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def trained_gen_path():
    """A tiny Gen stand-in fine-tuned to emit the bundled examples' verdict lines.

    Training takes a minute or two on a 2-core CPU, so the result is kept in a content-addressed cache folder
    (:func:`cached_checkpoint`: the builder and training code, the template, the examples, the versions).
    """
    from pathlib import Path

    import guard_reward.tiny as tiny
    from guard_reward.tiny.gen_training import build_trained_tiny_gen

    package = Path(tiny.__file__).parent
    inputs = [
        package / "gen.py",
        package / "gen_training.py",
        package / "training.py",
        package / "tokenizer.py",
    ]
    inputs += [
        package / "templates" / "qwen3guard_gen.jinja",
        package.parent / "data" / "moderation_examples.jsonl",
    ]
    return cached_checkpoint("trained-gen", inputs, build_trained_tiny_gen)


# A seconds-sized sandbox world and a second, independently trained Gen judge, shared by the evaluation tests and
# `guard-reward eval`'s tests (one of each per session).
@pytest.fixture(scope="session")
def eval_world(tmp_path_factory: pytest.TempPathFactory):
    from guard_reward.sandbox.demo import DemoConfig, build_world

    return build_world(DemoConfig.small(tmp_path_factory.mktemp("eval_world")))


@pytest.fixture(scope="session")
def second_judge_path(tmp_path_factory: pytest.TempPathFactory, eval_world):
    from guard_reward.sandbox.guards import GuardSize, build_gen_guard

    path = tmp_path_factory.mktemp("judge2") / "gen"
    return build_gen_guard(
        path, eval_world.config.language, GuardSize(steps=60, batch_size=16), seed=7, progress=False
    )


@pytest.fixture(scope="session")
def sandbox_prompts(eval_world):
    from guard_reward.evaluation.prompts import EvalPrompt

    return [
        EvalPrompt(i + 1, [{"role": "user", "content": p}], h, "unsafe topic" if h else "benign topic")
        for i, (p, h) in enumerate(eval_world.heldout[:10])
    ]
