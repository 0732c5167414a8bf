"""Qwen3Guard-Gen judging paths side by side: ``python -m benchmarks.bench_gen``.

For prompt-only and prompt+response conversations (distinct prompts), samples/s of:

(a) the official README usage, one conversation at a time: chat template, tokenizer, ``generate``, decode, regex;
(b) ``GenGuard.moderate(decode=True)``: exact label probabilities + greedy verdict lines, batched;
(c) ``GenGuard.moderate()``: exact label probabilities, one forward pass each, batched, shared prefixes once
    (the ~200-270-token instruction header every input opens with);
(c0) the same with ``share_prefix=False``: every input run in full;
(d) a bare batched forward over the same pre-tokenized inputs (left-padded, same token budget) with
    last-position logits only: the floor for any method that runs every input in full.

A random-weight model never ends its verdict, so (a) and (b) both decode exactly as many tokens as a real verdict
has (``Safety: Unsafe`` / ``Categories: Violent`` [/ ``Refusal: No``] + end of turn); the official usage's
``max_new_tokens=128`` is an upper bound a real model does not reach. (a) runs on the first few conversations
only (it is slow); rates are per sample, all paths run round by round in one process (see
:func:`benchmarks.common.race`), and each ratio shows best-to-best with the spread over paired rounds.
"""

from __future__ import annotations

import logging
import random
import re

import torch

from benchmarks.common import (
    Setup,
    bf16_peak,
    fmt_ratio,
    forward_flops,
    part_parser,
    race,
    ratio,
    run_part,
    sentence_words,
)
from guard_reward.guards.batching import token_budget_batches
from guard_reward.guards.parsing import PROMPT_CATEGORIES

logger = logging.getLogger("bench_gen")

LABEL = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
CATEGORY = re.compile("|".join(re.escape(c) for c in (*PROMPT_CATEGORIES, "None")))


def make_conversations(kind: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        conv = [{"role": "user", "content": sentence_words(rng, rng.randint(20, 60))}]
        if kind == "prompt+response":
            conv.append({"role": "assistant", "content": sentence_words(rng, rng.randint(40, 120))})
        convs.append(conv)
    return convs


def official_usage(guard, convs, new_tokens: int) -> None:
    tok, model = guard.tokenizer, guard.model
    for conv in convs:
        text = tok.apply_chat_template(conv, tokenize=False)
        inputs = tok([text], return_tensors="pt").to(guard.device)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        content = tok.decode(out[0][inputs.input_ids.shape[1] :], skip_special_tokens=True)
        LABEL.search(content)
        CATEGORY.findall(content)


def bare_forward(guard, token_lists: list[list[int]]) -> None:
    """Left-padded micro-batches under the same token budget, last-position logits only."""
    lengths = [len(t) for t in token_lists]
    for batch in token_budget_batches(lengths, guard.token_budget, guard.max_batch_size):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), guard.pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - lengths[i] :] = torch.tensor(token_lists[i])
            mask[row, width - lengths[i] :] = 1
        with torch.inference_mode():
            guard.model(
                input_ids=ids.to(guard.device), attention_mask=mask.to(guard.device), logits_to_keep=1
            )


