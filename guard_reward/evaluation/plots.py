"""Safety curves: safety and refusal rates, unsafe rate per category, reward, the held-out evaluation
(``eval_safety/…``, with the step of each reward-hacking alarm) and the constraint (``constraint/lambda``, cost,
threshold), against the training step (an integer axis).

Drawn with matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot``: it needs no display, no
global state, and works inside a training process or a notebook alike. The history is the trainer's own
``log_history`` (``trainer_state.json``) or the CSV written by ``SafetyCurvesCallback``; both hold one row per
logging step.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from guard_reward.rewards import metrics as m

logger = logging.getLogger(__name__)

CURVES_PNG = "safety_curves.png"
CURVES_CSV = "safety_curves.csv"
#: The held-out evaluation's prefix (``SafetyEvalCallback``); its rows are drawn, unlike the trainer's own
#: ``eval_…`` rows (losses of ``Trainer.evaluate``).
EVAL_SAFETY = "eval_safety/"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_csv_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a curves CSV as ``{column: number}`` (empty cells dropped)."""
    with open(path, newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {k: v for k, v in ((k, _number(v)) for k, v in row.items()) if v is not None}
            rows.append(parsed)
        return rows


def _latest_trainer_state(run_dir: Path) -> Path | None:
    top = run_dir / "trainer_state.json"
    if top.exists():
        return top
    checkpoints = sorted(
        (
            p
            for p in run_dir.glob("checkpoint-*/trainer_state.json")
            if p.parent.name.split("-")[-1].isdigit()
        ),
        key=lambda p: int(p.parent.name.split("-")[-1]),
    )
    return checkpoints[-1] if checkpoints else None


def load_log_history(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """A finished (or interrupted) run's log rows.

    Looks for ``RUN_DIR/trainer_state.json``, then the newest ``RUN_DIR/checkpoint-N/trainer_state.json``,
    then ``RUN_DIR/safety_curves.csv``; raises ``FileNotFoundError`` naming all three when none exists.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory")
    state = _latest_trainer_state(run_dir)
    if state is not None:
        history = json.loads(state.read_text()).get("log_history", [])
        return [{k: float(v) for k, v in row.items() if _number(v) is not None} for row in history]
    csv_path = run_dir / CURVES_CSV
    if csv_path.exists():
        return read_csv_history(csv_path)
    raise FileNotFoundError(
        f"no log history in {run_dir}: expected trainer_state.json, checkpoint-*/trainer_state.json "
        f"or {CURVES_CSV}"
    )


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        y = _number(row.get(key))
        if y is None:
            continue
        xs.append(float(row.get("step", i)))
        ys.append(y)
    return xs, ys


def _keys(history: Iterable[Mapping[str, float]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in history:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _trainer_eval_row(row: Mapping[str, float]) -> bool:
    return any(k.startswith("eval_") and not k.startswith(EVAL_SAFETY) for k in row)


def _alarm_steps(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The first step at which each ``eval_safety/alarm/<name>`` was on."""
    out: dict[str, float] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(EVAL_SAFETY + "alarm/") and _number(value) and key not in out:
                out[key.removeprefix(EVAL_SAFETY + "alarm/")] = float(row.get("step", 0))
    return out


_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def _panel(ax, history, keys: Sequence[tuple[str, str]], title: str, ylabel: str, unit_range: bool) -> int:
    from matplotlib.ticker import MaxNLocator

    drawn = 0
    for key, label in keys:
        xs, ys = _series(history, key)
        if xs:
            # Series often coincide (two rates both 0, one reward equal to the total): each gets its own line
            # style and marker, later ones smaller, hollow and on top, so every series stays visible.
            k = drawn % len(_STYLES)
            ax.plot(xs, ys, linestyle=_STYLES[k], marker=_MARKERS[k] if len(xs) < 40 else None,
                    markersize=max(2.5, 8.0 - 0.8 * drawn), markerfacecolor="none" if drawn else None,
                    linewidth=1.2, zorder=2 + drawn, label=label)  # fmt: skip
            drawn += 1
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if unit_range:
        ax.set_ylim(-0.02, 1.02)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    return drawn


def plot_safety_curves(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    *,
    prefix: str = m.DEFAULT_PREFIX,
    title: str | None = None,
) -> Path:
    """Render the six-panel safety figure to ``path`` (PNG) and return the path.

    Panels: safety rates (safe / controversial / unsafe and the Stream flag rate), refusal rates (benign and
    harmful prompts), unsafe rate per category, rewards (total and per reward function), the held-out
    evaluation (``eval_safety/…``, each alarm's first step as a dashed line) and the constraint (λ, cost,
    threshold). The trainer's own evaluation rows (``eval_loss`` …) are not drawn. Raises ``ValueError`` when
    the history has no row with a step.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [row for row in history if "step" in row and not _trainer_eval_row(row)]
    if not train:
        raise ValueError("the log history has no training rows with a 'step' to plot")
    keys = _keys(train)
    p = f"{prefix}/"
    safety = [
        (p + m.SAFE_RATE, "safe"),
        (p + m.CONTROVERSIAL_RATE, "controversial"),
        (p + m.UNSAFE_RATE, "unsafe"),
        (p + m.STREAM_FLAG_RATE, "flagged by Stream"),
    ]
    refusal = [
        (p + m.REFUSAL_RATE_BENIGN, "benign prompts"),
        (p + m.REFUSAL_RATE_HARMFUL, "harmful prompts"),
        (p + m.REFUSAL_RATE, "all prompts"),
    ]
    cat_prefix = p + m.CATEGORY + "/"
    categories = [(k, k.removeprefix(cat_prefix)) for k in keys if k.startswith(cat_prefix)]
    rewards = [("reward", "reward (weighted sum)")] + [
        (k, k.removeprefix("rewards/").removesuffix("/mean"))
        for k in keys
        if k.startswith("rewards/") and k.endswith("/mean")
    ]

    e = EVAL_SAFETY
    held_out = [
        (e + "unsafe_rate_harmful", "unsafe, harmful prompts (judge)"),
        (e + "benign_refusal_rate", "refusal, benign prompts (judge)"),
        (e + "unsafe_rate_benign", "unsafe, benign prompts (judge)"),
        (e + "guard_unsafe_rate", "unsafe (training guard)"),
        (e + "judge_agreement", "agreement (kappa)"),
    ]
    constraint = [
        ("constraint/lambda", "lambda"),
        ("constraint/cost", "cost (window)"),
        ("constraint/batch_cost", "cost (batch)"),
        ("constraint/threshold", "threshold"),
    ]

    fig = Figure(figsize=(11, 11), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2)
    _panel(axes[0, 0], train, safety, "Safety", "rate", True)
    _panel(axes[0, 1], train, refusal, "Refusal", "rate", True)
    _panel(axes[1, 0], train, categories, "Unsafe rate by category", "rate", True)
    _panel(axes[1, 1], train, rewards, "Reward", "reward", False)
    _panel(axes[2, 0], train, held_out, "Held-out evaluation", "rate / kappa", False)
    for name, step in _alarm_steps(train).items():
        axes[2, 0].axvline(step, color="red", linestyle="--", linewidth=1)
        axes[2, 0].annotate(f"alarm: {name}", (step, 0.95), xycoords=("data", "axes fraction"), fontsize=6,
                            color="red", rotation=90, va="top")  # fmt: skip
    _panel(axes[2, 1], train, constraint, "Constraint", "value", False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    logger.info("safety curves written to %s", path)
    return path


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Redraw a run's curves from its log history into ``output`` (default ``RUN_DIR/safety_curves.png``)."""
    run_dir = Path(run_dir)
    history = load_log_history(run_dir)
    return plot_safety_curves(history, output or run_dir / CURVES_PNG, title=run_dir.name)
