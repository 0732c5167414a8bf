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
from guard_reward.evaluation.alarms import ALARMS, AlarmConfig
from guard_reward.evaluation.checkpoint_eval import EvalRun, limit_message
from guard_reward.evaluation.stats import Rate, newcombe

logger = logging.getLogger(__name__)

LABELS = {
    "unsafe_rate_harmful": "unsafe, harmful prompts",
    "benign_refusal_rate": "refusal, benign prompts (over-refusal)",
    "unsafe_rate_benign": "unsafe, benign prompts",
    "unsafe_rate": "unsafe, all prompts",
}
JUDGE_TITLES = {"judge": "judge", "judge2": "second judge", "guard": "training guard"}
KIND_NAMES = {"gen": "Qwen3Guard-Gen", "stream": "Qwen3Guard-Stream", "remote": "served Qwen3Guard-Gen"}
MAX_DISAGREEMENTS = 20
#: What each alarm reads (the key of ``Alarms.check``'s output) and what it needs to be defined.
ALARM_READS = {
    "guard_judge_gap": ("guard_judge_gap", "held-out judge's unsafe rate minus the training guard's", "--train-guard"),
    "length_drift": ("length_ratio", "mean answer length, policy / baseline", ""),
    "entropy_drift": ("entropy_ratio", "mean sampling entropy, policy / baseline", ""),
    "benign_refusal_rise": ("benign_refusal_change", "benign refusal rate, policy minus baseline", "benign prompts"),
    "fluency_collapse": ("ref_perplexity_ratio", "reference perplexity of the answers, policy / baseline", "a reference model"),
}  # fmt: skip


def fmt_rate(r: Rate) -> str:
    if r.n == 0:
        return "n/a (n=0)"
    return f"{100 * r.rate:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}] ({r.count}/{r.n})"


def short_name(name: Any) -> str:
    """A model as a title shows it: a folder's own name (not its whole path), a hub id as it is."""
    text = str(name or "?")
    return Path(text).name if text.startswith(("/", "~", ".")) or "\\" in text else text


def _rates(run: EvalRun, judge: str) -> dict[str, Rate]:
    return summary.headline(run.counts, judge)


def _refusal_cell(run: EvalRun, judge: str, rate: Rate, group: str) -> str:
    """A refusal rate, or why the judge gives none for ``group`` (a Stream judge; a Gen that wrote no
    ``Refusal:`` line for any answer of the group)."""
    if rate.n:
        return fmt_rate(rate)
    if run.judge_kinds.get(judge) == "stream":
        return "n/a (a Stream judge gives no refusal)"
    unread = summary.refusal_unread(run.counts, judge, group)
    return f"n/a (no `Refusal:` line in {unread} answers)" if unread else "n/a (n=0)"


def _cell(run: EvalRun, judge: str, key: str) -> str:
    rate = _rates(run, judge)[key]
    return _refusal_cell(run, judge, rate, "benign") if key == "benign_refusal_rate" else fmt_rate(rate)


def _judge_line(run: EvalRun, judge: str) -> str:
    kind = KIND_NAMES.get(run.judge_kinds.get(judge, ""))
    return f"- {JUDGE_TITLES[judge]}: `{run.judge_names[judge]}`" + (f" ({kind})" if kind else "")


def refusal_notes(run: EvalRun) -> list[str]:
    """Why refusal rates have smaller denominators than unsafe rates, judge by judge (empty when they do not)."""
    out = []
    for j in run.judges:
        c = run.counts
        all_n, unread = int(c.get(f"{j}/all/n", 0)), summary.refusal_unread(c, j, "all")
        if not unread:
            continue
        if run.judge_kinds.get(j) == "stream":
            out.append(f"- {JUDGE_TITLES[j]}: a Qwen3Guard-Stream judges safety token by token and gives no "
                       "refusal verdict, so its refusal rates are n/a.")  # fmt: skip
            continue
        benign, benign_n = summary.refusal_unread(c, j, "benign"), int(c.get(f"{j}/benign/n", 0))
        where = (
            f"{benign} of {benign_n} benign answers ({unread} of {all_n} in all)"
            if benign_n
            else f"{unread} of {all_n} answers"
        )
        out.append(f"- {JUDGE_TITLES[j]}: wrote no `Refusal:` line for {where}; those answers count in the "
                   "unsafe rates but not in the refusal rates (neither as refusals nor as answers).")  # fmt: skip
    if out:
        out[:0] = ["Refusal rates are over the answers a judge gave a refusal verdict for (`Refusal: Yes` or "
                   "`No`), so their denominators can be smaller than the unsafe rates':", ""]  # fmt: skip
    return out


def _md_cell(text: Any, width: int = 80) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def _kappa_text(value: float) -> str:
    return "n/a (one label everywhere)" if math.isnan(value) else f"{value:.3f}"


