"""DenseGRPOTrainer and RLOO with guard rewards: 1-2 step runs of a tiny Qwen3 policy on CPU.

The policy shares the real Qwen tokenizer, so TokenSafetyPenalty scores its ids verbatim (identity alignment).
"""

from __future__ import annotations

import copy

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from guard_reward import SafetyReward, TokenSafetyPenalty
from guard_reward.integrations.trl import DenseGRPOTrainer, SafetyCurvesCallback
from guard_reward.integrations.trl.grpo import check_dense_loss
from guard_reward.rewards import SummedTokenReward
from tests.integrations.ppo_tiny import TokenPenalty
from tests.tiny_policy import prompt_dataset, save_tiny_policy, tiny_policy

COMMON = dict(
    per_device_train_batch_size=4,
    num_generations=2,
    max_completion_length=8,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    report_to="none",
    use_cpu=True,
    bf16=False,
    seed=0,
    save_strategy="no",
    activation_checkpointing=False,
)


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), **{**COMMON, **kw})


def length_reward(prompts, completions, **kwargs):
    """A deterministic scalar reward that differs within a group: the completion's length."""
    return [float(len(c[-1]["content"])) / 10.0 for c in completions]


class Capturing(DenseGRPOTrainer):
    """Keeps what each generation step hands to the loss."""

    captured: list

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.captured = [
            *getattr(self, "captured", []),
            {k: out[k].clone() for k in ("advantages", "completion_mask")}
            | {"table": list(self._logs["advantages"])},
        ]
        return out


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory):
    from guard_reward.tiny.stream import build_tiny_stream

    return build_tiny_stream(tmp_path_factory.mktemp("tiny_stream"), seed=3)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """The tiny policy saved to disk: with beta > 0, TRL loads the reference model from the policy's path."""
    return save_tiny_policy(tmp_path_factory.mktemp("policy"))


def _load(policy_dir):
    from transformers import AutoModelForCausalLM

    from guard_reward.tiny.tokenizer import qwen_tokenizer
    from tests.tiny_policy import CHATML

    return AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True), qwen_tokenizer(CHATML)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_dense_coef_zero_reproduces_plain_grpo(tmp_path):
    model, tok = tiny_policy()
    twin = copy.deepcopy(model)
    before = _params(model)
    data = prompt_dataset()
    GRPOTrainer(
        model, [length_reward], args=grpo_args(tmp_path / "a"), train_dataset=data, processing_class=tok
    ).train()
    DenseGRPOTrainer(
        twin,
        [length_reward],
        args=grpo_args(tmp_path / "b"),
        train_dataset=data,
        processing_class=tok,
        dense_rewards=[TokenPenalty(position=2)],
        dense_coef=0.0,
    ).train()
    after, twin_after = _params(model), _params(twin)
    assert any(not torch.equal(before[n], after[n]) for n in before), "training moved the policy"
    for name in after:
        assert torch.equal(after[name], twin_after[name]), name


@pytest.mark.parametrize("mode", ["token", "return_to_go"])
def test_tokens_before_and_after_a_violation_get_different_advantages(tmp_path, mode):
    model, tok = tiny_policy()
    trainer = Capturing(
        model,
        [length_reward],
        args=grpo_args(tmp_path, max_steps=1),
        train_dataset=prompt_dataset(),
        processing_class=tok,
        dense_rewards=TokenPenalty(position=2),
        dense_coef=0.5,
        dense_advantage=mode,
    )
    trainer.train()
    (step,) = trainer.captured
    adv, mask = step["advantages"], step["completion_mask"].bool()
    assert adv.shape == mask.shape and adv.dim() == 2
    assert (adv[~mask] == 0).all(), "padding is masked"
    # the completions table shows each completion's mean per-token advantage (what the loss uses)
    shown = (adv * mask).sum(1) / mask.sum(1).clamp(min=1)
    assert step["table"] == pytest.approx(shown.tolist(), abs=1e-6)
    rows = [i for i in range(adv.shape[0]) if int(mask[i].sum()) > 4]
    assert rows, "the tiny policy writes completions longer than the violation"
    for i in rows:
        before, at, after = float(adv[i, 1]), float(adv[i, 2]), float(adv[i, 3])
        if mode == "token":
            assert at == pytest.approx(before - 0.5) and after == pytest.approx(before)
        else:  # the violation's penalty is credited to every token up to it, none after
            assert before == pytest.approx(at) and after == pytest.approx(at + 0.5)


