"""GRPO groups: G completions of one prompt, with and without shared-prefix KV reuse: ``python -m
benchmarks.bench_groups``.

A GRPO batch holds G completions of each prompt. Both guards can run a prefix shared by several inputs of a
micro-batch once and continue every input from a copy of its KV cache (``share_prefix``, see
:mod:`guard_reward.guards.prefix_sharing`): for Qwen3Guard-Gen the ~200-270-token instruction header plus the
prompt, for Qwen3Guard-Stream the prompt. Per G, samples/s of:

* ``on``: the guard as shipped (``share_prefix=True``; a micro-batch is shared when that cuts its padded tokens
  by 1.2x or more);
* ``off``: ``share_prefix=False``, every input run in full;
* ``bare``: one bare forward over all the inputs' tokens (no heads, no sharing): what scoring the batch would
  cost if the guard were nothing but one forward pass.

Extra rows: four prompts x 8 completions in one call (a realistic GRPO batch), and for Stream 1024-token
responses, where the prompt is too small a share of the tokens and the guard does not share (``on`` = ``off``).
Rounds alternate the paths (:func:`benchmarks.common.race`); ratios show best-to-best and the spread.
"""

from __future__ import annotations

import logging
import random

import torch

from benchmarks.bench_gen import bare_forward
from benchmarks.bench_stream import bare_inputs
from benchmarks.common import (
    Setup,
    fmt_ratio,
    part_parser,
    race,
    ratio,
    run_part,
    sentence_words,
    text_of,
)

logger = logging.getLogger("bench_groups")

GROUPS = (4, 8, 16)
TARGET = 1.2


def gen_batch(n_prompts: int, g: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    convs = []
    for _ in range(n_prompts):
        prompt = sentence_words(rng, 60)
        convs += [
            [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": sentence_words(rng, rng.randint(40, 120))},
            ]
            for _ in range(g)
        ]
    return convs


def stream_batch(tok, n_prompts: int, g: int, response_tokens: int, seed: int) -> list[list[dict[str, str]]]:
    convs = []
    for p in range(n_prompts):
        prompt = text_of(tok, 120, seed=seed + p)
        convs += [
            [
                {"role": "user", "content": prompt},
                {
                    "role": "assistant",
                    "content": text_of(tok, response_tokens, seed=seed + 1000 * (p + 1) + i),
                },
            ]
            for i in range(g)
        ]
    return convs


def compare(on, off, bare, n: int, repeats: int, device: str, warmup: bool) -> dict:
    times = race({"on": on, "off": off, "bare": bare}, repeats=repeats, warmup=warmup, device=device)
    return {
        "samples_per_s": {k: n / min(t) for k, t in times.items()},
        "on_over_off": ratio(times["off"], times["on"]),
        "on_over_bare": ratio(times["bare"], times["on"]),
        "seconds": times,
    }


def run(setup: Setup, groups=GROUPS, repeats: int = 3) -> tuple[str, dict]:
    gen_on, gen_off = setup.gen(), setup.gen(share_prefix=False)
    st_on, st_off = setup.stream(), setup.stream(share_prefix=False)
    cases = []
    for g in groups:
        cases.append(("gen", f"1 prompt x {g}", gen_batch(1, g, seed=g)))
    cases.append(("gen", "4 prompts x 8", gen_batch(4, 8, seed=99)))
    for g in groups:
        cases.append(
            ("stream", f"1 prompt x {g}, 256-token responses", stream_batch(st_on.tokenizer, 1, g, 256, g))
        )
    cases.append(
        ("stream", "4 prompts x 8, 256-token responses", stream_batch(st_on.tokenizer, 4, 8, 256, 99))
    )
    cases.append(
        ("stream", "1 prompt x 8, 1024-token responses", stream_batch(st_on.tokenizer, 1, 8, 1024, 7))
    )
    rows = []
    warm: set[str] = set()  # one warm-up round per guard: the first case of each
    for kind, label, convs in cases:
        warmup = kind not in warm
        warm.add(kind)
        if kind == "gen":
            tokens = [gen_on._encode(c) + list(gen_on.tree.prefix_ids) for c in convs]
            r = compare(
                lambda c=convs: gen_on.moderate(c),
                lambda c=convs: gen_off.moderate(c),
                lambda t=tokens: bare_forward(gen_on, t),
                len(convs),
                repeats,
                setup.device,
                warmup,
            )
        else:
            ids, mask = bare_inputs(st_on, convs)

            def bare(ids=ids, mask=mask):
                with torch.inference_mode():
                    st_on.model(input_ids=ids, attention_mask=mask, use_cache=False)

            r = compare(
                lambda c=convs: st_on.score(c),
                lambda c=convs: st_off.score(c),
                bare,
                len(convs),
                repeats,
                setup.device,
                warmup,
            )
        rows.append({"guard": kind, "case": label, **r})
        logger.info("groups %s %s: %s", kind, label, {k: round(v, 2) for k, v in r["samples_per_s"].items()})
    decision = {}
    for kind in ("gen", "stream"):
        at_g = [
            r
            for r in rows
            if r["guard"] == kind and r["case"].startswith("1 prompt x") and "1024" not in r["case"]
        ]
        worst = min(r["on_over_off"]["best"] for r in at_g)
        decision[kind] = {"worst_on_over_off_at_G": worst, "wins": worst >= TARGET}
    lines = [
        f"{setup.describe()}; Gen prompts ≈75 tokens, responses 50-150; Stream prompts 120 tokens; "
        f"{repeats} rounds.",
        "",
        "| guard | batch | on samples/s | off samples/s | bare forward samples/s | on/off | on/bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["samples_per_s"]
        lines.append(
            f"| {r['guard']} | {r['case']} | {s['on']:.2f} | {s['off']:.2f} | {s['bare']:.2f} | "
            f"{fmt_ratio(r['on_over_off'])} | {fmt_ratio(r['on_over_bare'])} |"
        )
    lines += ["", "Ratios: best round against best round, (lowest–highest) over paired rounds.", ""]
    for kind, d in decision.items():
        verdict = "wins" if d["wins"] else "does not win"
        lines.append(
            f"- {kind}: sharing {verdict} {TARGET}x at every G in {list(groups)} (worst best-to-best "
            f"on/off {d['worst_on_over_off_at_G']:.2f}x)."
        )
    payload = {"size": setup.size, "rows": rows, "decision": decision, "target": TARGET}
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    run_part(part_parser(__doc__).parse_args(argv), "groups", "GRPO groups: shared prefixes", run)


if __name__ == "__main__":
    main()
