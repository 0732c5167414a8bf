"""Helpers shared by the benchmarks: model sizes and builders, synthetic text, side-by-side timing with its
noise, rough FLOP counts, and result files."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# Qwen3-architecture guards with random weights and the real 151,936-token vocabulary.
CPU_SIZE = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=768,
    max_position_embeddings=4096,
)
GPU_SIZE = dict(  # Qwen3Guard-Gen-0.6B / -Stream-0.6B's shape
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    max_position_embeddings=32768,
)
# Dense bf16 matmul peaks (TFLOP/s) of GPUs the GPU configuration may meet, for model FLOPs utilisation.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

_WORDS = [
    "the",
    "a",
    "river",
    "stone",
    "light",
    "quiet",
    "garden",
    "morning",
    "bread",
    "window",
    "city",
    "road",
    "teacher",
    "music",
    "paper",
    "green",
    "small",
    "because",
    "while",
    "after",
    "before",
    "under",
    "over",
    "table",
    "market",
    "letter",
    "winter",
    "summer",
    "village",
    "bridge",
    "question",
    "answer",
    "simple",
    "careful",
    "history",
    "station",
    "kitchen",
    "evening",
    "forest",
    "ocean",
    "mountain",
    "library",
    "student",
    "doctor",
    "engine",
    "planet",
]


@dataclass
class Setup:
    """What a benchmark runs on: model shape, dtype, device, and where checkpoints are written."""

    size: dict[str, int]
    dtype: str = "float32"
    device: str = "cpu"
    gpu: bool = False
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="guard_bench_")))
    _paths: dict[str, Path] = field(default_factory=dict)

    def gen_path(self) -> Path:
        if "gen" not in self._paths:
            from guard_reward.tiny.gen import build_tiny_gen

            self._paths["gen"] = build_tiny_gen(self.tmp / "gen", **self.size)
        return self._paths["gen"]

    def stream_path(self) -> Path:
        if "stream" not in self._paths:
            from guard_reward.tiny.stream import build_tiny_stream

            self._paths["stream"] = build_tiny_stream(self.tmp / "stream", guard_inner_size=128, **self.size)
        return self._paths["stream"]

    def gen(self, **kw: Any) -> Any:
        from guard_reward.guards.gen import GenGuard

        return GenGuard.from_pretrained(self.gen_path(), device=self.device, dtype=self.dtype, **kw)

    def stream(self, **kw: Any) -> Any:
        from guard_reward.guards.stream import StreamGuard

        return StreamGuard.from_pretrained(self.stream_path(), device=self.device, dtype=self.dtype, **kw)

    def describe(self) -> str:
        s = self.size
        return (
            f"random-weight Qwen3 guard, {s['num_hidden_layers']} layers, hidden {s['hidden_size']}, vocab "
            f"151,936, {self.dtype} on {self.device}"
        )


def sentence_words(rng: random.Random, n_words: int) -> str:
    """``n_words`` neutral English words with some punctuation (about 1.2 Qwen tokens per word)."""
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    for i in range(7, n_words, 8):
        words[i] += "."
    return " ".join(words).capitalize()


def text_of(tokenizer: Any, n_tokens: int, seed: int) -> str:
    """English-like text that tokenizes to exactly ``n_tokens`` tokens on its own."""
    rng = random.Random(seed)
    ids = tokenizer.encode(sentence_words(rng, n_tokens * 2), add_special_tokens=False)
    for cut in range(n_tokens, n_tokens + 8):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer.encode(text, add_special_tokens=False)) == n_tokens:
            return text
    raise RuntimeError(f"could not build a {n_tokens}-token text")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def race(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: bool = True, device: str = "cpu"):
    """Time each function once per round, ``repeats`` rounds (after one warm-up round): a burst of load from
    other processes hits every path of a round alike. Returns ``{name: [seconds per round]}``."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(slow: Sequence[float], fast: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """Speed-up of ``fast`` over ``slow`` (``slow / fast x scale``) per round: best-to-best, and the lowest and
    highest over paired rounds (the spread is the noise of this run)."""
    pairs = [scale * s / f for s, f in zip(slow, fast)]
    return {"best": scale * min(slow) / min(fast), "lo": min(pairs), "hi": max(pairs)}


def fmt_ratio(r: dict[str, float] | None, spec: str = ".2f") -> str:
    if r is None:
        return "—"
    if abs(r["hi"] - r["lo"]) < 1e-9:
        return f"{r['best']:{spec}}x"
    return f"{r['best']:{spec}}x ({r['lo']:{spec}}–{r['hi']:{spec}})"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def forward_flops(size: dict[str, int], row_lengths: Sequence[int], vocab_positions: int = 0) -> float:
    """Rough FLOPs of a forward: ``2 x weights`` per token for the layers, causal attention scores and values,
    and ``vocab_positions`` positions through the 151,936-wide head."""
    h, n = size["hidden_size"], size["num_hidden_layers"]
    q = size["num_attention_heads"] * size["head_dim"]
    kv = size["num_key_value_heads"] * size["head_dim"]
    per_token = 2 * n * (h * (q + 2 * kv) + q * h + 3 * h * size["intermediate_size"])
    attention = sum(2 * n * q * t * (t + 1) for t in row_lengths)  # QK^T and AV, causal: t(t+1)/2 pairs each
    return per_token * sum(row_lengths) + attention + 2 * h * 151936 * vocab_positions


def bf16_peak(device: str) -> float | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def environment() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(name: str, title: str, table_md: str, payload: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write ``<out>/<name>.md`` (title, environment, tables) and ``<out>/<name>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    md = f"# {title}\n\nEnvironment: `{json.dumps(env)}`\n\n{table_md.rstrip()}\n"
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.json").write_text(json.dumps({"environment": env, **payload}, indent=2) + "\n")
    return out / f"{name}.md"


#: Where partial runs (one part standalone, or ``--only``) write: never over the committed full-suite results.
PARTIAL_RESULTS = Path("runs") / "benchmarks"


def part_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark part shares (``--gpu-size``, ``--threads``, ``--out``); parts add their
    own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--gpu-size", action="store_true", help="Qwen3Guard-0.6B's shape, bf16 on cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out",
        type=Path,
        default=PARTIAL_RESULTS,
        help=f"folder for this part's files (default {PARTIAL_RESULTS}; the committed results in "
        "benchmarks/results are written by a full `python -m benchmarks` run only)",
    )
    return parser


def run_part(
    args: argparse.Namespace, name: str, title: str, run: Callable[[Setup], tuple[str, dict[str, Any]]]
) -> Path:
    """Run one part standalone on the configuration ``args`` asks for and write its result files to
    ``args.out`` (:data:`PARTIAL_RESULTS` by default, never the committed results)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    setup = Setup(GPU_SIZE, "bfloat16", "cuda", gpu=True) if args.gpu_size else Setup(CPU_SIZE)
    table, payload = run(setup)
    out = getattr(args, "out", PARTIAL_RESULTS)
    path = write_results(f"{name}_gpu" if args.gpu_size else name, title, table, payload, out)
    logging.getLogger("benchmarks").info("%s\nwritten to %s", table, path)
    return path
