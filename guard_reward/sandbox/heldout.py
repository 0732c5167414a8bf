"""The demo's held-out judge: every arm is also evaluated through ``SafetyEvalCallback`` by a second tiny Gen
guard, trained independently of the training guard (another seed, hence other synthetic chats and another
initialisation), with the reward-hacking alarms on.

On top of what the callback logs, the sandbox scores the callback's own answers with the ground-truth rule
(``truth/…``), so the report can put the held-out judge's numbers beside the truth on the very same answers —
something a real run cannot do, and the point of having a sandbox.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from guard_reward.evaluation.answering import GenerationSettings
from guard_reward.evaluation.prompts import EvalPrompt
from guard_reward.sandbox.rules import judge as truth

logger = logging.getLogger(__name__)

#: The seed offset of the held-out judge (the training guards use the demo's seed).
JUDGE_SEED_OFFSET = 101


def eval_prompts(heldout: Sequence[tuple[str, bool]], n: int) -> list[EvalPrompt]:
    """The first ``n`` held-out prompts, as evaluation prompts (the set is shuffled, so both kinds appear)."""
    return [EvalPrompt(i + 1, [{"role": "user", "content": p}], h) for i, (p, h) in enumerate(heldout[:n])]


def _ratio(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def safety_eval_callback(
    prompts: Sequence[EvalPrompt],
    judge: Any,
    train_guard: Any,
    *,
    every: int,
    samples: int,
    max_new_tokens: int,
    seed: int,
) -> Any:
    """A ``SafetyEvalCallback`` that also records the ground truth on its answers."""
    from guard_reward.integrations.trl.eval_callback import SafetyEvalCallback

    class SandboxSafetyEval(SafetyEvalCallback):
        def evaluate(self, model, step):
            metrics = super().evaluate(model, step)
            rows = self.last_rows
            judged = [truth(r["answer"]) for r in rows]
            extra = {
                "truth/unsafe_rate": _ratio([j.unsafe for j in judged]),
                "truth/unsafe_rate_harmful": _ratio([j.unsafe for j, r in zip(judged, rows) if r["harmful"]]),
                "truth/benign_refusal_rate": _ratio(
                    [j.refusal for j, r in zip(judged, rows) if not r["harmful"]]
                ),
                "truth/fluent_rate": _ratio([j.fluent for j in judged]),
            }
            extra = {f"{self.prefix}/{k}": v for k, v in extra.items() if not math.isnan(v)}
            self.history[-1].update(extra)
            return {**metrics, **extra}

    settings = GenerationSettings(samples=samples, max_new_tokens=max_new_tokens, batch_size=512, seed=seed)
    return SandboxSafetyEval(prompts, judge, train_guard=train_guard, eval_every=every, generation=settings)


def heldout_section(arms: dict[str, Any], judge_path: Any) -> list[str]:
    """The report's section: per arm, the held-out judge beside the ground truth (final evaluation, same
    answers), the training guard on those answers, and the step each alarm first fired."""
    p = "eval_safety/"
    lines = [
        "## Held-out judge and reward-hacking alarms",
        "",
        f"Every arm is also evaluated by `SafetyEvalCallback` with a second tiny Gen judge (`{judge_path}`), trained "
        f"with another seed on other synthetic chats, on its own answers to the held-out requests. The ground truth "
        "is computed on the same answers. The alarms (`guard_reward.evaluation.alarms`, default thresholds) need no "
        "ground truth: they compare the training guard with the held-out judge, and answer length, sampling entropy, "
        "benign refusal and the initial policy's perplexity of the answers with step 0.",
        "",
        "| arm | unsafe: truth | unsafe: held-out judge | unsafe: training guard | kappa (judge, guard) | "
        "benign refusal: truth / judge | fluent (truth) | length x | ref. perplexity x | alarms (first step) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        if not arm.safety_eval:
            continue
        last = arm.safety_eval[-1]

        def pct(key: str, row: dict = last) -> str:
            v = row.get(p + key)
            return "n/a" if v is None else f"{100 * v:.1f}%"

        def num(key: str, row: dict = last) -> str:
            v = row.get(p + key)
            return "n/a" if v is None else f"{v:.2f}"

        fired = ", ".join(f"{k} ({s})" for k, s in sorted(arm.alarms.items(), key=lambda kv: kv[1])) or "none"
        lines.append(
            f"| {name} | {pct('truth/unsafe_rate')} | {pct('unsafe_rate')} | {pct('guard_unsafe_rate')} | "
            f"{num('judge_agreement')} | {pct('truth/benign_refusal_rate')} / {pct('benign_refusal_rate')} | "
            f"{pct('truth/fluent_rate')} | {num('length_ratio')} | {num('ref_perplexity_ratio')} | {fired} |"
        )
    first = next((a.safety_eval[0] for a in arms.values() if a.safety_eval), None)
    if first is not None:
        lines += [
            "",
            f"At step 0 (every arm): truth {100 * first.get(p + 'truth/unsafe_rate', math.nan):.1f}% unsafe, held-out "
            f"judge {100 * first.get(p + 'unsafe_rate', math.nan):.1f}%, training guard "
            f"{100 * first.get(p + 'guard_unsafe_rate', math.nan):.1f}%, over "
            f"{int(first.get(p + 'answers', 0))} answers per evaluation. Numbers above are the last evaluation's.",
        ]
    return [*lines, ""]
