"""Qwen3Guard-Stream scoring paths side by side: ``python -m benchmarks.bench_stream``.

On a Qwen3-architecture guard with random weights (real 151,936-token vocabulary, CPU-sized layers), for a
~120-token prompt and responses of 64, 256 and 1024 tokens, it times:

(a) the official per-token loop, as the upstream remote code does it: for every response token, re-run the
    whole growing sequence (no KV reuse), apply the heads to every position, round to 2 decimals;
(b) per-token feeding of a KV-cached ``StreamSession`` (one ``feed`` per token);
(c) ``StreamGuard.score``: one batched pass over whole conversations (rendering and tokenizing included);
(d) a bare backbone forward over the same tokens (the floor for any exact method).

(a) and (b) handle one sample at a time, as a live stream does; (c) and (d) run a batch at once. The session's
cost per token is also read at response positions ~64 and ~1024. One torch thread by default: on a small
shared machine, multi-threaded kernels wait on busy cores and timings become erratic. Writes
``benchmarks/results/bench_stream.md`` and ``.json``. A measurement, not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from guard_reward.guards.stream import StreamGuard
from guard_reward.tiny.stream import build_tiny_stream

logger = logging.getLogger("bench_stream")

RESULTS = Path(__file__).resolve().parent / "results"
# Words for English-like filler text (split when used).
VOCABULARY = (
    "the a river stone light quiet garden morning bread window city road teacher music paper green small "
    "because while after before although people water history simple careful build answer question learn "
    "travel winter summer color market bridge letter story friend remember idea number table kitchen evening"
)
MODEL = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=768,
    max_position_embeddings=4096,
)


def text_of(tokenizer, n_tokens: int, seed: int) -> str:
    """English-like text that tokenizes to exactly ``n_tokens`` guard tokens."""
    rng = random.Random(seed)
    vocabulary = VOCABULARY.split()
    words = [rng.choice(vocabulary) for _ in range(n_tokens * 2)]
    ids = tokenizer.encode(" ".join(words), add_special_tokens=False)
    for cut in range(n_tokens, n_tokens + 8):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer.encode(text, add_special_tokens=False)) == n_tokens:
            return text
    raise RuntimeError(f"could not build a {n_tokens}-token text")


def official_loop(guard: StreamGuard, ids: list[int], prompt_len: int) -> float:
    """(a): per response token, a full forward over the whole sequence so far; heads on every position."""
    model = guard.model
    start = time.perf_counter()
    with torch.inference_mode():
        for t in range(prompt_len, len(ids) + 1):  # the prompt call, then one call per response token
            seq = torch.tensor([ids[:t]])
            mask = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]
            hidden = model(input_ids=seq, attention_mask=mask, use_cache=False).last_hidden_state[0]
            risk, cat = model.response_logits(hidden)
            q_risk, q_cat = model.query_logits(hidden)
            probs = risk.float().softmax(-1)
            _ = [round(float(p), 2) for p in probs.max(-1).values.tolist()][-1]
            _ = cat.float().softmax(-1)[-1], q_risk[-1], q_cat[-1]
    return time.perf_counter() - start


def session_feed(
    guard: StreamGuard, prompt: list[dict], response_ids: list[int]
) -> tuple[float, list[float]]:
    """(b): open a session and feed one token at a time; returns total seconds and per-token seconds."""
    per_token = []
    start = time.perf_counter()
    with guard.open_stream(prompt) as session:
        for t in response_ids:
            t0 = time.perf_counter()
            session.feed([t])
            per_token.append(time.perf_counter() - t0)
    return time.perf_counter() - start, per_token


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` runs of each function, interleaved so that a burst of load on a shared machine hits
    them alike (the best run is the one least disturbed)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(values) for name, values in times.items()}


def run(lengths: list[int], batch: int, repeats: int, loop_max: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_stream(Path(tmp) / "guard", guard_inner_size=128, **MODEL)
        guard = StreamGuard.from_pretrained(Path(tmp) / "guard", device="cpu", dtype="float32")
    tok = guard.tokenizer
    prompt_text = text_of(tok, 120, seed=0)
    rows = []
    for n in lengths:
        convs = [
            [
                {"role": "user", "content": text_of(tok, 120, seed=100 + i)},
                {"role": "assistant", "content": text_of(tok, n, seed=1000 * n + i)},
            ]
            for i in range(batch)
        ]
        prompt = [{"role": "user", "content": prompt_text}]
        response = text_of(tok, n, seed=n)
        response_ids = tok.encode(response, add_special_tokens=False)
        full = guard._encode_text([*prompt, {"role": "assistant", "content": response}], "answer")
        prompt_len = full.start

        encoded = [guard._encode_text(c, "answer") for c in convs]
        width = max(len(e.ids) for e in encoded)
        ids = torch.full((batch, width), guard.pad_id)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for b, e in enumerate(encoded):
            ids[b, : len(e.ids)] = torch.tensor(e.ids)
            mask[b, : len(e.ids)] = 1

        def bare(ids=ids, mask=mask):
            with torch.inference_mode():
                guard.model.model(input_ids=ids, attention_mask=mask, use_cache=False)

        guard.score(convs[:1])  # warm-up
        best = best_times({"c": lambda convs=convs: guard.score(convs), "d": bare}, repeats)
        c_time, d_time = best["c"], best["d"]
        # two runs; per position the less disturbed one
        runs = [session_feed(guard, prompt, response_ids) for _ in range(2)]
        b_total = min(r[0] for r in runs)
        per_token = [min(ts) for ts in zip(*(r[1] for r in runs), strict=True)]
        a_time = official_loop(guard, full.ids, prompt_len) if n <= loop_max else None
        row = {
            "response_tokens": n,
            "input_tokens": len(full.ids),
            "a_official_loop_samples_s": None if a_time is None else 1 / a_time,
            "b_session_samples_s": 1 / b_total,
            "c_score_samples_s": batch / c_time,
            "d_backbone_samples_s": batch / d_time,
            "session_ms_per_token_median": 1000 * statistics.median(per_token),
        }
        row["c_over_a"] = (
            None if a_time is None else row["c_score_samples_s"] / row["a_official_loop_samples_s"]
        )
        row["c_over_b"] = row["c_score_samples_s"] / row["b_session_samples_s"]
        row["c_over_d"] = row["c_score_samples_s"] / row["d_backbone_samples_s"]
        row["per_token_ms"] = per_token
        rows.append(row)
        logger.info("done %d tokens: %s", n, {k: v for k, v in row.items() if k != "per_token_ms"})
    return {"rows": rows, "prompt_tokens": prompt_len}


def window_ms(per_token: list[float], center: int, half: int = 16) -> float:
    lo, hi = max(0, center - half), min(len(per_token), center + half)
    return 1000 * statistics.median(per_token[lo:hi])


def report(result: dict, args: argparse.Namespace) -> tuple[str, dict]:
    rows = result["rows"]

    def fmt(x: float | None, spec: str = ".2f") -> str:
        return "—" if x is None else format(x, spec)

    lines = [
        "# Qwen3Guard-Stream scoring: side by side",
        "",
        f"Random-weight Qwen3 guard ({MODEL['num_hidden_layers']} layers, hidden {MODEL['hidden_size']}, "
        f"vocab 151,936), float32, CPU ({torch.get_num_threads()} threads, {platform.machine()}), torch "
        f"{torch.__version__}. Prompt ≈{result['prompt_tokens']} guard tokens incl. template; (c)/(d) batch "
        f"{args.batch}, best of {args.repeats}; (a) one sample, one run; (b) one sample, best of 2 runs.",
        "",
        "| response tokens | (a) official loop | (b) session per token | (c) score() | (d) bare backbone "
        "| (c)/(a) | (c)/(b) | (c)/(d) | session ms/token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['response_tokens']} | {fmt(r['a_official_loop_samples_s'], '.3f')} | "
            f"{fmt(r['b_session_samples_s'])} | {fmt(r['c_score_samples_s'])} | "
            f"{fmt(r['d_backbone_samples_s'])} | {fmt(r['c_over_a'], '.0f')}x | {fmt(r['c_over_b'], '.1f')}x | {fmt(r['c_over_d'], '.2f')}x | "
            f"{r['session_ms_per_token_median']:.2f} |"
        )
    lines.append("")
    lines.append(
        "Throughput in samples/s. Targets: (c) ≥ 100x (a) at 256 tokens, (c) ≥ 10x (b), (c) ≥ 0.9x (d)."
    )
    longest = max(rows, key=lambda r: r["response_tokens"])
    per_token = longest["per_token_ms"]
    summary = {}
    if len(per_token) >= 1024:
        at64, at1024 = window_ms(per_token, 64), window_ms(per_token, 1023)
        summary["session_ms_at_64"], summary["session_ms_at_1024"] = at64, at1024
        summary["session_growth_1024_over_64"] = at1024 / at64
        lines.append(
            f"Session cost per token (median of 32 feeds around the position): {at64:.2f} ms at 64, "
            f"{at1024:.2f} ms at 1024 → {at1024 / at64:.2f}x (target ≤ 1.5x)."
        )
    by_n = {r["response_tokens"]: r for r in rows}
    checks = {
        "c_over_a_at_256 >= 100": by_n.get(256, {}).get("c_over_a"),
        "min c_over_b >= 10": min(r["c_over_b"] for r in rows),
        "min c_over_d >= 0.9": min(r["c_over_d"] for r in rows),
        "session growth <= 1.5": summary.get("session_growth_1024_over_64"),
    }
    lines.append("")
    lines.append("| target | measured |")
    lines.append("|---|---|")
    for k, v in checks.items():
        lines.append(f"| {k} | {fmt(v)} |")
    data = {
        "model": MODEL,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "repeats": args.repeats,
        "rows": [{k: v for k, v in r.items() if k != "per_token_ms"} for r in rows],
        "summary": summary,
        "targets": checks,
    }
    return "\n".join(lines) + "\n", data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, default=8, help="samples per score()/backbone call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-max", type=int, default=1024, help="skip (a) above this response length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    markdown, data = report(run(args.lengths, args.batch, args.repeats, args.loop_max), args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_stream.md").write_text(markdown)
    (args.out / "bench_stream.json").write_text(json.dumps(data, indent=2) + "\n")
    logger.info("\n%s", markdown)


if __name__ == "__main__":
    main()
