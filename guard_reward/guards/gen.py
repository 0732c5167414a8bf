"""Qwen3Guard-Gen as a batched judge: exact label probabilities in one pass, or greedy verdict lines.

Differences from the official usage (template, ``generate(max_new_tokens=128)``, regex, one conversation at a
time): conversations are grouped into token-budget micro-batches (:mod:`guard_reward.guards.batching`), and
token prefixes shared inside one (the template's ~200-270-token instruction header; a GRPO group's prompt) are
encoded once and their KV cache copied (:mod:`guard_reward.guards.prefix_sharing`, ``share_prefix=False`` turns
it off); ``decode=False`` runs one pass
and returns the exact probabilities of the three labels (see :mod:`guard_reward.guards.gen_scoring`);
``decode=True`` reuses that pass's KV cache for a short greedy decode of the verdict lines, parsed robustly
(:mod:`guard_reward.guards.parsing`); identical inputs in one call are judged once; inputs longer than the
context window follow the policy in :mod:`guard_reward.guards.common`.

What is judged (response moderation; :mod:`guard_reward.guards.gen_units`): per ``thinking``, the answer after
``</think>``, reasoning and answer as two units, or the whole content. An **empty answer** (also a completion
that is only a reasoning block) is not sent to the guard as an answer: its verdict has ``empty=True`` and
``level=None``; a **cut-off reasoning block** (``<think>`` without ``</think>``) is never judged as an answer:
its verdict has ``answer_missing=True``, ``reason="no_answer"`` and ``level=None``. In both cases, with
``thinking="separate"`` (or ``"whole"``) the reasoning is still judged, as reasoning, and reported in
``parts["reasoning"]``.

Per-sample failures (``on_error``): with ``on_error="raise"`` (default) a malformed conversation, a judged
message that alone does not fit the context window (``ContextTooLongError``) or non-finite label
probabilities raise a :class:`~guard_reward.faults.SampleError`; with ``"skip"`` that sample gets
``Verdict(level=None, error=..., reason=...)`` and the rest are judged. Unparseable verdict lines
(``decode=True``) are always a ``level=None`` verdict with ``reason="unparseable"``. Batch-level errors (out
of memory, a broken checkpoint) always raise.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from guard_reward.conversations import Conversation, ThinkingMode, check_thinking_mode, moderation_of
from guard_reward.faults import NON_FINITE, OnError, SampleError, check_on_error
from guard_reward.guards.batching import micro_batches
from guard_reward.guards.common import (
    cache_kwarg,
    hub_kwargs,
    output_cache,
    read_config_json,
    resolve_device,
    resolve_dtype,
)
from guard_reward.guards.gen_scoring import LabelTree, build_label_tree, label_log_probs, make_scoring_batch
from guard_reward.guards.gen_units import (
    checked_conversations,
    encode_conversation,
    plan_units,
    render_units,
    sample_verdict,
)
from guard_reward.guards.gen_verdicts import decode_verdicts
from guard_reward.guards.prefix_sharing import attention_bias, block_mask, encode_shared, plan_sharing
from guard_reward.types import LEVELS, Verdict

logger = logging.getLogger(__name__)

FORCED_PREFIX = "Safety:"
SUPPORTED_ATTENTION = ("sdpa", "eager")


class GenGuard:
    """A Qwen3Guard-Gen checkpoint used as a batched judge.

    Args:
        model: a causal LM (``Qwen3ForCausalLM``) in eval mode on ``device``.
        tokenizer: its tokenizer, carrying the checkpoint's chat template.
        token_budget: padded tokens per micro-batch (``batch size x longest input``).
        max_batch_size: conversations per micro-batch at most.
        max_new_tokens: greedy decoding budget for ``decode=True`` (the verdict is 2-3 short lines).
        thinking: how an assistant message with a ``<think>…</think>`` block is judged: ``"answer"`` (the text
            after ``</think>`` only), ``"separate"`` (reasoning and answer each, both must be safe — the tech
            report's rule), ``"whole"`` (the content as it is).
        max_length: context window in tokens; defaults to the config's ``max_position_embeddings``.
        share_prefix: encode token prefixes shared by several inputs of a micro-batch once (the template's
            instruction header; a GRPO group's prompt) and continue each input from a copy of that KV cache
            (:mod:`guard_reward.guards.prefix_sharing`); results are unchanged up to float rounding. ``False``
            runs every input in full.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_new_tokens: int = 32,
        thinking: ThinkingMode = "answer",
        max_length: int | None = None,
        share_prefix: bool = True,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the tokenizer has no chat template; Qwen3Guard-Gen needs the checkpoint's own template "
                "(tokenizer_config.json 'chat_template' or chat_template.jinja)"
            )
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"attention implementation {attn!r} cannot take the custom 4D mask used for label scoring; "
                f"load the guard with attn_implementation in {SUPPORTED_ATTENTION}"
            )
        if max_new_tokens < 4:
            raise ValueError(f"max_new_tokens must be >= 4 to fit a verdict line, got {max_new_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.max_new_tokens = max_new_tokens
        self.thinking: ThinkingMode = check_thinking_mode(thinking)
        self.max_length = int(max_length or model.config.max_position_embeddings)
        self.share_prefix = share_prefix
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_ids = _end_of_turn_ids(tokenizer, model)
        self.tree = gen_label_tree(tokenizer)
        self.stats: Counter[str] = Counter()
        check_gen_template(tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_new_tokens: int = 32,
        thinking: ThinkingMode = "answer",
        max_length: int | None = None,
        share_prefix: bool = True,
        **kw: Any,
    ) -> GenGuard:
        """Load a Qwen3Guard-Gen checkpoint (hub id or local folder; a folder never touches the network).

        ``kw`` goes to ``from_pretrained`` of both the model and the tokenizer (e.g. ``revision``); the model
        is loaded with ``attn_implementation="sdpa"`` unless given.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = read_config_json(name_or_path, **{k: v for k, v in kw.items() if k in ("revision", "token")})
        _check_gen_config(config, name_or_path)
        dev = resolve_device(device)
        kw = hub_kwargs(name_or_path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
        kw.setdefault("attn_implementation", "sdpa")
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=resolve_dtype(dtype, dev), **kw)
        return cls(
            model.to(dev),
            tokenizer,
            token_budget=token_budget,
            max_batch_size=max_batch_size,
            max_new_tokens=max_new_tokens,
            thinking=thinking,
            max_length=max_length,
            share_prefix=share_prefix,
        )

    # ------------------------------------------------------------------ public API

    def moderate(
        self,
        conversations: Sequence[Conversation],
        decode: bool = False,
        thinking: ThinkingMode | None = None,
        on_error: OnError = "raise",
    ) -> list[Verdict]:
        """Judge the last message of each conversation.

        Args:
            conversations: lists of ``{"role", "content"}`` messages; a final user message is prompt
                moderation, a final assistant message response moderation.
            decode: ``False``: label probabilities from one forward pass (``level`` = most probable label).
                ``True``: also greedy-decode the verdict lines for categories and refusal (``level`` = the
                parsed ``Safety:`` line, ``None`` when unparseable).
            thinking: overrides the guard's ``thinking`` option for this call.
            on_error: what a per-sample failure does (module docstring): ``"raise"`` or ``"skip"``.

        Returns:
            one :class:`Verdict` per conversation, in input order.
        """
        start = time.perf_counter()
        mode = check_thinking_mode(thinking or self.thinking)
        policy = check_on_error(on_error)
        convs = checked_conversations(conversations, policy)
        units, plans = plan_units(convs, mode)
        rendered = self._render_units(units, decode, policy)
        ok_units = [u for u, r in enumerate(rendered) if not isinstance(r, SampleError)]
        judged: dict[int, Verdict] = dict(
            zip(ok_units, self._judge_unique([rendered[u] for u in ok_units], decode), strict=True)  # type: ignore[misc]
        )
        for u, r in enumerate(rendered):
            if isinstance(r, SampleError):
                judged[u] = Verdict.failed(r.reason, str(r), moderation_of(units[u]))
        verdicts = [sample_verdict(plan, judged) for plan in plans]
        if policy == "raise":
            for v in verdicts:
                if v.reason == NON_FINITE:
                    raise SampleError(NON_FINITE, v.error or "non-finite label probabilities")
        failures = sum(not v.ok and not v.empty for v in verdicts)
        self.stats.update(requested=len(convs), failures=failures)
        self.stats.update(
            empty=sum(v.empty for v in verdicts), no_answer=sum(v.answer_missing for v in verdicts)
        )
        if failures:
            logger.warning("%d of %d samples got no verdict (level=None)", failures, len(convs))
        self.stats["seconds"] += time.perf_counter() - start
        return verdicts

    # ------------------------------------------------------------------ rendering

    def _render_units(
        self, units: list[Conversation], decode: bool, policy: str = "raise"
    ) -> list[tuple[tuple[int, ...], bool, str] | SampleError]:
        """Render and tokenize each unit, fitting it to the context window (:func:`render_units`)."""
        limit = self.max_length - self.tree.n_extra - (self.max_new_tokens if decode else 0)
        return render_units(self.tokenizer, units, limit, policy, self.stats)

    def _encode(self, conv: Conversation) -> list[int]:
        return encode_conversation(self.tokenizer, conv)

    # ------------------------------------------------------------------ judging

    def _judge_unique(self, rendered: list[tuple[tuple[int, ...], bool, str]], decode: bool) -> list[Verdict]:
        """Judge each distinct token sequence once, in token-budget micro-batches; map back to all units."""
        first_of: dict[tuple[int, ...], int] = {}
        unique: list[int] = []
        for i, (ids, _, _) in enumerate(rendered):
            if ids not in first_of:
                first_of[ids] = i
                unique.append(i)
        self.stats.update(judged=len(unique), deduplicated=len(rendered) - len(unique))
        lengths = [
            len(rendered[i][0]) + self.tree.n_extra + (self.max_new_tokens if decode else 0) for i in unique
        ]
        results: dict[int, Verdict] = {}
        token_ids = [rendered[i][0] for i in unique]
        for batch in micro_batches(
            token_ids, lengths, self.token_budget, self.max_batch_size, self.share_prefix
        ):
            rows = [unique[j] for j in batch]
            verdicts = self._judge_batch([rendered[i] for i in rows], decode)
            results.update(zip(rows, verdicts))
        return [results[first_of[ids]] for ids, _, _ in rendered]

    @torch.inference_mode()
    def _judge_batch(self, items: list[tuple[tuple[int, ...], bool, str]], decode: bool) -> list[Verdict]:
        prompts = [ids for ids, _, _ in items]
        plan = plan_sharing(prompts) if self.share_prefix else None
        if plan is None:
            batch = make_scoring_batch(prompts, self.tree, self.pad_id)
            out = self.model.model(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=attention_bias(batch.attention_mask.to(self.device), self.model),
                position_ids=batch.position_ids.to(self.device),
                use_cache=decode,
            )
            prompt_ids, prompt_mask = batch.input_ids[:, : batch.prompt_width], batch.prompt_mask
        else:
            past = encode_shared(self.model.model, prompts, plan, self.pad_id)
            batch = make_scoring_batch([p[c:] for p, c in zip(prompts, plan.cut)], self.tree, self.pad_id)
            query_real = torch.ones(batch.input_ids.shape, dtype=torch.bool)
            query_real[:, : batch.prompt_width] = batch.prompt_mask.bool()
            mask = block_mask(past.key_mask, query_real, batch.attention_mask[:, 0])
            out = self.model.model(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=attention_bias(mask.to(self.device), self.model),
                position_ids=(batch.position_ids + past.length[:, None]).to(self.device),
                **{cache_kwarg(self.model.model): past.cache},
                use_cache=True,
            )
            prompt_ids = torch.cat([past.ids, batch.input_ids[:, : batch.prompt_width]], dim=1)
            prompt_mask = torch.cat([past.key_mask.long(), batch.prompt_mask], dim=1)
            self.stats.update(shared_batches=1, tokens_saved=plan.tokens_unshared - plan.tokens_shared)
        first = batch.prompt_width + len(self.tree.prefix_ids) - 1  # the prefix end, then the tree nodes
        # contiguous: (B, 1 + N, H) then folds into one matmul on every dispatch path (a strided slice may not)
        step_logits = self.model.lm_head(out.last_hidden_state[:, first:].contiguous())
        probs = torch.softmax(label_log_probs(step_logits, self.tree), dim=-1).cpu()
        prob_dicts = [dict(zip(self.tree.labels, row.tolist())) for row in probs]
        if not decode:
            verdicts = [
                Verdict(
                    level=self.tree.labels[int(row.argmax())],  # type: ignore[arg-type]
                    probs=p,
                    moderation=moderation,  # type: ignore[arg-type]
                    truncated=truncated,
                )
                for row, p, (_, truncated, moderation) in zip(probs, prob_dicts, items)
            ]
        else:
            verdicts = decode_verdicts(self, prompt_ids, prompt_mask, output_cache(out), prob_dicts, items)
        finite = torch.isfinite(probs).all(dim=-1).tolist()
        return [
            v
            if ok
            else Verdict.failed(
                NON_FINITE, "the guard produced NaN or infinite label probabilities", v.moderation
            )
            for v, ok in zip(verdicts, finite, strict=True)
        ]


def gen_label_tree(tokenizer: Any) -> LabelTree:
    """The label trie of a Gen tokenizer: ``Safety:`` then each label with its leading space."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    return build_label_tree(encode(FORCED_PREFIX), {label: encode(" " + label) for label in LEVELS})


def check_gen_template(tokenizer: Any) -> None:
    """Refuse a chat template that does not ask for a ``Safety:`` verdict (not a Qwen3Guard-Gen template)."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "probe"}], tokenize=False)
    if FORCED_PREFIX not in probe:
        raise ValueError(
            "this checkpoint's chat template does not ask for a 'Safety:' verdict; it is not a "
            "Qwen3Guard-Gen checkpoint (for Qwen3Guard-Stream use StreamGuard)"
        )


def _end_of_turn_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def _check_gen_config(config: dict[str, Any], name_or_path: str | os.PathLike) -> None:
    archs = config.get("architectures") or []
    if "Qwen3ForGuardModel" in archs:
        raise ValueError(
            f"{name_or_path} is a Qwen3Guard-Stream checkpoint (Qwen3ForGuardModel); use StreamGuard"
        )
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ValueError(
            f"{name_or_path} has architectures {archs}; a Qwen3Guard-Gen checkpoint is a causal LM "
            "(e.g. Qwen3ForCausalLM)"
        )
