"""``eval.png``: the headline rates of an evaluation per judge, as bars with Wilson 95% error bars.

Every bar carries its value written above it, and a 0% bar is drawn as a thin line in its judge's colour, so a
rate of 0 is seen, not mistaken for a missing bar; a rate a judge cannot give (no answers in the group, or a
Stream judge's refusal) is written "n/a" where its bar would stand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from guard_reward.evaluation.stats import Rate

#: Height (in rate units) a 0% bar is drawn with: a thin line, visible against the axis.
ZERO_BAR = 0.012


def plot_rates(
    rates: Callable[[str], Mapping[str, Rate]],
    judges: Sequence[str],
    labels: Mapping[str, str],
    legend: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Bars of ``rates(judge)[key]`` for every key of ``labels`` (the x axis) and every judge (one colour
    each, named by ``legend[judge]``), under ``title``; written to ``path`` (PNG)."""
    rates_figure(rates, judges, labels, legend, title).savefig(path, dpi=100)
    return path


def rates_figure(
    rates: Callable[[str], Mapping[str, Rate]],
    judges: Sequence[str],
    labels: Mapping[str, str],
    legend: Mapping[str, str],
    title: str,
) -> Any:
    """The matplotlib ``Figure`` :func:`plot_rates` writes (one ``Axes``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    keys = list(labels)
    width = 0.8 / max(1, len(judges))
    for i, judge in enumerate(judges):
        by_key = rates(judge)
        color = f"C{i}"
        for x, key in enumerate(keys):
            r, xi = by_key[key], x + i * width
            if r.n == 0:
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=8, color=color)
                continue
            ax.bar(xi, max(r.rate, ZERO_BAR), width, color=color)
            ax.errorbar(xi, r.rate, yerr=[[r.rate - r.low], [r.high - r.rate]], color="0.25", lw=1, capsize=3)
            ax.text(xi, r.high + 0.02, f"{100 * r.rate:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(judges) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([labels[k] for k in keys], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("rate (Wilson 95% interval)")
    handles = [Patch(color=f"C{i}", label=legend[j]) for i, j in enumerate(judges)]  # also for all-n/a judges
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=10)
    return fig
