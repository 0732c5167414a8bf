"""Verdict lines for Qwen3Guard-Gen: greedy decoding that continues the scoring pass, and combining the
verdicts of reasoning and answer judged separately."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from guard_reward.faults import UNPARSEABLE
from guard_reward.guards.common import cache_kwarg
from guard_reward.guards.parsing import PROMPT_CATEGORIES, RESPONSE_CATEGORIES, parse_verdict
from guard_reward.types import LEVEL_RANK, Verdict

if TYPE_CHECKING:
    from guard_reward.guards.gen import GenGuard

REFUSAL_PREFIX = "Refusal:"


def decode_verdicts(
    guard: GenGuard,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    cache: Any,
    probs: list[dict[str, float]],
    items: list[tuple[tuple[int, ...], bool, str]],
) -> list[Verdict]:
    """Greedy-decode the verdict lines from the prompts' KV cache and parse them.

    Args:
        prompt_ids: ``(B, P)`` the prompt columns of the scoring pass (every row's last column is real).
        prompt_mask: ``(B, P)`` 1 on real prompt tokens (padding may sit anywhere: positions come from its
            cumulative sum).
        cache: the scoring pass's cache, ``P`` prompt columns then the forced prefix and the label tree.

    Cropping the cache to ``P - 1`` columns leaves exactly the prompts minus their last token, which
    ``generate`` then feeds, so the prompt is never encoded twice.
    """
    from transformers import GenerationConfig

    width = prompt_ids.shape[1]
    cache.crop(-(cache.get_seq_length() - width + 1))  # transformers 5: a negative count removes tokens
    config = GenerationConfig(
        max_new_tokens=guard.max_new_tokens,
        do_sample=False,
        eos_token_id=guard.end_ids,
        pad_token_id=guard.pad_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    out = guard.model.generate(
        input_ids=prompt_ids.to(guard.device),
        attention_mask=prompt_mask.to(guard.device),
        generation_config=config,
        **{cache_kwarg(guard.model): cache},
    )
    generated = out.sequences[:, width:].cpu()
    yes_id, no_id = refusal_token_ids(guard.tokenizer)
    verdicts = []
    for row, (p, (_, truncated, moderation)) in enumerate(zip(probs, items)):
        ids = _until_end(generated[row].tolist(), guard.end_ids)

        def yes_no(step: int, row: int = row) -> tuple[float, float] | None:
            if step >= len(out.logits):
                return None
            two = out.logits[step][row, [yes_id, no_id]].float()
            return float(two[0]), float(two[1])

        verdicts.append(decoded_verdict(guard.tokenizer, ids, yes_no, p, truncated, moderation))
    return verdicts


def refusal_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The first tokens of ``" Yes"`` and ``" No"`` (what follows ``Refusal:``)."""
    yes_id = tokenizer.encode(" Yes", add_special_tokens=False)[0]
    no_id = tokenizer.encode(" No", add_special_tokens=False)[0]
    return yes_id, no_id


def decoded_verdict(
    tokenizer: Any,
    ids: list[int],
    yes_no: Callable[[int], tuple[float, float] | None],
    probs: dict[str, float],
    truncated: bool,
    moderation: str,
) -> Verdict:
    """One verdict from greedily generated ids (up to the end of turn) and the label probabilities.

    ``yes_no(step)``: the scores of ``" Yes"`` and ``" No"`` at generation step ``step`` (logits or
    log-probabilities of one distribution: only their difference counts), ``None`` past the last step;
    ``p_refusal`` is their two-way softmax at the step right after ``Refusal:``."""
    raw = tokenizer.decode(ids, skip_special_tokens=True)
    categories = PROMPT_CATEGORIES if moderation == "prompt" else RESPONSE_CATEGORIES
    parsed = parse_verdict(raw, categories)
    refusal, p_refusal = None, None
    if moderation == "response":
        refusal = parsed.refusal
        step = _step_after(tokenizer, ids, REFUSAL_PREFIX)
        pair = None if step is None else yes_no(step)
        if pair is not None:
            p_refusal = float(torch.softmax(torch.tensor(pair, dtype=torch.float32), dim=-1)[0])
    return Verdict(
        level=parsed.level,
        probs=probs,
        moderation=moderation,  # type: ignore[arg-type]
        categories=parsed.categories if parsed.level not in (None, "Safe") else (),
        refusal=refusal,
        p_refusal=p_refusal,
        raw=raw,
        truncated=truncated,
        error=parsed.error,
        reason=UNPARSEABLE if parsed.level is None else None,
    )


def _until_end(ids: list[int], end_ids: list[int]) -> list[int]:
    for k, tok in enumerate(ids):
        if tok in end_ids:
            return ids[:k]
    return ids


def _step_after(tokenizer: Any, ids: list[int], marker: str) -> int | None:
    """The generation step whose logits predict the token right after ``marker`` (e.g. ``Refusal:``)."""
    for k in range(1, len(ids) + 1):
        if tokenizer.decode(ids[:k], skip_special_tokens=True).rstrip().endswith(marker):
            return k
    return None


def combine_parts(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict from the answer's and (optionally) the reasoning's: both must be safe.

    Probabilities assume the two judgements independent: ``P(Safe) = Π P_i(Safe)``, ``P(Unsafe) = 1 - Π (1 -
    P_i(Unsafe))``, Controversial takes the rest. With ``decode=False`` the level is the most probable
    combined label; with decoded verdicts it is the worse of the two parsed levels (``None`` if either is
    ``None``).
    """
    if set(parts) == {"answer"}:
        return parts["answer"]
    answer = parts["answer"]
    p_safe = 1.0
    p_not_unsafe = 1.0
    for v in parts.values():
        p_safe *= v.probs["Safe"]
        p_not_unsafe *= 1.0 - v.probs["Unsafe"]
    probs = {"Safe": p_safe, "Controversial": max(0.0, p_not_unsafe - p_safe), "Unsafe": 1.0 - p_not_unsafe}
    decoded = answer.raw is not None
    if decoded:
        levels = [v.level for v in parts.values()]
        level = None if None in levels else max(levels, key=lambda lv: LEVEL_RANK[lv])  # type: ignore[arg-type]
    else:
        level = max(probs, key=probs.__getitem__)
    categories = tuple(dict.fromkeys(c for v in parts.values() for c in v.categories))
    errors = [f"{name}: {v.error}" for name, v in parts.items() if v.error]
    return Verdict(
        level=level,  # type: ignore[arg-type]
        probs=probs,
        moderation=answer.moderation,
        categories=categories,
        refusal=answer.refusal,
        p_refusal=answer.p_refusal,
        raw="\n\n".join(f"[{name}]\n{v.raw}" for name, v in parts.items()) if decoded else None,
        truncated=any(v.truncated for v in parts.values()),
        parts=dict(parts),
        error="; ".join(errors) or None,
        reason=None if level is not None else next((v.reason for v in parts.values() if v.reason), None),
    )