@pytest.mark.slow
def test_guard_rewards_dense_penalty_and_curves(tmp_path, tiny_gen_path, stream_path, policy_dir):
    model, tok = _load(policy_dir)
    before = _params(model)
    safety = SafetyReward(str(tiny_gen_path), mode="soft", refusal=False, name="safety")
    trainer = DenseGRPOTrainer(
        model,
        [safety, length_reward],
        args=grpo_args(tmp_path, reward_weights=[1.0, 0.5], beta=0.05),
        train_dataset=prompt_dataset(),
        processing_class=tok,
        callbacks=[SafetyCurvesCallback()],
        dense_rewards=[TokenSafetyPenalty(str(stream_path))],
        dense_coef=1.0,
    )
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    for key in ("guard/unsafe_rate", "guard/safe_rate", "guard/p_unsafe_mean", "guard/stream_flag_rate",
                "guard/token_p_unsafe_mean", "dense/reward_mean", "rewards/safety/mean", "kl"):  # fmt: skip
        assert key in logged, key
    assert any(not torch.equal(before[n], p) for n, p in _params(model).items())
    assert (tmp_path / "safety_curves.png").exists() and (tmp_path / "safety_curves.csv").exists()
    assert trainer.dense_rewards[0].policy_tokenizer is tok and trainer.dense_rewards[0].stats["identity"] > 0


def test_rloo_with_dense_penalty_folded(tmp_path, tiny_gen_path, stream_path, policy_dir):
    model, tok = _load(policy_dir)
    before = _params(model)
    penalty = TokenSafetyPenalty(str(stream_path), policy_tokenizer=tok)
    args = RLOOConfig(output_dir=str(tmp_path), **{**COMMON, "max_steps": 1})
    trainer = RLOOTrainer(
        model,
        [SafetyReward(str(tiny_gen_path), mode="soft", refusal=False), SummedTokenReward(penalty)],
        args=args,
        train_dataset=prompt_dataset(),
        processing_class=tok,
    )
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"guard/unsafe_rate", "guard/stream_flag_rate", "rewards/guard_tokens_sum/mean"} <= logged
    assert any(not torch.equal(before[n], p) for n, p in _params(model).items())


def test_sequence_level_losses_and_duplicate_names_are_refused(tmp_path):
    for kw, match in [
        ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, "cannot take per-token advantages"),
        ({"loss_type": "vespo"}, "cannot take per-token advantages"),
        ({"importance_sampling_level": "sequence"}, "GSPO"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_dense_loss(grpo_args(tmp_path, **kw))
    model, tok = tiny_policy()
    with pytest.raises(ValueError, match="cannot take per-token advantages"):
        DenseGRPOTrainer(model, [length_reward], args=grpo_args(tmp_path, loss_type="vespo"),
                         train_dataset=prompt_dataset(), processing_class=tok)  # fmt: skip
    with pytest.raises(ValueError, match="distinct names"):
        DenseGRPOTrainer(model, [length_reward, length_reward], args=grpo_args(tmp_path),
                         train_dataset=prompt_dataset(), processing_class=tok)  # fmt: skip
    with pytest.raises(ValueError, match="dense_advantage"):
        DenseGRPOTrainer(model, [length_reward], args=grpo_args(tmp_path), train_dataset=prompt_dataset(),
                         processing_class=tok, dense_advantage="gae")  # fmt: skip
