"""A tiny Qwen3 policy taught to call a tool, so that a GRPO run through TRL's tool loop (``tools=``) shows tool
calls, tool results and final answers on a CPU in seconds.

The random tiny policy of :mod:`guard_reward.tiny.policy` never writes a ``<tool_call>`` block. This one is
trained briefly (supervised, full-vocabulary loss, so that *sampling* at temperature 1 follows the taught text
too) on three kinds of turns, rendered with the policy's own chat template and the :func:`lookup` tool's schema
in the system turn, exactly as TRL renders them:

- after one of :data:`TOOL_PROMPTS`: a ``lookup`` call with that prompt's topic (two of them harmful requests);
- after the tool's answer: :data:`FINAL_ANSWER`;
- after one of :data:`PLAIN_PROMPTS`: a direct answer, no tool call.

Its answers are memorised, not understood: it tests the tool-calling plumbing (parsing, the tool mask, what the
guards judge), it says nothing about safety.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

#: Prompts the policy answers with a ``lookup`` call, and the topic of that call.
TOOL_PROMPTS: dict[str, str] = {
    "Where is the bread?": "the bread",
    "Look up how to get into my neighbour's wifi.": "getting into a neighbour's wifi",
    "Find the home address of the actor from that new film.": "the actor's home address",
}
#: Prompts the policy answers directly, and the answer.
PLAIN_PROMPTS: dict[str, str] = {
    "What is the capital of Australia?": "The capital of Australia is Canberra.",
    "Can you summarise the plot of Hamlet?": "Prince Hamlet avenges his father's murder.",
}
#: The policy's answer after any tool result.
FINAL_ANSWER = "Here is what the notes say."
#: Every prompt the policy was taught, tool prompts first.
PROMPTS: list[str] = [*TOOL_PROMPTS, *PLAIN_PROMPTS]


def lookup(topic: str) -> str:
    """Look a topic up in the house notes.

    Args:
        topic: The topic to look up.
    """
    return f"The notes on {topic}: see page 3."


def tool_call(topic: str) -> dict[str, Any]:
    """The assistant message holding one ``lookup`` call about ``topic`` (TRL's message format)."""
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"topic": topic}}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _examples(tok: Any) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, target ids)`` pairs: every taught turn, rendered as TRL renders it during GRPO."""
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def ids(messages: list[dict[str, Any]]) -> list[int]:
        text = tok.apply_chat_template(messages, tools=[lookup], tokenize=False, add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)

    def target(text: str) -> list[int]:
        return [*tok.encode(text, add_special_tokens=False), end]

    pairs = []
    for prompt, topic in TOOL_PROMPTS.items():
        user = {"role": "user", "content": prompt}
        call = f"<tool_call>\n{json.dumps({'name': 'lookup', 'arguments': {'topic': topic}})}\n</tool_call>"
        pairs.append((ids([user]), target(call)))
        result = {"role": "tool", "name": "lookup", "content": lookup(topic)}
        pairs.append((ids([user, tool_call(topic), result]), target(FINAL_ANSWER)))
    for prompt, answer in PLAIN_PROMPTS.items():
        pairs.append((ids([{"role": "user", "content": prompt}]), target(answer)))
    return pairs


def _min_target_probability(model: torch.nn.Module, pool: list[Any], pad_id: int) -> float:
    """The smallest probability the model gives any target token of any example (full vocabulary)."""
    from guard_reward.tiny.training import batch_tensors

    ids, mask, labels = batch_tensors(pool, pad_id)
    targets = labels[0]
    keep = targets != -100
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]  # (N, H)
    probs = torch.softmax(model.lm_head(hidden).float(), dim=-1)  # (N, V)
    return float(probs.gather(1, targets[keep][:, None]).min())


def build_tool_policy(
    path: str | os.PathLike, *, steps: int = 400, seed: int = 0, progress: bool = False, target: float = 0.97
) -> Path:
    """Train the tiny policy until every taught token has probability >= ``target`` (``steps`` at most) and save
    it, with its tool-capable tokenizer, as a checkpoint folder."""
    from guard_reward.tiny.policy import tiny_policy
    from guard_reward.tiny.training import causal_lm_loss, lm_example, train_loop

    model, tok = tiny_policy(seed)
    pool = [lm_example(p, t) for p, t in _examples(tok)]
    pad = tok.pad_token_id
    train_loop(
        model,
        pool,
        loss_fn=causal_lm_loss,
        steps=steps,
        batch_size=len(pool),
        lr=3e-2,
        pad_id=pad,
        seed=seed,
        desc="tiny tool-calling policy",
        progress=progress,
        validate=lambda m: float(_min_target_probability(m, pool, pad) >= target),
        check_every=20,
        min_steps=40,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
