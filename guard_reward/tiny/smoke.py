"""The ``--smoke`` switch of ``guard-reward train``: run any recipe on tiny stand-ins, offline, on a CPU.

:func:`smoke_overrides` reads a recipe (its YAML mapping) and returns the command-line overrides that swap every
downloaded thing for a local stand-in and shrink the run, while keeping the recipe's own reward settings
(trainer, reward kind, refusal handling, thinking mode, shaping, KL, loss):

- ``model_name_or_path`` (and ``value_model_name_or_path`` when set) -> a tiny Qwen3 policy;
- ``guard_gen`` -> a tiny Qwen3Guard-Gen taught the verdict format (so decoding and refusal are exercised);
- ``guard_stream`` (when set) -> a tiny Qwen3Guard-Stream; ``guard_helpfulness`` (hybrid) -> a tiny one-logit
  reward model;
- ``dataset_name`` -> the bundled example prompts (benign and harmful, with a ``harmful`` column);
- CPU, float32, two steps of 2 prompts x 2 answers of at most 8 tokens, no checkpoints, no vLLM, no reports,
  output in ``runs/smoke/<recipe>``.

The stand-ins are built once and kept in a cache folder (``$XDG_CACHE_HOME/guard_reward/smoke-<versions>/``, one
folder per stand-in keyed by its builders' code); a first run builds them (the Gen one is trained until it
writes the bundled examples' verdict lines: about a minute of CPU, see docs/cli.md), later runs reuse them. Overrides given on the command line after the switch
still win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: What a smoke run changes besides the checkpoints and the dataset (command-line values).
SMOKE_SETTINGS: dict[str, str] = {
    "dtype": "float32",
    "guard_device": "cpu",
    "guard_dtype": "float32",
    "use_cpu": "true",
    "bf16": "false",
    "fp16": "false",
    "use_vllm": "false",
    "gradient_checkpointing": "false",
    "max_steps": "2",
    "per_device_train_batch_size": "4",
    "gradient_accumulation_steps": "1",
    "num_generations": "2",
    "max_completion_length": "8",
    "logging_steps": "1",
    "save_strategy": "no",
    "report_to": "none",
    "log_completions": "false",
    "dataset_prompt_column": "prompt",
    "dataset_train_split": "train",
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/guard_reward/smoke-<key>`` (``~/.cache`` without XDG), the key naming the torch and
    transformers versions; inside it each stand-in has its own folder keyed by its builders' code."""
    import torch
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "guard_reward"
    return root / f"smoke-{digest.hexdigest()[:16]}"


#: The files each stand-in is built from (its cache folder changes when one of them does).
_SOURCES = {
    "policy": ("policy.py", "gen.py", "tokenizer.py", "templates/qwen3_tools.jinja"),
    "tool_policy": (
        "tool_policy.py",
        "policy.py",
        "gen.py",
        "training.py",
        "tokenizer.py",
        "templates/qwen3_tools.jinja",
    ),
    "gen": ("gen.py", "gen_training.py", "training.py", "tokenizer.py", "templates/qwen3guard_gen.jinja"),
    "stream": ("stream.py", "gen.py", "tokenizer.py", "templates/qwen3_stream.jinja"),
    "helpfulness": ("policy.py", "gen.py", "tokenizer.py", "templates/qwen3_tools.jinja"),
    "data": ("smoke.py",),
}


def _folder(root: Path, asset: str) -> Path:
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _SOURCES[asset]:
        digest.update((package / name).read_bytes())
    if asset in ("gen", "data"):
        digest.update(_examples_text().encode())
    return root / f"{asset}-{digest.hexdigest()[:12]}"


def _examples_text() -> str:
    return (resources.files("guard_reward") / "data" / "moderation_examples.jsonl").read_text()


#: What each stand-in is, for the log line of a first run that builds it.
_WHAT = {
    "policy": "tiny Qwen3 policy (random weights)",
    "tool_policy": "tiny Qwen3 policy, trained to call the lookup tool for some prompts",
    "gen": "tiny Qwen3Guard-Gen, trained until it writes the bundled examples' verdicts",
    "stream": "tiny Qwen3Guard-Stream (random weights)",
    "helpfulness": "tiny one-logit reward model (random weights)",
    "data": "bundled example prompts",
}


