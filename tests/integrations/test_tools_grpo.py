"""DenseGRPOTrainer through TRL's own tool loop (``tools=``): a tiny Qwen3 policy calls a real Python tool.

The batch holds tool-call turns, tool results and final answers (the policy's sampling is biased towards a
``lookup`` call about a benign or a harmful topic, see :mod:`tests.integrations.tool_policy`). The scalar reward
is ``SafetyReward`` on the sandbox's trained Gen guard (it knows the sandbox's unsafe words); the dense reward is
``TokenSafetyPenalty`` on the tiny Stream stand-in (it shares the policy's vocabulary: the identity path). What
both return is kept by a thin recorder so the tests can check what was judged and where penalties land.
"""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig

from guard_reward import SafetyReward, TokenSafetyPenalty
from guard_reward.integrations.trl import DenseGRPOTrainer
from tests.conftest import cached_checkpoint
from tests.integrations.tool_policy import (
    BENIGN_TOPIC,
    HARMFUL_TOPIC,
    lookup,
    sequence_bias,
    tool_dataset,
    tool_policy,
)

#: Two GRPO steps through the tool loop: about 110 s of CPU (generation and log-probs over Qwen's 151k vocabulary).
pytestmark = pytest.mark.slow

TOOL_CALL_OPEN = 151657