def run(setup: Setup, n: int = 16, n_official: int = 4, repeats: int = 3) -> tuple[str, dict]:
    guard, plain = setup.gen(), setup.gen(share_prefix=False)
    rows, results = [], {}
    for kind in ("prompt", "prompt+response"):
        convs = make_conversations(kind, n)
        verdict = "Safety: Unsafe\nCategories: Violent" + ("\nRefusal: No" if kind != "prompt" else "")
        new_tokens = len(guard.tokenizer.encode(verdict, add_special_tokens=False)) + 1  # + end of turn
        guard.max_new_tokens = new_tokens
        tokens = [guard._encode(c) + list(guard.tree.prefix_ids) for c in convs]
        official = convs[:n_official]
        official_usage(guard, official[:1], new_tokens)  # warm-up of the generate path
        times = race(
            {
                "a_official": lambda o=official, k=new_tokens: official_usage(guard, o, k),
                "b_decode": lambda c=convs: guard.moderate(c, decode=True),
                "c_moderate": lambda c=convs: guard.moderate(c),
                "c0_no_sharing": lambda c=convs: plain.moderate(c),
                "d_bare_forward": lambda t=tokens: bare_forward(guard, t),
            },
            repeats=repeats,
            warmup=False,
            device=setup.device,
        )
        counts = {k: (n_official if k == "a_official" else n) for k in times}
        rate = {k: counts[k] / min(t) for k, t in times.items()}
        scale = n / n_official  # (a) judged fewer conversations per round
        r = {
            "c/a": ratio(times["a_official"], times["c_moderate"], scale),
            "b/a": ratio(times["a_official"], times["b_decode"], scale),
            "c/d": ratio(times["d_bare_forward"], times["c_moderate"]),
            "c0/d": ratio(times["d_bare_forward"], times["c0_no_sharing"]),
        }
        avg_tokens = sum(map(len, tokens)) / n
        flops = forward_flops(setup.size, [len(t) for t in tokens], vocab_positions=n)
        total = sum(map(len, tokens))
        results[kind] = {
            "seconds": times,
            "samples_per_s": rate,
            "tokens_per_s": {k: total / min(times[k]) for k in ("c_moderate", "d_bare_forward")},
            "model_tflops": {k: flops / min(times[k]) / 1e12 for k in ("c_moderate", "d_bare_forward")},
            "avg_input_tokens": avg_tokens,
            "ratios": r,
        }
        rows.append(
            f"| {kind} | {avg_tokens:.0f} | {rate['a_official']:.2f} | {rate['b_decode']:.2f} | "
            f"{rate['c_moderate']:.2f} | {rate['c0_no_sharing']:.2f} | {rate['d_bare_forward']:.2f} | "
            f"{fmt_ratio(r['c/a'], '.1f')} | {fmt_ratio(r['b/a'], '.1f')} | {fmt_ratio(r['c/d'])} | "
            f"{fmt_ratio(r['c0/d'])} |"
        )
        logger.info("gen %s: %s", kind, {k: round(v, 3) for k, v in rate.items()})
    peak = bf16_peak(setup.device)
    targets = {
        "c/a >= 4 (moderate() vs official usage)": min(results[k]["ratios"]["c/a"]["best"] for k in results),
        "c/d >= 0.9 (moderate() vs bare forward)": min(results[k]["ratios"]["c/d"]["best"] for k in results),
        "c0/d >= 0.9 (without prefix sharing)": min(results[k]["ratios"]["c0/d"]["best"] for k in results),
    }
    lines = [
        f"{setup.describe()}; {n} conversations per kind ((a): the first {n_official}); verdicts of "
        f"{new_tokens} tokens decoded by (a) and (b); {repeats} rounds.",
        "",
        "| inputs | avg tokens | (a) official samples/s | (b) decode=True | (c) moderate() | (c0) no sharing | "
        "(d) bare forward | (c)/(a) | (b)/(a) | (c)/(d) | (c0)/(d) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Ratios: best round against best round, (lowest–highest) over paired rounds.",
    ]
    lines.append(
        "Model FLOPs: the FLOPs a plain forward over every input token needs (prefix sharing runs fewer, so "
        "(c) can exceed the hardware's rate)."
    )
    for kind, res in results.items():
        tps, tf = res["tokens_per_s"], res["model_tflops"]
        line = (
            f"{kind}: moderate() {tps['c_moderate']:.0f} tokens/s, {tf['c_moderate'] * 1e3:.1f} model GFLOP/s; "
            f"bare forward {tps['d_bare_forward']:.0f} tokens/s, {tf['d_bare_forward'] * 1e3:.1f} GFLOP/s"
        )
        if peak:
            line += (
                f" ({100 * tf['c_moderate'] / peak:.1f}% / {100 * tf['d_bare_forward'] / peak:.1f}% of the "
                f"{peak:.0f} TFLOP/s bf16 peak)"
            )
        lines.append(line + ".")
    payload = {"size": setup.size, "dtype": setup.dtype, "n": n, "n_official": n_official, "results": results}
    payload["targets"] = targets
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    parser = part_parser(__doc__)
    parser.add_argument("-n", type=int, default=16, help="conversations per kind")
    args = parser.parse_args(argv)
    logging.getLogger("guard_reward.guards.gen").setLevel(
        logging.ERROR
    )  # random weights: no parseable verdict
    run_part(args, "gen", "Qwen3Guard-Gen: judging paths side by side", lambda setup: run(setup, n=args.n))


if __name__ == "__main__":
    main()