def _cached(folder: Path, build: Callable[[Path], Any]) -> Path:
    """``folder``, built by ``build(staging)`` and renamed into place if absent (a half-built one is never
    used)."""
    if folder.exists():
        return folder
    asset = folder.name.rsplit("-", 1)[0]
    logger.info("building the %s in %s (first run only)", _WHAT.get(asset, asset), folder)
    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    try:
        build(staging / "x")
        logger.info("built the %s stand-in in %.1f s", asset, time.perf_counter() - start)
        (staging / "x").rename(folder)
    except OSError:
        if not folder.exists():  # another process did not win the race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_prompts(path: Path) -> None:
    """The bundled examples' prompts, one per line, with a ``harmful`` column from their reference verdict."""
    rows = []
    for line in _examples_text().splitlines():
        record = json.loads(line)
        if "response" in record:  # a response example's prompt is judged in its own prompt example
            continue
        rows.append({"prompt": record["prompt"], "harmful": record["reference"]["level"] != "Safe"})
    path.mkdir(parents=True)
    (path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _model_reward(recipe: Mapping[str, Any]) -> bool:
    """Whether the recipe's constraint objective is a reward model (a checkpoint to swap), not a
    ``'package.module:function'`` reward."""
    reward = recipe.get("constraint_reward")
    return isinstance(reward, str) and ":" not in reward


def smoke_assets(
    recipe: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    *,
    gen: str | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Build (or reuse) the stand-ins ``recipe`` needs; ``{"policy", "gen", "data", ["stream"],
    ["helpfulness"], ["tool_policy"]}`` as paths. ``gen`` uses an existing tiny Gen folder instead of the cached one;
    ``progress`` shows a bar while the Gen stand-in trains (each build is also logged with its time).

    For a script of your own, pass the keys that decide which stand-ins are built: ``{}`` gives the policy,
    the Gen guard and the prompts, ``{"guard_stream": "x"}`` adds the Stream guard, ``{"guard_reward":
    "hybrid"}`` the helpfulness model, ``{"tools": True}`` a policy that calls a tool
    (:mod:`guard_reward.tiny.tool_policy`: about a minute of CPU to train, once). The Stream stand-in has random weights: its per-token risks exercise
    the code, they judge nothing.
    """
    from guard_reward.tiny.gen_training import build_trained_tiny_gen
    from guard_reward.tiny.policy import build_tiny_policy, build_tiny_reward_model
    from guard_reward.tiny.stream import build_tiny_stream
    from guard_reward.tiny.tool_policy import build_tool_policy

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    assets = {
        "policy": _cached(_folder(root, "policy"), build_tiny_policy),
        "gen": Path(gen)
        if gen
        else _cached(_folder(root, "gen"), lambda p: build_trained_tiny_gen(p, progress=progress)),
        "data": _cached(_folder(root, "data"), _write_prompts) / "prompts.jsonl",
    }
    if recipe.get("guard_stream") or recipe.get("shaping_mode"):
        assets["stream"] = _cached(_folder(root, "stream"), lambda p: build_tiny_stream(p, seed=3))
    if recipe.get("guard_reward") == "hybrid" or recipe.get("guard_helpfulness") or _model_reward(recipe):
        assets["helpfulness"] = _cached(_folder(root, "helpfulness"), build_tiny_reward_model)
    if recipe.get("tools"):
        assets["tool_policy"] = _cached(
            _folder(root, "tool_policy"), lambda p: build_tool_policy(p, progress=progress)
        )
    return {k: str(v) for k, v in assets.items()}


def smoke_overrides(
    recipe: Mapping[str, Any],
    name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    gen: str | None = None,
) -> list[str]:
    """``--option value`` pairs that turn ``recipe`` (its YAML mapping; ``name`` its file stem) into a smoke
    run (module docstring). Put them before the user's own overrides so that those win."""
    assets = smoke_assets(recipe, cache_dir, gen=gen)
    values: dict[str, str] = {
        "model_name_or_path": assets["policy"],
        "guard_gen": assets["gen"],
        "dataset_name": assets["data"],
        "output_dir": os.path.join("runs", "smoke", name),
        **SMOKE_SETTINGS,
    }
    if "stream" in assets:
        values["guard_stream"] = assets["stream"]
    if recipe.get("guard_reward") == "hybrid" or recipe.get("guard_helpfulness"):
        values["guard_helpfulness"] = assets["helpfulness"]
    if _model_reward(recipe):
        values["constraint_reward"] = assets["helpfulness"]
    if recipe.get("value_model_name_or_path"):
        values["value_model_name_or_path"] = assets["policy"]
    if recipe.get("guard_harmful_column"):
        values["guard_harmful_column"] = "harmful"
    return [item for key, value in values.items() for item in (f"--{key}", value)]
