"""A Hugging Face cache holding the tiny stand-ins under the real models' hub ids, so that code written for the
real checkpoints (``GenGuard.from_pretrained("Qwen/Qwen3Guard-Gen-4B")``, ``--model_name_or_path
Qwen/Qwen3-0.6B``) runs as written, offline, on the stand-ins.

The cache has the hub client's own layout (``models--<owner>--<name>/refs/main`` naming a commit,
``snapshots/<commit>/<files>``); with ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``, transformers and
``huggingface_hub`` resolve those ids from it without a network. Files are symbolic links to the stand-in
folders (copies where links are not allowed), so the cache costs nothing to build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

#: Which stand-in (a key of :func:`guard_reward.tiny.smoke.smoke_assets`) each real hub id is mapped to.
STAND_IN_IDS: dict[str, str] = {
    **{f"Qwen/Qwen3Guard-Gen-{size}": "gen" for size in ("0.6B", "4B", "8B")},
    **{f"Qwen/Qwen3Guard-Stream-{size}": "stream" for size in ("0.6B", "4B", "8B")},
    **{f"Qwen/Qwen3-{size}": "policy" for size in ("0.6B", "1.7B", "4B", "8B")},
}


def hub_cache_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    """The environment variables that make the hub client read ``cache_dir`` and never the network."""
    cache_dir = Path(cache_dir)
    return {
        "HF_HOME": str(cache_dir.parent / "hf_home"),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def build_hub_cache(
    cache_dir: str | os.PathLike,
    assets: Mapping[str, str | os.PathLike],
    ids: Mapping[str, str] | None = None,
) -> Path:
    """Lay out ``assets`` (stand-in name -> checkpoint folder) under the hub ids of ``ids`` (hub id -> stand-in
    name; default :data:`STAND_IN_IDS`) in ``cache_dir``; ids whose stand-in is not in ``assets`` are skipped.
    Returns ``cache_dir``. Building it again over an existing cache replaces the entries it writes."""
    cache_dir = Path(cache_dir)
    ids = STAND_IN_IDS if ids is None else ids
    for repo_id, name in ids.items():
        if name not in assets:
            continue
        source = Path(assets[name])
        if not source.is_dir():
            raise NotADirectoryError(f"stand-in {name!r} for {repo_id}: {source} is not a checkpoint folder")
        # a commit hash of the hub's form (40 hex digits), fixed by the stand-in's folder
        commit = hashlib.sha1(str(source.resolve()).encode()).hexdigest()
        repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        shutil.rmtree(repo, ignore_errors=True)
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        for file in source.rglob("*"):
            if file.is_dir():
                continue
            target = snapshot / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.symlink_to(file.resolve())
            except OSError:  # no symbolic links on this file system
                shutil.copy2(file, target)
    return cache_dir
