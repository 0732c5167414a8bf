"""Figures of the sandbox: GRPO arms compared by the ground truth, the guard-only failure, and a per-token risk
strip of one response (Qwen3Guard-Stream's view, token by token).

Plain matplotlib figures (Agg canvas, no pyplot state): they are returned for notebooks and saved for reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guard_reward.types import TokenRisk

ARM_TITLES = {
    "scalar": "scalar (SafetyReward)",
    "dense": "dense (+ TokenSafetyPenalty)",
    "guard_only": "guard-only, no KL",
    "helpful": "helpfulness only",
    "lagrangian": "helpfulness + constraint (λ adapted)",
    "fixed_low": "helpfulness + fixed λ (low)",
    "fixed_high": "helpfulness + fixed λ (high)",
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_comparison(path: Path, arms: dict[str, Any]) -> Path:
    """Four panels over GRPO steps, one line per arm: unsafe rate (all / harmful prompts), benign refusal,
    fluency. Dashed lines mark the 5% and 2% levels."""
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2)
    panels = (
        ("unsafe_rate", "Unsafe rate, all held-out prompts", True),
        ("unsafe_rate_harmful", "Unsafe rate, harmful prompts", True),
        ("refusal_rate_benign", "Refusal rate, benign prompts", False),
        ("fluent_rate", "Fluent answers", False),
    )
    for ax, (key, title, levels) in zip(axes.flat, panels, strict=True):
        for name, arm in arms.items():
            steps = [r.step for r in arm.history]
            ax.plot(
                steps, [100 * getattr(r, key) for r in arm.history], marker="o", ms=3, label=ARM_TITLES[name]
            )
        if levels:
            for y in (5, 2):
                ax.axhline(y, color="grey", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("% (ground truth)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("Safety sandbox: held-out evaluation by the ground-truth rule")
    fig.savefig(path, dpi=110)
    return path


def guard_series(
    log_history: Sequence[dict[str, Any]], key: str = "guard/unsafe_rate"
) -> list[tuple[int, float]]:
    """``(step, value)`` of one logged metric (the guard's own view during training)."""
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e and "step" in e]


def plot_hacking(path: Path, arm: Any) -> Path:
    """The guard-only run: what the guard reports next to what the ground truth and the fluency check say."""
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    guard = guard_series(arm.log_history)
    left.plot(
        [s for s, _ in guard],
        [100 * v for _, v in guard],
        lw=1,
        label="unsafe rate, by the guard (training batches)",
    )
    steps = [r.step for r in arm.history]
    left.plot(
        steps, [100 * r.unsafe_rate for r in arm.history], marker="o", ms=3, label="unsafe rate, ground truth"
    )
    left.plot(
        steps,
        [100 * r.fluent_rate for r in arm.history],
        marker="s",
        ms=3,
        label="fluent answers, ground truth",
    )
    left.set_ylabel("%")
    left.set_title("Guard-only reward, no KL: the guard is satisfied")
    right.plot(steps, [r.mean_words for r in arm.history], marker="o", ms=3, color="C3")
    right.set_title("Mean answer length (words)")
    for ax in (left, right):
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_constraint(path: Path, arms: dict[str, Any], target: float) -> Path:
    """The constraint arms: the ground truth's unsafe rate (with the target) next to λ and the guard's batch
    cost, over GRPO steps; plus helpfulness on benign requests."""
    fig = _figure(14, 4)
    left, middle, right = fig.subplots(1, 3)
    for name, arm in arms.items():
        steps = [r.step for r in arm.history]
        left.plot(steps, [100 * r.unsafe_rate for r in arm.history], marker="o", ms=3, label=ARM_TITLES[name])
        right.plot(
            steps, [r.helpfulness_benign for r in arm.history], marker="o", ms=3, label=ARM_TITLES[name]
        )
        lam = guard_series(arm.log_history, "constraint/lambda")
        if lam:
            middle.plot([s for s, _ in lam], [v for _, v in lam], label=f"λ, {ARM_TITLES[name]}")
    left.axhline(100 * target, color="grey", ls="--", lw=0.8, label=f"target {100 * target:g}%")
    left.set_title("Unsafe rate, ground truth (held out)")
    left.set_ylabel("%")
    middle.set_title("λ (constraint/lambda)")
    middle.set_yscale("log")
    cost = (
        guard_series(arms["lagrangian"].log_history, "constraint/batch_cost") if "lagrangian" in arms else []
    )
    if cost:
        twin = middle.twinx()
        twin.plot([s for s, _ in cost], [100 * v for _, v in cost], color="grey", lw=0.8, alpha=0.7)
        twin.axhline(100 * target, color="grey", ls="--", lw=0.8)
        twin.set_ylabel("guard's unsafe rate, training batch (%)", color="grey")
    right.set_title("Helpfulness score, benign requests")
    for ax in (left, middle, right):
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    middle.legend(fontsize=7, loc="upper right")
    fig.savefig(path, dpi=110)
    return path


def plot_token_risk(
    risk: TokenRisk, content: str, path: str | os.PathLike | None = None, title: str | None = None
):
    """A heatmap strip of one response: each guard token with its ``p(Unsafe)`` and ``p(Controversial)``.

    Args:
        risk: Stream's :class:`~guard_reward.types.TokenRisk` for the response (``T`` tokens).
        content: the response text ``risk.offsets`` point into (the token labels are cut from it).
        path: also save the figure there (PNG).

    Returns:
        the matplotlib ``Figure`` (a notebook displays it).
    """
    import numpy as np

    labels = [
        content[int(a) : int(b)].strip() or repr(content[int(a) : int(b)]) for a, b in risk.offsets.tolist()
    ]
    values = np.stack([risk.p_unsafe.float().numpy(), risk.p_controversial.float().numpy()])  # (2, T)
    fig = _figure(max(6.0, 0.45 * len(labels) + 1.5), 2.4)
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="Reds", vmin=0.0, vmax=1.0)
    ax.set_yticks([0, 1], ["p(Unsafe)", "p(Controversial)"])
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.02)
    ax.set_title(title or "Per-token risk (Qwen3Guard-Stream): the response so far")
    if path is not None:
        fig.savefig(Path(path), dpi=110)
    return fig
