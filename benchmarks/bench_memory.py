"""Peak memory while scoring: ``python -m benchmarks.bench_memory``.

Rows: ``GenGuard.moderate()`` and ``StreamGuard.score()`` on 1, 100 and 1000 conversations in one call (default
token budget), then 100 conversations under several ``token_budget`` values. Columns: the peak of tensor memory
allocated during the call, the peak of Python objects allocated during it (token ids, plans, verdicts), and the
size of what the call returns. Memory must not grow with the number of conversations beyond the returned results
and the inputs' token ids: micro-batches are bounded by the token budget and freed one after the other.

How it is measured. On a GPU: the CUDA allocator's peak above what was allocated before the call. On a CPU there
is no allocator statistic, and the peak resident set size mostly measures glibc's caching (in trials here it
moved by ±35 MiB between identical runs), so tensor memory is counted exactly instead: a dispatch mode sees every
tensor an operator returns and adds its storage until the last tensor using it is gone (temporaries inside one
fused kernel, such as attention's tiles, are not seen). Python objects are counted by ``tracemalloc``. Both
counts are deterministic: these tables do not move with the machine's load.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
import tracemalloc
import weakref
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.common import Setup, part_parser, run_part, sentence_words

logger = logging.getLogger("bench_memory")

COUNTS = (1, 100, 1000)
BUDGETS = (4096, 16384, 65536)
DEFAULT_BUDGET = 16384
MIB = 2**20


class LiveTensors(TorchDispatchMode):
    """Bytes of tensor storage alive, created by operators while the mode is on; ``peak`` is the most at once."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if not key:
                continue
            if key not in self.refs:
                self.refs[key] = 0
                self.size[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)  # a storage dies with the last tensor viewing it
        return out


def conversations(kind: str, n: int) -> list[list[dict[str, str]]]:
    """Short two-turn conversations (Gen: ~300 tokens with its template; Stream: ~60-token responses)."""
    rng = random.Random(n)
    words = (10, 30) if kind == "gen" else (40, 60)
    return [
        [
            {"role": "user", "content": sentence_words(rng, rng.randint(8, 20))},
            {"role": "assistant", "content": sentence_words(rng, rng.randint(*words))},
        ]
        for _ in range(n)
    ]


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj``: tensor storages (each once) plus Python objects, through containers/dataclasses."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return size
        seen.add(storage.data_ptr())
        return size + storage.nbytes()
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return size + sum(deep_size(x, seen) for x in obj)
    if is_dataclass(obj):
        return size + sum(deep_size(getattr(obj, f.name), seen) for f in fields(obj))
    return size


def measure(score, convs, device: str) -> dict[str, float]:
    """Score ``convs`` in one call; tensor and Python peaks during it, the results' size, seconds."""
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        results = score(convs)
        torch.cuda.synchronize()
        tensor_peak = torch.cuda.max_memory_allocated() - before
    else:
        with LiveTensors() as mode:
            results = score(convs)
        tensor_peak = mode.peak
    seconds = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "tensor_peak_mb": tensor_peak / MIB,
        "python_peak_mb": python_peak / MIB,
        "results_mb": deep_size(results) / MIB,
        "seconds": seconds,
    }


def run(setup: Setup, counts=COUNTS, budgets=BUDGETS) -> tuple[str, dict]:
    by_count: dict[str, list[dict]] = {}
    by_budget: dict[str, list[dict]] = {}
    for kind in ("gen", "stream"):
        by_count[kind], by_budget[kind] = [], []
        for budget in budgets:
            guard = setup.gen(token_budget=budget) if kind == "gen" else setup.stream(token_budget=budget)
            score = guard.moderate if kind == "gen" else guard.score
            score(conversations(kind, 2))  # warm-up
            for count in counts if budget == DEFAULT_BUDGET else (100,):
                r = measure(score, conversations(kind, count), setup.device)
                logger.info("memory %s x%d budget %d: %s", kind, count, budget, r)
                if budget == DEFAULT_BUDGET:
                    by_count[kind].append({"count": count, **r})
                if count == 100:
                    by_budget[kind].append({"token_budget": budget, **r})
    where = "CUDA allocator" if setup.device.startswith("cuda") else "tensors counted by operator"
    lines = [
        f"{setup.describe()}; MiB allocated during the call ({where}; Python objects by tracemalloc).",
        "",
        "**Against the number of conversations** (one call, token budget 16384):",
        "",
        "| guard | conversations | tensor peak MiB | Python peak MiB | results MiB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for kind, rows in by_count.items():
        for r in rows:
            lines.append(
                f"| {kind} | {r['count']} | {r['tensor_peak_mb']:.1f} | {r['python_peak_mb']:.1f} | "
                f"{r['results_mb']:.2f} | {r['seconds']:.1f} |"
            )
    lines += [
        "",
        "**The token-budget knob** (100 conversations; padded tokens per micro-batch, at most 64 rows):",
        "",
        "| guard | token_budget | tensor peak MiB | seconds |",
        "|---|---|---|---|",
    ]
    for kind, rows in by_budget.items():
        for r in rows:
            lines.append(f"| {kind} | {r['token_budget']} | {r['tensor_peak_mb']:.1f} | {r['seconds']:.1f} |")
    growth = {}
    for kind, rows in by_count.items():
        peaks = {r["count"]: r["tensor_peak_mb"] for r in rows}
        if 100 in peaks and max(peaks) > 100:
            growth[kind] = peaks[max(peaks)] / peaks[100]
    if growth:
        lines += [
            "",
            "Tensor peak at the largest count over the peak at 100: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in growth.items())
            + " (timings here include the counting and are not speed figures).",
        ]
    payload = {"size": setup.size, "by_count": by_count, "by_budget": by_budget, "tensor_peak_growth": growth}
    return "\n".join(lines), payload


def main(argv: list[str] | None = None) -> None:
    run_part(part_parser(__doc__).parse_args(argv), "memory", "Peak memory", run)


if __name__ == "__main__":
    main()
