"""The Stream answer's wire alone: encode + decode of N risks of T tokens (9 categories), JSON lists of floats
(``risk_to_json`` + ``json.dumps``, ``json.loads`` + ``risk_from_json``) against the binary form
(``risks_to_bytes`` / ``risks_from_bytes``, safetensors), side by side in one run, no guard and no HTTP.

``python -m benchmarks.bench_wire [--samples 64] [--tokens 1024] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from guard_reward.types import TokenRisk
from guard_reward.wire import TOKEN_FIELDS, risk_from_json, risk_to_json, risks_from_bytes, risks_to_bytes


def risks(samples: int, tokens: int, categories: int = 9) -> list[TokenRisk]:
    """``samples`` risks of ``tokens`` tokens with float32 probabilities of full precision (as a guard's)."""
    g = torch.Generator().manual_seed(0)
    names = tuple(f"category {i}" for i in range(categories))
    out = []
    for _ in range(samples):
        levels = torch.rand(tokens, 3, generator=g).softmax(-1)
        out.append(
            TokenRisk(
                token_ids=torch.randint(0, 151_000, (tokens,), generator=g),
                offsets=torch.arange(2 * tokens).reshape(tokens, 2) * 3,
                p_safe=levels[:, 0].clone(),
                p_unsafe=levels[:, 1].clone(),
                p_controversial=levels[:, 2].clone(),
                category_probs=torch.rand(tokens, categories, generator=g).softmax(-1),
                category_names=names,
                query_probs={"Safe": 0.9, "Controversial": 0.05, "Unsafe": 0.05},
                span=(0, tokens),
            )
        )
    return out


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(samples: int = 64, tokens: int = 1024, repeats: int = 3) -> dict[str, float]:
    """Seconds (best of ``repeats``) and bytes per token of each form; the decoded tensors are checked equal."""
    data = risks(samples, tokens)
    n = samples * tokens
    j_enc, body = _best(lambda: json.dumps({"risks": [risk_to_json(r) for r in data]}), repeats)
    j_dec, j_back = _best(lambda: [risk_from_json(d) for d in json.loads(body)["risks"]], repeats)
    b_enc, blob = _best(lambda: risks_to_bytes(data), repeats)
    b_dec, b_back = _best(lambda: risks_from_bytes(blob), repeats)
    for a, b in zip(j_back, b_back):  # the same bits either way
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in TOKEN_FIELDS)
    return {
        "json_encode_s": j_enc, "json_decode_s": j_dec, "json_bytes_per_token": len(body.encode()) / n,
        "binary_encode_s": b_enc, "binary_decode_s": b_dec, "binary_bytes_per_token": len(blob) / n,
        "json_tokens_per_s": n / (j_enc + j_dec), "binary_tokens_per_s": n / (b_enc + b_dec),
    }  # fmt: skip


def suite_part(setup: object = None) -> tuple[str, dict[str, float]]:
    """The suite's ``wire`` part (``python -m benchmarks``): 64 x 1,024 tokens, its table and figures.

    The wire costs the same on every device, so ``setup`` (the suite's size and device) is not read.
    """
    r = run()
    rows = [
        f"| {form} | {r[f'{form}_encode_s']:.3f} | {r[f'{form}_decode_s']:.3f} | "
        f"{r[f'{form}_tokens_per_s']:,.0f} | {r[f'{form}_bytes_per_token']:.1f} |"
        for form in ("json", "binary")
    ]
    head = "| form | encode s | decode s | tokens/s | bytes/token |\n|---|---|---|---|---|"
    return "\n".join([head, *rows]), r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    r = run(a.samples, a.tokens, a.repeats)
    print(f"{a.samples} x {a.tokens} tokens, 9 categories (best of {a.repeats})")
    for form in ("json", "binary"):
        print(f"{form:6s}: encode {r[f'{form}_encode_s']:.3f} s + decode {r[f'{form}_decode_s']:.3f} s = "
              f"{r[f'{form}_tokens_per_s']:,.0f} tokens/s, {r[f'{form}_bytes_per_token']:.1f} bytes/token")  # fmt: skip
    print(f"binary / json: {r['binary_tokens_per_s'] / r['json_tokens_per_s']:.0f}x tokens/s, "
          f"{r['json_bytes_per_token'] / r['binary_bytes_per_token']:.1f}x fewer bytes")  # fmt: skip


if __name__ == "__main__":
    main()
