"""The evaluation's report: ``report.md`` (rates with Wilson 95% intervals and counts, per category, judge
agreement and the rows where the judges disagree, alarms), ``eval.png`` (the headline rates with their
intervals), and ``comparison.md`` for two runs (differences with Newcombe's interval).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guard_reward.evaluation import summary
from guard_reward.evaluation.checkpoint_eval import EvalRun
from guard_reward.evaluation.stats import Rate, newcombe

logger = logging.getLogger(__name__)

LABELS = {
    "unsafe_rate_harmful": "unsafe, harmful prompts",
    "benign_refusal_rate": "refusal, benign prompts (over-refusal)",
    "unsafe_rate_benign": "unsafe, benign prompts",
    "unsafe_rate": "unsafe, all prompts",
}
JUDGE_TITLES = {"judge": "judge", "judge2": "second judge", "guard": "training guard"}
MAX_DISAGREEMENTS = 20


def fmt_rate(r: Rate) -> str:
    if r.n == 0:
        return "n/a (n=0)"
    return f"{100 * r.rate:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}] ({r.count}/{r.n})"


def _md_cell(text: Any, width: int = 80) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def _kappa_text(value: float) -> str:
    return "n/a (one label everywhere)" if math.isnan(value) else f"{value:.3f}"


def write_report(
    run: EvalRun, alarms: Mapping[str, float] | None = None, title: str = "Safety evaluation"
) -> Path:
    """Write ``report.md`` and ``eval.png`` into ``run.output_dir``; returns the report's path."""
    c = run.counts
    lines = [f"# {title}", ""]
    s = run.settings
    lines += [f"- policy: `{s.get('policy')}`", f"- prompts: `{s.get('prompts')}`"]
    lines += [f"- {JUDGE_TITLES[j]}: `{run.judge_names[j]}`" for j in run.judges]
    lines += [f"- answers: {int(c.get('answers', 0))} ({s.get('samples')} per prompt, "
              f"max {s.get('max_new_tokens')} new tokens, "
              f"{'greedy' if not s.get('do_sample', True) else 'temperature ' + str(s.get('temperature'))})"]  # fmt: skip
    lines += ["", "Rates are the share of judged answers, with the Wilson 95% interval and the count. Several "
              "answers to one prompt are correlated, so with more than one sample per prompt the intervals are "
              "somewhat too narrow.", ""]  # fmt: skip
    for line in run.missing:
        lines.append(f"> {line}.")
    if run.missing:
        lines.append("")
    lines += ["## Rates", "", "| rate | " + " | ".join(JUDGE_TITLES[j] for j in run.judges) + " |"]
    lines.append("|---|" + "---|" * len(run.judges))
    for key, label in LABELS.items():
        cells = [fmt_rate(summary.headline(c, j)[key]) for j in run.judges]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [fmt_rate(summary.rate(c, j, "all", "controversial")) for j in run.judges]
    lines.append("| controversial, all prompts | " + " | ".join(cells) + " |")
    failed = [str(int(c.get(f"{j}/failed", 0))) for j in run.judges]
    lines.append("| answers the judge could not read | " + " | ".join(failed) + " |")
    empty = [str(int(c.get(f"{j}/empty", 0))) for j in run.judges]
    lines.append("| empty answers (counted safe, not refusals) | " + " | ".join(empty) + " |")
    lines += ["", f"Mean answer length {summary.mean(c, 'tokens'):.1f} tokens, mean sampling entropy "
              f"{summary.mean(c, 'entropy'):.3f} nats/token."]  # fmt: skip
    cats = summary.categories(c, "judge")
    if cats:
        lines += ["", "## By category (judge)", "", "| category | unsafe | refusal |", "|---|---|---|"]
        for cat in cats:
            g = f"category/{cat}"
            lines.append(f"| {cat} | {fmt_rate(summary.rate(c, 'judge', g))} | "
                         f"{fmt_rate(summary.rate(c, 'judge', g, 'refusal'))} |")  # fmt: skip
    others = [j for j in run.judges if j != "judge"]
    if others:
        lines += ["", "## Agreement", ""]
        for j in others:
            lines.append(f"- judge vs {JUDGE_TITLES[j]}: Cohen's kappa on unsafe {_kappa_text(summary.kappa(c, 'judge', j))}"
                         f" over {sum(int(c.get(f'agree/judge/{j}/{k}', 0)) for k in ('both', 'first', 'second', 'neither'))} answers")  # fmt: skip
        lines += _disagreements(run, others[0])
    if alarms:
        lines += [
            "",
            "## Reward-hacking alarms (against the baseline)",
            "",
            "| alarm | value | on |",
            "|---|---|---|",
        ]
        for key, value in alarms.items():
            if key.startswith("alarm/"):
                continue
            lines.append(f"| {key} | {value:.3f} | |")
        for key, value in alarms.items():
            if key.startswith("alarm/"):
                lines.append(f"| {key.removeprefix('alarm/')} | | {'**yes**' if value else 'no'} |")
    if run.bad_lines:
        lines += ["", f"## Prompt lines skipped ({len(run.bad_lines)})", ""]
        lines += [f"- {_md_cell(e, 160)}" for e in run.bad_lines[:10]]
        if len(run.bad_lines) > 10:
            lines.append(f"- … and {len(run.bad_lines) - 10} more")
    path = run.output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_rates(run, run.output_dir / "eval.png")
    logger.info("report written to %s", path)
    return path