def report_title(run: EvalRun, role: str | None = None) -> str:
    """``Safety evaluation: <model folder or hub id>``, with the role (policy, baseline) when there are two."""
    return f"Safety evaluation: {short_name(run.settings.get('policy'))}" + (f" ({role})" if role else "")


def write_report(run: EvalRun, alarms: Mapping[str, float] | None = None, role: str | None = None) -> Path:
    """Write ``report.md`` and ``eval.png`` into ``run.output_dir``; returns the report's path. ``alarms``
    (``Alarms.check``'s output against a baseline) adds their table; ``role`` names the run in the title."""
    c = run.counts
    title = report_title(run, role)
    lines = [f"# {title}", ""]
    s = run.settings
    lines += [f"- policy: `{s.get('policy')}`", f"- prompts: `{s.get('prompts')}`"]
    lines += [_judge_line(run, j) for j in run.judges]
    hit, hit_n = int(c.get("stopped_at_limit", 0)), int(c.get("stopped_at_limit_n", 0))
    stopped = f"; {hit} of {hit_n} stopped at max_new_tokens" if hit_n else ""
    lines += [f"- answers: {int(c.get('answers', 0))} ({s.get('samples')} per prompt, "
              f"max {s.get('max_new_tokens')} new tokens, "
              f"{'greedy' if not s.get('do_sample', True) else 'temperature ' + str(s.get('temperature'))}{stopped})"]  # fmt: skip
    lines += ["", "Rates are the share of judged answers, with the Wilson 95% interval and the count. Several "
              "answers to one prompt are correlated, so with more than one sample per prompt the intervals are "
              "somewhat too narrow.", ""]  # fmt: skip
    warning = limit_message(c, s.get("max_new_tokens"))
    notes = [f"> {line}." for line in run.missing] + ([f"> **{warning}.**"] if warning else [])
    lines += [*notes, ""] if notes else []
    lines += ["## Rates", "", "| rate | " + " | ".join(JUDGE_TITLES[j] for j in run.judges) + " |"]
    lines.append("|---|" + "---|" * len(run.judges))
    for key, label in LABELS.items():
        lines.append(f"| {label} | " + " | ".join(_cell(run, j, key) for j in run.judges) + " |")
    cells = [fmt_rate(summary.rate(c, j, "all", "controversial")) for j in run.judges]
    lines.append("| controversial, all prompts | " + " | ".join(cells) + " |")
    failed = [str(int(c.get(f"{j}/failed", 0))) for j in run.judges]
    lines.append("| answers the judge could not read | " + " | ".join(failed) + " |")
    empty = [str(int(c.get(f"{j}/empty", 0))) for j in run.judges]
    lines.append("| empty answers (counted safe, not refusals) | " + " | ".join(empty) + " |")
    notes = refusal_notes(run)
    lines += ["", *notes] if notes else []
    lines += ["", f"Mean answer length {summary.mean(c, 'tokens'):.1f} tokens, mean sampling entropy "
              f"{summary.mean(c, 'entropy'):.3f} nats/token."]  # fmt: skip
    cats = summary.categories(c, "judge")
    if cats:
        lines += ["", "## By category (judge)", "", "| category | unsafe | refusal |", "|---|---|---|"]
        for cat in cats:
            g = f"category/{cat}"
            refusal = _refusal_cell(run, "judge", summary.rate(c, "judge", g, "refusal"), g)
            lines.append(f"| {cat} | {fmt_rate(summary.rate(c, 'judge', g))} | {refusal} |")
    others = [j for j in run.judges if j != "judge"]
    if others:
        lines += ["", "## Agreement", ""]
        for j in others:
            lines.append(f"- judge vs {JUDGE_TITLES[j]}: Cohen's kappa on unsafe {_kappa_text(summary.kappa(c, 'judge', j))}"
                         f" over {sum(int(c.get(f'agree/judge/{j}/{k}', 0)) for k in ('both', 'first', 'second', 'neither'))} answers")  # fmt: skip
        lines += _disagreements(run, others[0])
    if alarms:
        lines += alarm_table(alarms)
    if run.bad_lines:
        lines += ["", f"## Prompt lines skipped ({len(run.bad_lines)})", ""]
        lines += [f"- {_md_cell(e, 160)}" for e in run.bad_lines[:10]]
        if len(run.bad_lines) > 10:
            lines.append(f"- … and {len(run.bad_lines) - 10} more")
    path = run.output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_rates(run, run.output_dir / "eval.png", title)
    logger.info("report written to %s", path)
    return path


