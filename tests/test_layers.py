"""The package's layers: a module imports only modules of its own folder or of a lower layer.

vocabulary (the root modules) < guards < shaping < rewards < tiny, evaluation < serving < integrations < recipes
< sandbox < cli. Every import counts, also one inside a function: a lazy import still ties the layers together.
The map is ``docs/architecture.md``; the same list is written there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Each folder's rank; folders of the same rank may not import each other.
LAYERS: dict[str, int] = {
    "vocabulary": 0,
    "guards": 1,
    "shaping": 2,
    "rewards": 3,
    "tiny": 4,
    "evaluation": 4,
    "serving": 5,
    "integrations": 6,
    "recipes": 7,
    "sandbox": 8,
    "cli": 9,
}
#: The root modules that are the shared vocabulary; nothing else lives at the package root.
VOCABULARY = {"types", "faults", "conversations", "wire"}


def layer_of_module(name: str) -> str | None:
    """``guard_reward.rewards.safety`` -> ``rewards``; a root module -> ``vocabulary``; the package -> None."""
    parts = name.split(".")
    if parts[0] != "guard_reward" or len(parts) == 1:
        return None
    if parts[1] in VOCABULARY:
        return "vocabulary"
    return parts[1]


def source_files() -> list[tuple[str, Path]]:
    """(layer, path) of every module of the installed package, ``integrations/`` included."""
    out = []
    for path in sorted((ROOT / "guard_reward").rglob("*.py")):
        rel = path.relative_to(ROOT / "guard_reward").parts
        if len(rel) == 1:
            out.append(("vocabulary" if path.stem in VOCABULARY else f"root:{path.stem}", path))
        else:
            out.append((rel[0], path))
    out += [("integrations", p) for p in sorted((ROOT / "integrations").rglob("*.py"))]
    return out


def imported_modules(path: Path, package: str) -> list[str]:
    """Absolute names of the ``guard_reward`` modules ``path`` imports (relative imports resolved)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            # `from guard_reward import metrics` names a module, not a class
            names += [module] if module != "guard_reward" else [f"guard_reward.{a.name}" for a in node.names]
    return [n for n in names if n.startswith("guard_reward.")]


def package_of(path: Path) -> str:
    if path.is_relative_to(ROOT / "integrations"):
        rel = path.parent.relative_to(ROOT / "integrations").parts
        return ".".join(("guard_reward", "integrations", *rel))
    return ".".join(path.parent.relative_to(ROOT).parts)


def test_the_package_root_holds_only_the_vocabulary():
    root_modules = {p.stem for p in (ROOT / "guard_reward").glob("*.py")} - {"__init__"}
    assert root_modules == VOCABULARY, f"move {sorted(root_modules - VOCABULARY)} into a layer folder"
    folders = {p.name for p in (ROOT / "guard_reward").iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"folders without a layer: {sorted(folders - set(LAYERS))}"


def test_every_layer_imports_only_downwards():
    offenders = []
    for layer, path in source_files():
        if layer not in LAYERS:
            continue
        for name in imported_modules(path, package_of(path)):
            target = layer_of_module(name)
            if target is None or target == layer or target not in LAYERS:
                continue
            if LAYERS[target] >= LAYERS[layer]:
                offenders.append(f"{path.relative_to(ROOT)} ({layer}) imports {name} ({target})")
    assert not offenders, "\n".join(offenders)


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself: a guard that imports a reward is an offender, a reward that imports a guard is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from guard_reward.rewards import SafetyReward\n")
    target = layer_of_module(imported_modules(bad, "guard_reward.guards")[0])
    assert LAYERS[target] > LAYERS["guards"]
    rel = tmp_path / "rel.py"
    rel.write_text("from ..guards import gen\nfrom . import safety\n")
    assert imported_modules(rel, "guard_reward.rewards") == ["guard_reward.guards", "guard_reward.rewards"]


@pytest.mark.parametrize("name", ["guard_reward.shaping.dense", "guard_reward.wire", "guard_reward.cli.main"])
def test_layer_names(name):
    assert layer_of_module(name) in LAYERS
