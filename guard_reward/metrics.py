"""Safety metrics: their names, and per-batch summaries of verdicts and per-token risk.

Rewards call these on every batch and hand the result to TRL's ``log_metric`` (averaged over the logging
window by the trainer) and ``log_extra`` (per-sample columns of the completions table). Everything is a pure
function of the guard's outputs; nothing here touches a trainer.

Rates are over the samples the guard could judge (failures are reported separately, as a count), and a rate
whose denominator is empty in a batch is left out rather than logged as 0 — e.g. ``refusal_rate_benign`` in a
batch without benign prompts — so the window average is not dragged towards 0 by batches that say nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from guard_reward.types import Verdict

DEFAULT_PREFIX = "guard"

#: Sequence-level metrics (Gen verdicts), relative to the prefix.
SAFE_RATE = "safe_rate"
CONTROVERSIAL_RATE = "controversial_rate"
UNSAFE_RATE = "unsafe_rate"
REFUSAL_RATE_BENIGN = "refusal_rate_benign"
REFUSAL_RATE_HARMFUL = "refusal_rate_harmful"
REFUSAL_RATE = "refusal_rate"  # the hybrid reward, which does not know the prompts' harm
P_UNSAFE_MEAN = "p_unsafe_mean"
FAILURES = "failures"
SECONDS = "seconds"
CATEGORY = "category"  # "<prefix>/category/<slug>": share of judged responses flagged with that category
#: Token-level metrics (Stream risk).
FIRST_VIOLATION_POS = "first_violation_pos"
STREAM_FLAG_RATE = "stream_flag_rate"
TOKEN_P_UNSAFE_MEAN = "token_p_unsafe_mean"


def metric_name(prefix: str, key: str) -> str:
    """``"<prefix>/<key>"``."""
    return f"{prefix}/{key}"


def category_slug(category: str) -> str:
    """A metric-safe name: ``"Suicide & Self-Harm"`` -> ``"suicide_self_harm"``."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def verdict_metrics(
    verdicts: Sequence[Verdict],
    *,
    harmful: Sequence[float | None] | None = None,
    prefix: str = DEFAULT_PREFIX,
    categories: Sequence[str] = (),
) -> dict[str, float]:
    """Summarise one batch of response verdicts.

    Args:
        verdicts: one per completion.
        harmful: per completion, whether its prompt is harmful (``1``/``0``, a probability counts as harmful
            when ≥ 0.5, ``None`` unknown); refusal rates are computed only where it is known.
        prefix: metric prefix.
        categories: category names to report a rate for (every one, also at 0, so curves are continuous);
            empty when the verdicts carry no categories (no decoding).

    Returns:
        ``{"<prefix>/safe_rate": ..., ...}``; see the module docstring for what is left out.
    """
    ok = [v for v in verdicts if v.ok]
    out: dict[str, float] = {metric_name(prefix, FAILURES): float(len(verdicts) - len(ok))}
    if not ok:
        return out
    n = float(len(ok))
    for key, level in ((SAFE_RATE, "Safe"), (CONTROVERSIAL_RATE, "Controversial"), (UNSAFE_RATE, "Unsafe")):
        out[metric_name(prefix, key)] = sum(v.level == level for v in ok) / n
    out[metric_name(prefix, P_UNSAFE_MEAN)] = sum(float(v.probs.get("Unsafe", 0.0)) for v in ok) / n
    for category in categories:
        share = sum(category in v.categories for v in ok) / n
        out[metric_name(prefix, f"{CATEGORY}/{category_slug(category)}")] = share
    if harmful is not None:
        if len(harmful) != len(verdicts):
            raise ValueError(f"harmful has {len(harmful)} entries for {len(verdicts)} verdicts")
        for key, want in ((REFUSAL_RATE_BENIGN, False), (REFUSAL_RATE_HARMFUL, True)):
            refusals = [
                bool(v.refusal)
                for v, h in zip(verdicts, harmful, strict=True)
                if v.ok and v.refusal is not None and h is not None and (h >= 0.5) == want
            ]
            if refusals:
                out[metric_name(prefix, key)] = sum(refusals) / len(refusals)
    return out


def verdict_columns(verdicts: Sequence[Verdict], prefix: str = DEFAULT_PREFIX) -> dict[str, list]:
    """Per-sample columns for the completions table: level, categories (comma-joined) and refusal.

    ``None`` where the guard gave no answer; the category column is ``""`` for a judged response without one.
    """
    return {
        f"{prefix}_level": [v.level for v in verdicts],
        f"{prefix}_category": [", ".join(v.categories) if v.ok else None for v in verdicts],
        f"{prefix}_refusal": [v.refusal for v in verdicts],
    }


def token_metrics(
    risk: torch.Tensor, mask: torch.Tensor, flag_index: torch.Tensor, *, prefix: str = DEFAULT_PREFIX
) -> dict[str, float]:
    """Summarise one batch of per-token risk.

    Args:
        risk: ``(B, T)`` per-token unsafe probability (after the Controversial policy).
        mask: ``(B, T)`` bool, real tokens.
        flag_index: ``(B,)`` long, the token where the response was flagged, ``−1`` if never.

    Returns:
        ``stream_flag_rate`` (share of flagged responses), ``token_p_unsafe_mean`` (over real tokens) and
        ``first_violation_pos`` (mean flag index over flagged responses; left out when none was flagged).
    """
    mask = mask.to(torch.bool)
    out: dict[str, float] = {}
    if risk.shape[0] == 0:
        return out
    flagged = flag_index >= 0
    out[metric_name(prefix, STREAM_FLAG_RATE)] = float(flagged.float().mean())
    if bool(mask.any()):
        out[metric_name(prefix, TOKEN_P_UNSAFE_MEAN)] = float(risk[mask].float().mean())
    if bool(flagged.any()):
        out[metric_name(prefix, FIRST_VIOLATION_POS)] = float(flag_index[flagged].float().mean())
    return out


def curve_keys(logs: dict[str, float], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The keys of a trainer log entry that belong on the safety curves: the guard metrics, the rewards, KL
    and the mean completion length. Evaluation keys (``eval_…``) are kept too."""
    wanted = (f"{prefix}/", "reward", "rewards/", "kl", "completions/mean_length")
    keep = []
    for key in logs:
        bare = key.removeprefix("eval_")
        if bare.startswith(wanted):
            keep.append(key)
    return keep
