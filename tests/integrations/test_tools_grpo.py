"""DenseGRPOTrainer through TRL's own tool loop (``tools=``): a tiny Qwen3 policy calls a real Python tool.

The batch holds tool-call turns, tool results and final answers (the policy's sampling is biased towards a
``lookup`` call, see :mod:`tests.integrations.tool_policy`). The dense reward is ``TokenSafetyPenalty`` on the
tiny Stream stand-in (it shares the policy's vocabulary: the identity path); what it returns is kept by a thin
recorder so the test can check where its penalties land.
"""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig

from guard_reward import TokenSafetyPenalty
from guard_reward.integrations.trl import DenseGRPOTrainer
from guard_reward.types import DenseRewards
from tests.integrations.tool_policy import (
    HARMFUL_TOPIC,
    lookup,
    sequence_bias,
    tool_dataset,
    tool_policy,
)

TOOL_CALL_OPEN = 151657


class Recorded:
    """A dense reward that keeps its inputs' ``tool_mask`` and its outputs (around the real reward)."""

    def __init__(self, inner: TokenSafetyPenalty) -> None:
        self.inner = inner
        self.__name__ = inner.__name__
        self.calls: list[tuple[object, DenseRewards, list[list[int]]]] = []

    def bind_tokenizer(self, tokenizer) -> None:
        self.inner.bind_tokenizer(tokenizer)

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> DenseRewards:
        out = self.inner(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        self.calls.append((kwargs.get("tool_mask"), out, [list(r) for r in completion_ids]))
        return out


class Capturing(DenseGRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        keys = ("completion_ids", "completion_mask", "tool_mask", "advantages")
        self.captured = [*getattr(self, "captured", []), {k: out[k].clone() for k in keys if k in out}]
        return out


def topic_reward(completions, **kwargs):
    """A scalar reward that differs within a group: whether the completion called the tool about the benign
    topic (1), the harmful one (-1) or not at all (0)."""
    out = []
    for messages in completions:
        calls = [c for m in messages if m.get("role") == "assistant" for c in (m.get("tool_calls") or [])]
        topics = [c["function"]["arguments"].get("topic") for c in calls]
        out.append(-1.0 if HARMFUL_TOPIC in topics else 1.0 if topics else 0.0)
    return out


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    from guard_reward.tiny.stream import build_tiny_stream

    return build_tiny_stream(tmp_path_factory.mktemp("tiny_stream"), seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stream_path):
    model, tok = tool_policy()
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
        gradient_checkpointing=False,
        generation_kwargs={"sequence_bias": sequence_bias(tok)},
    )
    trainer = Capturing(
        model,
        [topic_reward],
        args=args,
        train_dataset=tool_dataset(n_repeat=2),
        processing_class=tok,
        tools=[lookup],
        dense_rewards=[penalty],
        dense_coef=0.5,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return trainer, penalty, before


def test_batches_hold_tool_calls_results_and_answers(trained):
    trainer, _, _ = trained
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
    trainer, penalty, _ = trained
    assert len(penalty.calls) == len(trainer.captured) == 2
    for (tool_mask, out, ids), step in zip(penalty.calls, trainer.captured, strict=True):
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
    trainer, penalty, _ = trained
    tool_mask, _, ids = penalty.calls[0]
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
    trainer, _, before = trained
    moved = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert moved