def alarm_table(alarms: Mapping[str, float], config: AlarmConfig | None = None) -> list[str]:
    """The reward-hacking alarms against the baseline: what each reads, its value, when it fires, whether it
    did; then one line naming the alarms that fired."""
    cfg = config or AlarmConfig()
    bands = {
        "guard_judge_gap": f"above +{100 * cfg.guard_judge_gap:.0f} points",
        "length_drift": f"outside {1 / cfg.length_ratio:.2g}-{cfg.length_ratio:g}x",
        "entropy_drift": f"outside {1 / cfg.entropy_ratio:.2g}-{cfg.entropy_ratio:g}x",
        "benign_refusal_rise": f"above +{100 * cfg.benign_refusal_rise:.0f} points",
        "fluency_collapse": f"above {cfg.perplexity_ratio:g}x",
    }
    lines = ["", "## Reward-hacking alarms (against the baseline)", "",
             "| alarm | reads | value | fires when | fired |", "|---|---|---|---|---|"]  # fmt: skip
    for name in ALARMS:
        key, reads, needs = ALARM_READS[name]
        if key in alarms:
            value = alarms[key]
            shown = f"{100 * value:+.1f} points" if key.endswith(("gap", "change")) else f"{value:.3f}x"
            fired = "**yes**" if alarms.get(f"alarm/{name}") else "no"
        else:
            shown, fired = f"n/a (needs {needs})" if needs else "n/a", "n/a"
        lines.append(f"| {name} | {reads} | {shown} | {bands[name]} | {fired} |")
    on = [n for n in ALARMS if alarms.get(f"alarm/{n}")]
    lines += ["", f"Alarms that fired: {', '.join(on) if on else 'none'}."]
    return lines


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


def plot_rates(run: EvalRun, path: Path, title: str | None = None) -> Path:
    """``eval.png``: the headline rates per judge with Wilson 95% error bars, each bar's value written on it."""
    from guard_reward.evaluation.report_plot import plot_rates as draw

    labels = {k: v.split(" (")[0] for k, v in LABELS.items()}
    legend = {j: JUDGE_TITLES[j] for j in run.judges}
    return draw(lambda j: _rates(run, j), run.judges, labels, legend, title or report_title(run), path)


def write_comparison(
    a: EvalRun, b: EvalRun, output: Path, names: tuple[str, str] = ("policy", "baseline")
) -> Path:
    """``comparison.md``: for every judge both runs have, each rate of ``a`` and ``b``, ``a - b`` with
    Newcombe's 95% interval, and whether the interval excludes 0."""
    lines = ["# Safety evaluation: comparison", "", f"- {names[0]}: `{a.settings.get('policy')}` ({a.output_dir})",
             f"- {names[1]}: `{b.settings.get('policy')}` ({b.output_dir})"]  # fmt: skip
    shared = [j for j in a.judges if j in b.judges]
    for j in [*a.judges, *b.judges]:
        if j not in shared:
            lines += ["", f"> only the {names[0] if j in a.judges else names[1]} run has a {JUDGE_TITLES[j]}: "
                          "it is not compared."]  # fmt: skip
    for j in shared:
        lines += _comparison_table(a, b, j, names)
    lines += ["", "Differences in percentage points; Newcombe's hybrid score interval (method 10)."]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return output


def _comparison_table(a: EvalRun, b: EvalRun, judge: str, names: tuple[str, str]) -> list[str]:
    kind = KIND_NAMES.get(a.judge_kinds.get(judge, "") or b.judge_kinds.get(judge, ""))
    lines = ["", f"## {JUDGE_TITLES[judge]}: `{short_name(a.judge_names.get(judge))}`"
             + (f" ({kind})" if kind else ""), ""]  # fmt: skip
    if a.judge_names.get(judge) != b.judge_names.get(judge):
        lines += [f"> the runs were judged by different models ({a.judge_names.get(judge)} vs "
                  f"{b.judge_names.get(judge)}): differences mix policy and judge.", ""]  # fmt: skip
    lines += [f"| rate | {names[0]} | {names[1]} | difference [95% CI] | interval excludes 0 |",
              "|---|---|---|---|---|"]  # fmt: skip
    groups = list(LABELS.items())
    cats = set(summary.categories(a.counts, judge)) | set(summary.categories(b.counts, judge))
    groups += [(f"category/{cat}", f"unsafe, {cat}") for cat in sorted(cats)]
    for key, label in groups:
        if key.startswith("category/"):
            ra, rb = summary.rate(a.counts, judge, key), summary.rate(b.counts, judge, key)
            ca, cb = fmt_rate(ra), fmt_rate(rb)
        else:
            ra, rb = _rates(a, judge)[key], _rates(b, judge)[key]
            ca, cb = _cell(a, judge, key), _cell(b, judge, key)
        d = newcombe(ra, rb)
        diff = (
            "n/a" if math.isnan(d.diff) else f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        )
        yes = "n/a" if math.isnan(d.diff) else ("**yes**" if d.excludes_zero else "no")
        lines.append(f"| {label} | {ca} | {cb} | {diff} | {yes} |")
    return lines
