"""Qwen3Guard-Stream scoring paths side by side: ``python -m benchmarks.bench_stream``.

For a ~120-token prompt and responses of 64, 256 and 1024 tokens, samples/s of:

(a) the official per-token loop, as the upstream remote code does it: for every response token, re-run the
    whole growing sequence (no KV reuse), apply the heads to every position, round to 2 decimals;
(b) per-token feeding of a KV-cached ``StreamSession`` (one ``feed`` per token);
(c) ``StreamGuard.score``: one batched pass over whole conversations (rendering and tokenizing included);
(d) a bare backbone forward over the same tokens (the floor for any exact method).

(a) and (b) handle one sample at a time, as a live stream does; (c) and (d) run a batch of conversations with
distinct prompts (nothing worth sharing: see ``bench_groups`` for shared prompts). At 1024 tokens (a) is
estimated from every 8th step times 8 (its steps grow linearly, so the estimate is unbiased), marked ``~``.
(c) and (d) run round by round (:func:`benchmarks.common.race`); (b) is the better of two runs, (a) one run.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from benchmarks.common import (
    Setup,
    bf16_peak,
    fmt,
    fmt_ratio,
    forward_flops,
    part_parser,
    race,
    ratio,
    run_part,
    text_of,
)

logger = logging.getLogger("bench_stream")

PROMPT_TOKENS = 120


def official_loop(guard, ids: list[int], prompt_len: int, every: int = 1) -> float:
    """(a): per response token, a full forward over the whole sequence so far; heads on every position.
    With ``every > 1`` only every ``every``-th step runs and the time is scaled up by ``every``."""
    model, device = guard.model, guard.device
    start = time.perf_counter()
    with torch.inference_mode():
        for t in range(prompt_len, len(ids) + 1, every):  # the prompt call, then one call per response token
            seq = torch.tensor([ids[:t]], device=device)
            mask = torch.tril(torch.ones(t, t, dtype=torch.bool, device=device))[None, None]
            hidden = model(input_ids=seq, attention_mask=mask, use_cache=False).last_hidden_state[0]
            risk, cat = model.response_logits(hidden)
            q_risk, q_cat = model.query_logits(hidden)
            probs = risk.float().softmax(-1)
            _ = [round(float(p), 2) for p in probs.max(-1).values.tolist()][-1]
            _ = cat.float().softmax(-1)[-1], q_risk[-1], q_cat[-1]
    return (time.perf_counter() - start) * every


def session_feed(guard, prompt: list[dict], response_ids: list[int]) -> tuple[float, list[float]]:
    """(b): open a session and feed one token at a time; total seconds and seconds per token."""
    per_token = []
    start = time.perf_counter()
    with guard.open_stream(prompt) as session:
        for t in response_ids:
            t0 = time.perf_counter()
            session.feed([t])
            per_token.append(time.perf_counter() - t0)
    return time.perf_counter() - start, per_token


def bare_inputs(guard, convs) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [guard._encode_text(c, "answer") for c in convs]
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(convs), width), guard.pad_id)
    mask = torch.zeros((len(convs), width), dtype=torch.long)
    for b, e in enumerate(encoded):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        mask[b, : len(e.ids)] = 1
    return ids.to(guard.device), mask.to(guard.device)


def run(
    setup: Setup,
    lengths: tuple[int, ...] = (64, 256, 1024),
    batch: int = 8,
    repeats: int = 3,
    loop_full_max: int = 256,
) -> tuple[str, dict]:
    guard = setup.stream()
    tok = guard.tokenizer
    prompt = [{"role": "user", "content": text_of(tok, PROMPT_TOKENS, seed=0)}]
    rows = []
    for n in lengths:
        convs = [
            [
                {"role": "user", "content": text_of(tok, PROMPT_TOKENS, seed=100 + i)},
                {"role": "assistant", "content": text_of(tok, n, seed=1000 * n + i)},
            ]
            for i in range(batch)
        ]
        response = text_of(tok, n, seed=n)
        response_ids = tok.encode(response, add_special_tokens=False)
        full = guard._encode_text([*prompt, {"role": "assistant", "content": response}], "answer")
        ids, mask = bare_inputs(guard, convs)

        def bare(ids=ids, mask=mask):
            with torch.inference_mode():
                guard.model(input_ids=ids, attention_mask=mask, use_cache=False)

        times = race(
            {"c": lambda convs=convs: guard.score(convs), "d": bare}, repeats=repeats, device=setup.device
        )
        runs = [session_feed(guard, prompt, response_ids) for _ in range(2)]
        b_total = min(r[0] for r in runs)
        every = 1 if n <= loop_full_max else 8
        a_time = official_loop(guard, full.ids, full.start, every)
        a_rate = 1 / a_time
        c_rate, d_rate = batch / min(times["c"]), batch / min(times["d"])
        row_tokens = mask.sum(dim=1).tolist()
        flops = forward_flops(setup.size, row_tokens)
        row = {
            "response_tokens": n,
            "input_tokens": len(full.ids),
            "a_official_loop_samples_s": a_rate,
            "a_estimated": every > 1,
            "b_session_samples_s": 1 / b_total,
            "c_score_samples_s": c_rate,
            "d_backbone_samples_s": d_rate,
            "c_over_a": {"best": c_rate / a_rate, "lo": c_rate / a_rate, "hi": c_rate / a_rate},
            "c_over_b": {"best": c_rate * b_total, "lo": c_rate * b_total, "hi": c_rate * b_total},
            "c_over_d": ratio(times["d"], times["c"]),
            "session_ms_per_token_median": 1000
            * statistics.median(min(ts) for ts in zip(*(r[1] for r in runs))),
            "tokens_per_s": {"c": sum(row_tokens) / min(times["c"]), "d": sum(row_tokens) / min(times["d"])},
            "model_tflops": {"c": flops / min(times["c"]) / 1e12, "d": flops / min(times["d"]) / 1e12},
            "seconds": times,
        }
        rows.append(row)
        logger.info(
            "stream %d tokens: a %.3f b %.2f c %.2f d %.2f /s", n, a_rate, 1 / b_total, c_rate, d_rate
        )
    by_n = {r["response_tokens"]: r for r in rows}
    targets = {
        "c/a >= 100 at 256 tokens (score() vs official loop)": by_n.get(256, {})
        .get("c_over_a", {})
        .get("best"),
        "c/d >= 0.9 (score() vs bare backbone), worst length": min(r["c_over_d"]["best"] for r in rows),
    }
    lines = [
        f"{setup.describe()}; prompt ≈{full.start} guard tokens incl. template; (c)/(d) batch {batch}, "
        f"{repeats} rounds; (a) one sample, one run; (b) one sample, best of 2 runs.",
        "",
        "| response tokens | (a) official loop | (b) session per token | (c) score() | (d) bare backbone "
        "| (c)/(a) | (c)/(b) | (c)/(d) | session ms/token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        approx = "~" if r["a_estimated"] else ""
        lines.append(
            f"| {r['response_tokens']} | {approx}{fmt(r['a_official_loop_samples_s'], '.3f')} | "
            f"{fmt(r['b_session_samples_s'])} | {fmt(r['c_score_samples_s'])} | {fmt(r['d_backbone_samples_s'])} "
            f"| {approx}{fmt_ratio(r['c_over_a'], '.0f')} | {fmt_ratio(r['c_over_b'], '.1f')} | "
            f"{fmt_ratio(r['c_over_d'])} | {r['session_ms_per_token_median']:.2f} |"
        )
    lines += [
        "",
        "Samples/s; ratios best-to-best, (lowest–highest) over paired rounds where there are several.",
        "",
    ]
    peak = bf16_peak(setup.device)
    for r in rows:
        tps, tf = r["tokens_per_s"], r["model_tflops"]
        line = (
            f"{r['response_tokens']} tokens: score() {tps['c']:.0f} tokens/s, {tf['c'] * 1e3:.1f} model GFLOP/s; "
            f"bare backbone {tps['d']:.0f} tokens/s, {tf['d'] * 1e3:.1f} GFLOP/s"
        )
        if peak:
            line += f" ({100 * tf['c'] / peak:.1f}% / {100 * tf['d'] / peak:.1f}% of the {peak:.0f} TFLOP/s bf16 peak)"
        lines.append(line + ".")
    payload = {"size": setup.size, "dtype": setup.dtype, "batch": batch, "rows": rows, "targets": targets}
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    parser = part_parser(__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=8, help="samples per score()/backbone call")
    args = parser.parse_args(argv)
    title = "Qwen3Guard-Stream: scoring paths side by side"
    run_part(args, "stream", title, lambda setup: run(setup, tuple(args.lengths), args.batch))


if __name__ == "__main__":
    main()
