"""The benchmark suite's own instruments: the tensor-memory counter, the ratio arithmetic, and a tiny end-to-end
run of the memory part (so the suite keeps running as the guards change)."""

from pathlib import Path

import torch

from benchmarks.bench_memory import LiveTensors, deep_size
from benchmarks.bench_memory import run as memory_run
from benchmarks.common import Setup, fmt_ratio, ratio

TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=1024,
)


def test_live_tensors_counts_storages_until_their_last_view_dies():
    with LiveTensors() as mode:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000 more: peak 8000
        view = b[:10]  # a view: no new storage
        del a  # 4000 live
        c = torch.zeros(500, dtype=torch.float64)  # 4000: live 8000, peak stays 8000
        del b  # the view keeps b's storage alive
        live_with_view = mode.live
        del view
        live_after = mode.live
    assert mode.peak == 8000
    assert live_with_view == 8000 and live_after == 4000
    assert c.numel() == 500


def test_deep_size_counts_a_shared_storage_once():
    base = torch.zeros(1000)  # 4000 bytes of storage
    two_views = [base[:10], base[10:20]]
    assert 4000 <= deep_size(two_views) < 4000 + 2000  # storage once, plus small Python objects


def test_ratio_best_and_spread():
    r = ratio([4.0, 6.0], [1.0, 2.0])  # rounds: 4x, 3x; best-to-best 4/1
    assert r == {"best": 4.0, "lo": 3.0, "hi": 4.0}
    assert ratio([4.0], [2.0], scale=0.5)["best"] == 1.0
    assert fmt_ratio(r, ".1f") == "4.0x (3.0–4.0)"


def test_memory_part_runs_on_a_tiny_guard(tmp_path):
    table, payload = memory_run(Setup(TINY, tmp=tmp_path), counts=(1, 3), budgets=(16384,))
    gen = payload["by_count"]["gen"]
    assert [r["count"] for r in gen] == [1, 3]
    assert 0 < gen[0]["tensor_peak_mb"] <= gen[1]["tensor_peak_mb"]
    assert "| stream | 3 |" in table


def test_a_part_run_on_its_own_never_writes_the_committed_results(tmp_path, monkeypatch):
    import benchmarks.common as common
    from benchmarks.__main__ import main as suite_main

    committed = {p: p.stat().st_mtime_ns for p in common.RESULTS.iterdir()}
    monkeypatch.chdir(tmp_path)
    args = common.part_parser("A part.").parse_args([])
    assert args.out == common.PARTIAL_RESULTS
    monkeypatch.setattr(common, "CPU_SIZE", TINY)
    path = common.run_part(args, "toy", "Toy", lambda setup: ("| a |\n|---|\n| 1 |", {"x": 1}))
    assert path == common.PARTIAL_RESULTS / "toy.md" and (tmp_path / path).exists()
    # the suite with --only: partial too, so no summary and nothing under benchmarks/results
    monkeypatch.setattr("benchmarks.__main__.PARTS", {"toy": ("Toy", lambda setup: ("| a |", {"x": 1}))})
    suite_main(["--only", "toy"])
    assert (tmp_path / common.PARTIAL_RESULTS / "toy.json").exists()
    assert not (tmp_path / common.PARTIAL_RESULTS / "summary.md").exists()
    assert {p: p.stat().st_mtime_ns for p in common.RESULTS.iterdir()} == committed


def test_every_benchmark_module_is_a_part_of_the_suite_with_its_targets():
    from benchmarks.__main__ import PARTS, targets

    modules = {
        p.stem.removeprefix("bench_")
        for p in Path(__file__).resolve().parents[1].glob("benchmarks/bench_*.py")
    }
    assert modules == set(PARTS)
    row = {"guard": "gen", "served_over_local": {"best": 0.5}, "captured": 1.0}
    assert [t[0] for t in targets({"serving": {"rows": [row]}})] == [
        "gen served / local batched",
        "gen served batching gain / local batching gain",
    ]


def test_the_transport_parts_guards_go_through_the_services_own_encoding_and_requests_parse():
    """The transport benchmark's precomputed guard, judged and encoded by the replica's own code (no Ray here),
    decodes to its risks bit for bit; its /get_reward bodies are what the service parses."""
    from benchmarks.fast_guards import ANSWER_TOKENS, PrecomputedGen, PrecomputedStream
    from benchmarks.step_load import requests
    from guard_reward.serving.get_reward import parse_get_reward
    from guard_reward.serving.protocol import judge_gen_calls, judge_stream_calls, parse_score_ids
    from guard_reward.wire import SHAPING_FIELDS, TOKEN_FIELDS, risks_from_bytes

    guard = PrecomputedStream(
        pool=1
    )  # every sample cut from the same risk, wherever it sits in the merged call
    body = {"prompts": ["a", "b", "c"], "completion_ids": [[1] * ANSWER_TOKENS, [2] * 7, [3] * 9]}
    calls = [
        {**parse_score_ids(body), "binary": True},
        parse_score_ids({**body, "fields": list(SHAPING_FIELDS)}),
    ]
    calls[1]["binary"] = True
    full, lean = (risks_from_bytes(b) for b in judge_stream_calls(guard, calls))
    assert [len(r) for r in full] == [ANSWER_TOKENS, 7, 9] and full[1].span == (0, 7)
    for i, r in enumerate(full):
        want = guard.pool[0]
        assert all(torch.equal(getattr(r, f), getattr(want, f)[: len(r)]) for f in TOKEN_FIELDS)
        assert torch.equal(lean[i].p_unsafe, r.p_unsafe) and lean[i].category_probs.isnan().all()
    bodies = requests(32)
    queries, prompts = parse_get_reward(bodies[17])
    assert len(queries) == len(prompts) == 1 and queries[0].startswith(prompts[0])
    assert judge_gen_calls(PrecomputedGen(), [{"conversations": [[{"role": "user", "content": "x"}]] * 3,
                                               "decode": False, "thinking": None}])[0][2]["level"] == "Safe"  # fmt: skip
