"""Packaging: the import footprint, the package list, and `integrations` installed under `guard_reward`."""

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_needs_only_torch(tmp_path):
    code = (
        "import sys, guard_reward\n"
        "heavy = [m for m in ('transformers', 'trl', 'accelerate', 'matplotlib') if m in sys.modules]\n"
        "print(heavy, guard_reward.Verdict.__name__)"
    )
    assert run_python(code, tmp_path) == "[] Verdict"


def test_integrations_install_under_guard_reward(tmp_path):
    code = (
        "import importlib.util, guard_reward.integrations as m\n"
        "print(importlib.util.find_spec('integrations') is None, m.__name__)"
    )
    assert run_python(code, tmp_path) == "True guard_reward.integrations"


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    found = set()
    for init in list((ROOT / "guard_reward").rglob("__init__.py")) + list(
        (ROOT / "integrations").rglob("__init__.py")
    ):
        folder = init.parent
        if folder.is_relative_to(ROOT / "integrations"):
            rel = folder.relative_to(ROOT / "integrations").parts
            found.add(".".join(("guard_reward", "integrations", *rel)))
        else:
            found.add(".".join(folder.relative_to(ROOT).parts))
    # data-only packages (no __init__.py): the shipped recipes
    data_only = {name for name, folder in mapping.items() if not (folder / "__init__.py").exists()}
    assert data_only == {"guard_reward.configs"}
    assert found | data_only == listed, f"missing from pyproject: {found - listed}; stale: {listed - found}"
    assert config["package-data"]["guard_reward.configs"] == ["*.yaml"]
    assert mapping["guard_reward.integrations"] == ROOT / "integrations"
    assert (ROOT / "guard_reward" / "py.typed").exists()


def test_moved_modules_still_import_and_warn_once(tmp_path):
    """Every old module path in ``_MOVED`` imports, names the same objects as the new home and warns once."""
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('always')\n"
        "import guard_reward\n"
        "bad = []\n"
        "for old, homes in guard_reward._MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        alias = importlib.import_module(old)\n"
        "        importlib.import_module(old)\n"
        "    moved = [w for w in seen if issubclass(w.category, DeprecationWarning) and old in str(w.message)]\n"
        "    mods = [importlib.import_module(h) for h in homes]\n"
        "    names = [(m, n) for m in mods for n in getattr(m, '__all__', [k for k in vars(m) if k[0] != '_'])]\n"
        "    missing = [n for m, n in names if getattr(alias, n, None) is not getattr(m, n)]\n"
        "    if len(moved) != 1 or missing or not names:\n"
        "        bad.append((old, len(moved), missing[:3]))\n"
        "from guard_reward.constraint import Constraint, SafetyCost\n"
        "from guard_reward.shaping.constraint import Constraint as C2\n"
        "print(bad, Constraint is C2, SafetyCost.__module__)\n"
    )
    assert run_python(code, tmp_path) == "[] True guard_reward.rewards.cost"
