"""A local causal LM as the defender of red teaming: it answers the attacker's prompts (``AttackReward``'s
``Defender`` protocol), sampled with the model's current weights."""

from __future__ import annotations

from typing import Any

import torch

from guard_reward.evaluation.generation import left_pad, prompt_ids


class LocalDefender:
    """A local causal LM as the defender: the user turn through its chat template, sampled answers.

    Args:
        model: a ``transformers`` causal LM (a DDP-wrapped one is unwrapped); kept by reference, so a trainer
            updating it in place is answered with its current weights.
        tokenizer: its tokenizer (a chat template; padding is done here, on the left).
        max_new_tokens: answer budget in tokens.
        do_sample, temperature: sampling settings (``do_sample=False``: greedy).
        batch_size: prompts per ``generate`` call.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = True,
        temperature: float = 1.0,
        batch_size: int = 64,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(
                f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}"
            )
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.do_sample, self.temperature = max_new_tokens, do_sample, temperature
        self.batch_size = batch_size

    def __call__(self, prompts: list[str]) -> list[str | None]:
        model = getattr(self.model, "module", self.model)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out: list[str | None] = []
        try:
            with torch.no_grad():
                for start in range(0, len(prompts), self.batch_size):
                    chunk = [
                        prompt_ids(tok, [{"role": "user", "content": p}])
                        for p in prompts[start : start + self.batch_size]
                    ]
                    x, mask = left_pad(chunk, pad)  # every answer starts at column `width`
                    width = x.shape[1]
                    ids = model.generate(
                        input_ids=x.to(device),
                        attention_mask=mask.to(device),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=self.do_sample,
                        temperature=self.temperature if self.do_sample else None,
                        top_k=0 if self.do_sample else None,
                        top_p=1.0 if self.do_sample else None,
                        pad_token_id=pad,
                    )
                    out += tok.batch_decode(ids[:, width:], skip_special_tokens=True)
        finally:
            model.train(was_training)
        return out
