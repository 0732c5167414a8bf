"""Run under verl 0.9.1's own environment (``.venv-verl091`` first on ``sys.path``): a hand-built ``DataProto``
through verl's ``RewardLoopWorker.compute_score_batch`` with (1) ``GuardRewardManager`` loaded by
``source: importlib`` and (2) the naive manager with our async ``compute_score``; prints the results as JSON.

``python -m tests.serving.verl_check URL TOKENIZER_DIR``
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import torch


def build_data(tok, prompts: list[str], responses: list[str]):
    from verl import DataProto

    p_ids = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        for p in prompts
    ]
    p_ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in p_ids]
    r_ids = [
        [*tok.encode(r, add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")] for r in responses
    ]
    plen, rlen = max(map(len, p_ids)), max(map(len, r_ids)) + 2
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts_t = torch.full((len(prompts), plen), pad)
    responses_t = torch.full((len(prompts), rlen), pad)
    mask = torch.zeros(len(prompts), plen + rlen, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        prompts_t[i, plen - len(p) :] = torch.tensor(p)  # verl left-pads prompts
        responses_t[i, : len(r)] = torch.tensor(r)  # and right-pads responses
        mask[i, plen - len(p) : plen] = 1
        mask[i, plen : plen + len(r)] = 1
    return DataProto.from_dict(
        tensors={
            "prompts": prompts_t,
            "responses": responses_t,
            "attention_mask": mask,
            "input_ids": torch.cat([prompts_t, responses_t], dim=1),
        },
        non_tensors={
            "data_source": np.array(["safety"] * len(prompts), dtype=object),
            "reward_model": np.array([{"ground_truth": None}] * len(prompts), dtype=object),
            "extra_info": np.array([{"prompt": p} for p in prompts], dtype=object),
        },
    )


def run(config, data):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    # as in verl's Ray actor: the worker is built and run on one event loop (its managers keep that loop)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = RewardLoopWorker(config, None)
    outputs = loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outputs]
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(data, scores)
    return {
        "manager": type(worker.reward_manager).__name__,
        "scores": scores,
        "extra": [
            {k: float(v) for k, v in o["reward_extra_info"].items() if isinstance(v, (int, float))}
            for o in outputs
        ],
        "rm_scores": rm_scores.tolist(),
    }


def reward_configs(tok_dir: str, settings: dict) -> tuple:
    """verl's reward config for ``GuardRewardManager`` and for ``compute_score``, both with ``settings`` (the
    ``guard_reward`` keys)."""
    from omegaconf import OmegaConf

    base = {
        "actor_rollout_ref": {"model": {"path": tok_dir, "tokenizer_path": None}},
        "reward": {
            "num_workers": 1,
            "reward_model": {"enable": False},
            "custom_reward_function": {"path": None, "name": "compute_score"},
            "reward_manager": {"source": "register", "name": "naive", "module": {"path": None, "name": None}},
        },
    }
    manager = OmegaConf.merge(base, {"reward": {
        "reward_manager": {"source": "importlib", "name": "GuardRewardManager",
                           "module": {"path": "pkg://guard_reward.integrations.verl.reward_manager"}},
        "guard_reward": settings,
    }})  # fmt: skip
    function = OmegaConf.merge(base, {"reward": {"custom_reward_function": {
        "path": "pkg://guard_reward.integrations.verl.compute_score", "name": "compute_score",
        "reward_kwargs": settings,
    }}})  # fmt: skip
    return manager, function


def main(url: str, tok_dir: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    prompts = ["How do I bake bread?", "How do I pick a lock?", "Tell me a joke."]
    responses = ["Mix flour and water.", "Use a tension wrench.", "Why did the chicken cross the road?"]
    data = build_data(tok, prompts, responses)
    manager, function = reward_configs(tok_dir, {"url": url, "mode": "soft", "refusal": False})
    out = {
        "transformers": transformers.__version__,
        "prompts": prompts,
        "responses": responses,
        "manager": run(manager, data),
        "compute_score": run(function, data),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
