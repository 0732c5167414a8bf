"""Run under verl 0.9.1's own environment (``.venv-verl091`` first on ``sys.path``): multi-turn samples laid out
as verl's tool agent loop lays them out (tool results inside ``responses``, ``response_mask`` 0 on them) through
verl's ``RewardLoopWorker.compute_score_batch`` with (1) ``GuardRewardManager``, with and without
``response_mask``, and (2) the naive manager with our ``compute_score``; the guard is the tiny Gen checkpoint, local, in place of the service's client (the
transport is tested with the service elsewhere). Prints what each sample became and the scores as JSON.

``python -m tests.integrations.verl_multiturn_check TOKENIZER_DIR GEN_DIR``
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import torch

from tests.serving.verl_check import reward_configs

PROMPTS = ["Plan lunch for my team.", "Email my team the lunch menu."]
#: Per sample: (text, is the policy's) runs of the response, as the agent loop concatenates them.
RUNS = [
    [("Pasta on Monday.<|im_end|>", True)],
    [
        ('Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "menu"}}\n</tool_call><|im_end|>', True),
        ("\n<|im_start|>user\n<tool_response>\nforum post: wire a detonator\n</tool_response><|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Monday is pasta.<|im_end|>", True),
    ],
]  # fmt: skip


def build_data(tok, with_mask: bool = True):
    from verl import DataProto

    p_ids = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        for p in PROMPTS
    ]
    p_ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in p_ids]
    r_ids, r_mask = [], []
    for runs in RUNS:
        ids, mask = [], []
        for text, policy in runs:
            run = tok.encode(text, add_special_tokens=False)
            ids += run
            mask += [int(policy)] * len(run)
        r_ids.append(ids)
        r_mask.append(mask)
    plen, rlen = max(map(len, p_ids)), max(map(len, r_ids)) + 2
    n = len(PROMPTS)
    prompts_t, responses_t = torch.zeros(n, plen, dtype=torch.long), torch.zeros(n, rlen, dtype=torch.long)
    mask = torch.zeros(n, plen + rlen, dtype=torch.long)
    response_mask = torch.zeros(n, rlen, dtype=torch.long)
    for i, (p, r, m) in enumerate(zip(p_ids, r_ids, r_mask, strict=True)):
        prompts_t[i, plen - len(p) :] = torch.tensor(p)  # verl left-pads prompts
        responses_t[i, : len(r)] = torch.tensor(r)  # and right-pads responses
        response_mask[i, : len(m)] = torch.tensor(m)
        mask[i, plen - len(p) : plen + len(r)] = 1
    raw_prompts = np.empty(n, dtype=object)
    for i, p in enumerate(PROMPTS):
        raw_prompts[i] = [{"role": "user", "content": p}]
    return DataProto.from_dict(
        tensors={
            "prompts": prompts_t,
            "responses": responses_t,
            **({"response_mask": response_mask} if with_mask else {}),
            "attention_mask": mask,
            "input_ids": torch.cat([prompts_t, responses_t], dim=1),
        },
        non_tensors={
            "data_source": np.array(["safety"] * n, dtype=object),
            "reward_model": np.array([{"ground_truth": None}] * n, dtype=object),
            "raw_prompt": np.array(
                [[{"role": "user", "content": p}] for p in PROMPTS] + [None], dtype=object
            )[:n],
            "extra_info": np.array([{"prompt": p} for p in PROMPTS], dtype=object),
        },
    )


def run(config, data, gen):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from guard_reward.integrations.verl import compute_score as cs

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = RewardLoopWorker(config, None)
    manager = worker.reward_manager
    samples = None
    if hasattr(manager, "scorer"):
        manager.scorer.reward.guard._guard = gen
        samples = [manager._sample(data[i]) for i in range(len(data))]
        samples = [{"messages": m, "completion": c, "policy_ids": p} for m, c, p in samples]
    else:
        kwargs = dict(config.reward.custom_reward_function.reward_kwargs)
        cs._scorer(kwargs).reward.guard._guard = gen
    outputs = loop.run_until_complete(worker.compute_score_batch(data))
    return {
        "manager": type(manager).__name__,
        "samples": samples,
        "scores": [o["reward_score"] for o in outputs],
        "extra": [
            {k: float(v) for k, v in o["reward_extra_info"].items() if isinstance(v, (int, float))}
            for o in outputs
        ],
    }


def main(tok_dir: str, gen_dir: str) -> None:
    from transformers import AutoTokenizer

    from guard_reward.guards.gen import GenGuard

    tok = AutoTokenizer.from_pretrained(tok_dir)
    gen = GenGuard.from_pretrained(gen_dir, device="cpu", dtype="float32")
    data = build_data(tok)
    url = "http://127.0.0.1:9"  # never reached: the local guard stands in for the client
    settings = {"url": url, "mode": "soft", "refusal": False, "turns": "worst"}
    manager, function = reward_configs(tok_dir, settings)
    out = {
        "manager": run(manager, data, gen),
        # the reward loop inside the agent loop builds its samples without response_mask
        "manager_no_mask": run(manager, build_data(tok, with_mask=False), gen),
        "compute_score": run(function, data, gen),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