class Recorded:
    """A reward that keeps its inputs (``completions``, ``completion_ids``, ``tool_mask``) and its outputs, around
    the real reward."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.__name__ = inner.__name__
        self.calls: list[dict] = []
        if hasattr(inner, "bind_tokenizer"):
            self.bind_tokenizer = inner.bind_tokenizer

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        out = self.inner(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        self.calls.append(
            {
                "tool_mask": kwargs.get("tool_mask"),
                "out": out,
                "ids": [list(r) for r in completion_ids],
                "completions": completions,
            }
        )
        return out


class Capturing(DenseGRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        keys = ("completion_ids", "completion_mask", "tool_mask", "advantages")
        self.captured = [*getattr(self, "captured", []), {k: out[k].clone() for k in keys if k in out}]
        return out


def called_topics(messages) -> list[str]:
    calls = [c for m in messages if m.get("role") == "assistant" for c in (m.get("tool_calls") or [])]
    return [c["function"]["arguments"].get("topic") for c in calls]


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    from guard_reward.tiny.stream import build_tiny_stream

    return build_tiny_stream(tmp_path_factory.mktemp("tiny_stream"), seed=3)


@pytest.fixture(scope="module")
def sandbox_gen_path():
    """The sandbox's Gen guard (about 45 s of CPU to train; cached by content like ``trained_gen_path``)."""
    from pathlib import Path

    import guard_reward.sandbox as sandbox
    from guard_reward.sandbox.guards import GuardSize, build_gen_guard
    from guard_reward.sandbox.language import Language

    size = GuardSize(
        hidden_size=96, head_dim=24, intermediate_size=192, steps=300, min_steps=150, batch_size=16
    )
    package = Path(sandbox.__file__).parent
    files = ("guards.py", "language.py", "tokenizer.py", "word_classes.py", "policy.py")
    inputs = [package / f for f in files] + [package.parent / "tiny" / "training.py"]
    inputs.append(package / "templates" / "gen.jinja")

    def build(path):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # far faster than two busy threads at this size
        try:
            build_gen_guard(path, Language(), size, progress=False)
        finally:
            torch.set_num_threads(threads)

    return cached_checkpoint("sandbox-gen", inputs, build, extra=repr(size))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stream_path, sandbox_gen_path):
    model, tok = tool_policy()
    safety = Recorded(SafetyReward(sandbox_gen_path, mode="hard", name="safety"))
    penalty = Recorded(TokenSafetyPenalty(stream_path, shaping="prob", name="guard_tokens"))
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("out")),
        per_device_train_batch_size=6,
        num_generations=2,
        max_completion_length=64,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        save_strategy="no",
        activation_checkpointing=False,
        generation_kwargs={"sequence_bias": sequence_bias(tok)},
    )
    trainer = Capturing(
        model,
        [safety],
        args=args,
        train_dataset=tool_dataset(n_repeat=2),
        processing_class=tok,
        tools=[lookup],
        dense_rewards=[penalty],
        dense_coef=0.5,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return trainer, penalty, before, safety


def test_batches_hold_tool_calls_results_and_answers(trained):
    trainer, *_ = trained
    called = plain = 0
    for step in trainer.captured:
        assert "tool_mask" in step
        for ids, keep, m in zip(
            step["completion_ids"], step["tool_mask"], step["completion_mask"], strict=True
        ):
            real = m.bool()
            if bool((keep[real] == 0).any()):
                called += 1
                ids_l = ids[real].tolist()
                assert TOOL_CALL_OPEN in ids_l  # a tool result follows a tool call the policy wrote
                last_tool = max(i for i, k in enumerate(keep[real].tolist()) if k == 0)
                assert last_tool < len(ids_l) - 1, "a final answer follows the tool result"
            else:
                plain += 1
    assert called >= 2 and plain >= 1, f"{called} completions called the tool, {plain} did not"
    logged = [row for row in trainer.state.log_history if "tools/call_frequency" in row]
    assert logged and max(row["tools/call_frequency"] for row in logged) > 0


def test_tool_tokens_carry_no_dense_penalty(trained):
    trainer, penalty, *_ = trained
    assert len(penalty.calls) == len(trainer.captured) == 2
    for call, step in zip(penalty.calls, trainer.captured, strict=True):
        tool_mask, out, ids = call["tool_mask"], call["out"], call["ids"]
        assert tool_mask is not None and len(tool_mask) == len(ids)
        for i, row in enumerate(ids):
            keep = torch.tensor(tool_mask[i], dtype=torch.bool)
            n = len(row)
            assert out.mask[i, :n].tolist() == keep.tolist() or not bool(out.mask[i].any())
            assert torch.count_nonzero(out.rewards[i, :n][~keep]) == 0
            if bool(out.mask[i].any()):
                assert bool((out.rewards[i, :n][keep] < 0).any()), "policy tokens are penalised"
        # and the advantages the loss sees are 0 on tool tokens, per-token (dense) on the policy's
        loss_mask = (step["completion_mask"] * step["tool_mask"]).bool()
        assert torch.count_nonzero(step["advantages"][~loss_mask]) == 0
        assert step["advantages"].dim() == 2


def test_without_the_mask_the_guard_would_score_tool_tokens(trained, stream_path):
    """The same completions without ``tool_mask``: the tool's tokens are scored as if the policy wrote them."""
    trainer, penalty, *_ = trained
    tool_mask, ids = penalty.calls[0]["tool_mask"], penalty.calls[0]["ids"]
    rows = [i for i, m in enumerate(tool_mask) if 0 in m]
    assert rows
    plain = TokenSafetyPenalty(stream_path, shaping="prob", policy_tokenizer=trainer.processing_class)
    prompts = [[{"role": "user", "content": "Where is the bread?"}]] * len(rows)
    completions = [[{"role": "assistant", "content": ""}]] * len(rows)
    out = plain(prompts=prompts, completions=completions, completion_ids=[ids[i] for i in rows])
    for k, i in enumerate(rows):
        off = torch.tensor(tool_mask[i]) == 0
        assert bool(out.mask[k, : len(ids[i])][off].all())
        assert torch.count_nonzero(out.rewards[k, : len(ids[i])][off]) > 0


def test_training_moved_the_policy(trained):
    trainer, _, before, _ = trained
    moved = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert moved


def test_the_scalar_reward_judges_the_tool_call_arguments(trained):
    """A harmful topic in a call's arguments makes the completion Unsafe (hard reward -1) for the Gen guard; the
    same call about a benign topic is judged Safe (+1) when nothing else in the completion is unsafe."""
    *_, safety = trained
    by_topic: dict[str, list[float]] = {BENIGN_TOPIC: [], HARMFUL_TOPIC: []}
    for call in safety.calls:
        for messages, reward in zip(call["completions"], call["out"], strict=True):
            topics = called_topics(messages)
            if topics:
                by_topic[HARMFUL_TOPIC if HARMFUL_TOPIC in topics else BENIGN_TOPIC].append(reward)
    assert by_topic[HARMFUL_TOPIC] and by_topic[BENIGN_TOPIC], by_topic
    assert all(r == -1.0 for r in by_topic[HARMFUL_TOPIC]), by_topic
    assert 1.0 in by_topic[BENIGN_TOPIC], by_topic


def test_the_agents_page_example_calls_tools_judges_them_and_spares_tool_tokens(tmp_path, monkeypatch):
    """docs/agents.md's tool-calling GRPO example, run as written (extracted from the page) on the stand-in
    policy taught to call ``lookup``: tools are called, the calls are judged by the Gen reward, and the Stream
    penalty puts nothing on the tool's tokens. About a minute of CPU once the stand-ins are cached."""
    from tests.docs.snippets import ROOT, blocks

    page = ROOT / "docs" / "agents.md"
    (block,) = [b for b in blocks(page) if b.kind == "run-by" and "tools=[lookup]" in b.code]
    seen = []
    original = TokenSafetyPenalty.__call__

    def recording(self, prompts, completions, completion_ids, **kwargs):
        out = original(self, prompts, completions, completion_ids, **kwargs)
        seen.append((kwargs.get("tool_mask"), [list(r) for r in completion_ids], out))
        return out

    monkeypatch.setattr(TokenSafetyPenalty, "__call__", recording)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)

    rows = [row for row in namespace["trainer"].state.log_history if "guard/tool_call_rate" in row]
    assert rows and max(row["guard/tool_call_rate"] for row in rows) > 0, rows
    assert max(row["tools/call_frequency"] for row in rows) > 0, rows
    assert any("guard/unsafe_tool_call_rate" in row for row in rows), rows  # turns with a call were judged
    tool_tokens = 0
    assert seen
    for tool_mask, ids, out in seen:
        assert tool_mask is not None
        for i, row in enumerate(ids):
            tool = ~torch.tensor(tool_mask[i], dtype=torch.bool)
            tool_tokens += int(tool.sum())
            assert not bool(out.mask[i, : len(row)][tool].any())
            assert torch.count_nonzero(out.rewards[i, : len(row)][tool]) == 0
    assert tool_tokens > 0
