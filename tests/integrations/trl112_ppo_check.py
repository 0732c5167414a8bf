"""GuardRewardModel inside TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` (run by test_reward_model_trl112).

Runs in a separate interpreter whose ``PYTHONPATH`` puts trl 1.12.0 in front of the main environment's trl
1.16. Prints one JSON object of observations; the test asserts on them.
Usage: ``python trl112_ppo_check.py <work_dir> <tiny Qwen3Guard-Gen folder>``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

CHATML = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
PROMPTS = [[{"role": "user", "content": f"How do I fix bike number {i}?"}] for i in range(4)]


def length_score(prompts, completions, completion_ids, **kwargs):
    """``len(completion_ids) + 0.5 * [the prompt is a message list ending with a user turn]``."""
    kwargs["log_metric"]("guard/test_rate", 0.25)
    return [
        float(len(ids)) + (0.5 if isinstance(p, list) and p[-1]["role"] == "user" else 0.0)
        for p, ids in zip(prompts, completion_ids, strict=True)
    ]


class Recording:
    """Calls a reward function and records what it was given and what it returned."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.__name__ = getattr(inner, "__name__", "recording")

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        scores = self.inner(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        call = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids}
        self.calls.append({**call, "scores": list(scores)})
        return scores


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"]) if hasattr(encoded, "keys") else list(encoded)


def main(work: str, gen_path: str) -> dict:
    import trl
    from datasets import Dataset
    from transformers import GenerationConfig, Qwen3ForCausalLM, Qwen3ForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.utils import get_reward

    from guard_reward.integrations.trl import GuardRewardModel
    from guard_reward.rewards import SafetyReward
    from guard_reward.tiny.gen import qwen3_config
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    tok = qwen_tokenizer(CHATML)
    tok.padding_side = "left"
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "intermediate_size": 64}  # fmt: skip

    # 1. TRL's own reward call on hand-built ids: left-padded prompts, right-padded responses (one has EOS).
    recorder = Recording(length_score)
    prompt_ids = [_ids(tok.apply_chat_template(p, add_generation_prompt=True)) for p in PROMPTS[:2]]
    responses = [[*_ids(tok("Use a wrench.", add_special_tokens=False)), tok.eos_token_id],
                 _ids(tok("Ask a shop", add_special_tokens=False))]  # fmt: skip
    width_p, width_r = max(map(len, prompt_ids)), max(map(len, responses)) + 2
    rows = [
        [tok.pad_token_id] * (width_p - len(p)) + p + r + [tok.pad_token_id] * (width_r - len(r))
        for p, r in zip(prompt_ids, responses, strict=True)
    ]
    reward_model = GuardRewardModel(recorder, tok)
    _, scores, _ = get_reward(reward_model, torch.tensor(rows), tok.pad_token_id, width_p)
    direct = {"scores": scores.tolist(), "dtype": str(scores.dtype), "call": recorder.calls[-1],
              "expected_completion_ids": responses, "last_metrics": reward_model.last_metrics}  # fmt: skip

    # 2. A short PPO run scored by SafetyReward on the tiny Qwen3Guard-Gen stand-in.
    torch.manual_seed(0)
    policy = Qwen3ForCausalLM(qwen3_config(**sizes))
    policy.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ref = Qwen3ForCausalLM(qwen3_config(**sizes))
    ref.load_state_dict(policy.state_dict())
    value = Qwen3ForSequenceClassification(qwen3_config(num_labels=1, **sizes))
    guard = Recording(SafetyReward(gen_path, mode="soft", refusal=False))
    dataset = Dataset.from_dict({"input_ids": [_ids(tok.apply_chat_template(p, add_generation_prompt=True))
                                               for p in PROMPTS]})  # fmt: skip
    args = PPOConfig(
        output_dir=os.path.join(work, "ppo"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
        num_mini_batches=1, total_episodes=4, response_length=6, stop_token="eos", missing_eos_penalty=None,
        local_rollout_forward_batch_size=2, num_sample_generations=0, report_to="none", bf16=False,
        use_cpu=True, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0,
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=ref, value_model=value,
        reward_model=GuardRewardModel(guard, tok), train_dataset=dataset, eval_dataset=dataset,
    )  # fmt: skip
    trainer.train()
    logged = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    return {
        "trl_version": trl.__version__,
        "trl_file": trl.__file__,
        "prompts": PROMPTS,
        "direct": direct,
        "ppo_calls": guard.calls,
        "logged_scores": logged,
    }


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2])
    print("RESULT " + json.dumps(result))
