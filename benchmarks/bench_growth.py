"""How the cost grows: ``python -m benchmarks.bench_growth``.

1. Time per sample of ``GenGuard.moderate()`` and ``StreamGuard.score()`` against the response length (64 to
   2048 tokens, batches of 4 with distinct ~40-token prompts), with the time per 1,000 input tokens: flat when
   the cost is linear in the tokens, growing where attention's quadratic part starts to count.
2. Time per sample against the batch size (1 to 32, 256-token responses): what batching buys.
3. A streaming session's cost per fed token against its position in the response (up to 2048): the KV cache
   keeps it nearly flat (attention over the cache is the only part that grows), where the official loop's
   per-token cost grows with the whole sequence.

Each point is the better of two timed runs after a warm-up call.
"""

from __future__ import annotations

import logging
import statistics

from benchmarks.bench_stream import session_feed
from benchmarks.common import Setup, part_parser, race, run_part, text_of

logger = logging.getLogger("bench_growth")

LENGTHS = (64, 128, 256, 512, 1024, 2048)
BATCHES = (1, 2, 4, 8, 16, 32)
POSITIONS = (64, 256, 512, 1024, 2048)


def conversations(tok, n: int, length: int, seed: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "user", "content": text_of(tok, 40, seed=seed + i)},
            {"role": "assistant", "content": text_of(tok, length, seed=seed + 1000 + i)},
        ]
        for i in range(n)
    ]


def per_sample_ms(fn, n: int, device: str) -> float:
    return 1000 * min(race({"x": fn}, repeats=2, warmup=False, device=device)["x"]) / n


def run(setup: Setup, lengths=LENGTHS, batches=BATCHES, positions=POSITIONS) -> tuple[str, dict]:
    gen, stream = setup.gen(), setup.stream()
    tok = gen.tokenizer
    warm = conversations(tok, 2, 64, seed=0)
    gen.moderate(warm), stream.score(warm)
    by_length = []
    for n_tok in lengths:
        convs = conversations(tok, 4, n_tok, seed=n_tok)
        tokens = sum(len(gen._encode(c)) for c in convs) / len(convs)
        s_tokens = sum(len(stream._encode_text(c, "answer").ids) for c in convs) / len(convs)
        g = per_sample_ms(lambda convs=convs: gen.moderate(convs), len(convs), setup.device)
        s = per_sample_ms(lambda convs=convs: stream.score(convs), len(convs), setup.device)
        by_length.append(
            {
                "response_tokens": n_tok,
                "gen_input_tokens": tokens,
                "stream_input_tokens": s_tokens,
                "gen_ms": g,
                "stream_ms": s,
            }
        )
        logger.info("growth length %d: gen %.1f ms, stream %.1f ms per sample", n_tok, g, s)
    by_batch = []
    pool = conversations(tok, max(batches), 256, seed=7)
    for b in batches:
        convs = pool[:b]
        g = per_sample_ms(lambda convs=convs: gen.moderate(convs), b, setup.device)
        s = per_sample_ms(lambda convs=convs: stream.score(convs), b, setup.device)
        by_batch.append({"batch": b, "gen_ms": g, "stream_ms": s})
        logger.info("growth batch %d: gen %.1f ms, stream %.1f ms per sample", b, g, s)
    prompt = [{"role": "user", "content": text_of(tok, 40, seed=3)}]
    response_ids = tok.encode(text_of(tok, max(positions), seed=4), add_special_tokens=False)
    runs = [session_feed(stream, prompt, response_ids)[1] for _ in range(2)]
    per_token = [min(ts) for ts in zip(*runs)]
    session = []
    for p in positions:
        lo, hi = max(0, p - 16), min(len(per_token), p + 16)
        session.append({"position": p, "ms_per_token": 1000 * statistics.median(per_token[lo:hi])})
    base = session[0]["ms_per_token"]
    lines = [
        f"{setup.describe()}.",
        "",
        "**Time per sample against the response length** (batches of 4; ms per 1k tokens = per-sample time / "
        "input tokens):",
        "",
        "| response tokens | Gen input tokens | Gen moderate() ms/sample | Gen ms per 1k tokens | "
        "Stream score() ms/sample | Stream ms per 1k tokens |",
        "|---|---|---|---|---|---|",
    ]
    for r in by_length:
        lines.append(
            f"| {r['response_tokens']} | {r['gen_input_tokens']:.0f} | {r['gen_ms']:.1f} | "
            f"{1000 * r['gen_ms'] / r['gen_input_tokens']:.1f} | {r['stream_ms']:.1f} | "
            f"{1000 * r['stream_ms'] / r['stream_input_tokens']:.1f} |"
        )
    lines += [
        "",
        "**Time per sample against the batch size** (256-token responses):",
        "",
        "| batch | Gen moderate() ms/sample | Stream score() ms/sample |",
        "|---|---|---|",
        *(f"| {r['batch']} | {r['gen_ms']:.1f} | {r['stream_ms']:.1f} |" for r in by_batch),
        "",
        "**Streaming session: cost per fed token against its position** (median of the 32 feeds around it):",
        "",
        "| position | ms/token | relative to position 64 |",
        "|---|---|---|",
        *(
            f"| {r['position']} | {r['ms_per_token']:.2f} | {r['ms_per_token'] / base:.2f}x |"
            for r in session
        ),
    ]
    payload = {"size": setup.size, "by_length": by_length, "by_batch": by_batch, "session": session}
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    run_part(part_parser(__doc__).parse_args(argv), "growth", "Cost growth", run)


if __name__ == "__main__":
    main()