def _disagreements(run: EvalRun, other: str) -> list[str]:
    rows = [
        r for r in run.rows
        if r.get("judge") and r.get(other) and r["judge"].get("error") is None and r[other].get("error") is None
        and (r["judge"].get("level") == "Unsafe") != (r[other].get("level") == "Unsafe")
    ]  # fmt: skip
    out = ["", f"### Where judge and {JUDGE_TITLES[other]} disagree on unsafe ({len(rows)} answers)", ""]
    if not rows:
        return [*out, "None."]
    out += [f"| line | prompt | answer | judge | {JUDGE_TITLES[other]} |", "|---|---|---|---|---|"]
    for r in rows[:MAX_DISAGREEMENTS]:
        out.append(f"| {r['line']} | {_md_cell(r['prompt'], 50)} | {_md_cell(r['answer'])} | "
                   f"{r['judge'].get('level')} | {r[other].get('level')} |")  # fmt: skip
    if len(rows) > MAX_DISAGREEMENTS:
        out.append(f"\n… {len(rows) - MAX_DISAGREEMENTS} more in results.jsonl.")
    return out


def plot_rates(run: EvalRun, path: Path) -> Path:
    """Bars of the headline rates per judge, with Wilson 95% error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    keys = list(LABELS)
    width = 0.8 / max(1, len(run.judges))
    for i, j in enumerate(run.judges):
        rates = [summary.headline(run.counts, j)[k] for k in keys]
        xs = [x + i * width for x in range(len(keys))]
        ys = [0.0 if r.n == 0 else r.rate for r in rates]
        err = [
            [0.0 if r.n == 0 else r.rate - r.low for r in rates],
            [0.0 if r.n == 0 else r.high - r.rate for r in rates],
        ]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=JUDGE_TITLES[j])
    ax.set_xticks([x + width * (len(run.judges) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([LABELS[k].split(" (")[0] for k in keys], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (Wilson 95%)")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.settings.get('policy')}")
    fig.savefig(path, dpi=100)
    return path


def write_comparison(
    a: EvalRun, b: EvalRun, output: Path, names: tuple[str, str] = ("policy", "baseline")
) -> Path:
    """``comparison.md``: each rate of ``a`` and ``b`` (by their first judge), ``a - b`` with Newcombe's 95%
    interval, and whether the interval excludes 0."""
    lines = ["# Safety evaluation: comparison", "", f"- {names[0]}: `{a.settings.get('policy')}` ({a.output_dir})",
             f"- {names[1]}: `{b.settings.get('policy')}` ({b.output_dir})", ""]  # fmt: skip
    if a.judge_names.get("judge") != b.judge_names.get("judge"):
        lines += [f"> the runs were judged by different judges ({a.judge_names.get('judge')} vs "
                  f"{b.judge_names.get('judge')}): differences mix policy and judge.", ""]  # fmt: skip
    lines += [f"| rate (judge) | {names[0]} | {names[1]} | difference [95% CI] | interval excludes 0 |",
              "|---|---|---|---|---|"]  # fmt: skip
    groups = [(k, v) for k, v in LABELS.items()]
    for cat in sorted(
        set(summary.categories(a.counts, "judge")) | set(summary.categories(b.counts, "judge"))
    ):
        groups.append((f"category/{cat}", f"unsafe, {cat}"))
    for key, label in groups:
        if key.startswith("category/"):
            ra, rb = summary.rate(a.counts, "judge", key), summary.rate(b.counts, "judge", key)
        else:
            ra, rb = summary.headline(a.counts, "judge")[key], summary.headline(b.counts, "judge")[key]
        d = newcombe(ra, rb)
        diff = (
            "n/a" if math.isnan(d.diff) else f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        )
        yes = "n/a" if math.isnan(d.diff) else ("**yes**" if d.excludes_zero else "no")
        lines.append(f"| {label} | {fmt_rate(ra)} | {fmt_rate(rb)} | {diff} | {yes} |")
    lines += ["", "Differences in percentage points; Newcombe's hybrid score interval (method 10)."]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return output
