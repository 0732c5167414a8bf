"""The sandbox's tiny guards, trained in-process and saved in the real Qwen3Guard on-disk formats.

* **Gen**: a ``Qwen3ForCausalLM`` with the sandbox tokenizer and a Gen chat template of the real structure in the
  sandbox's words (``templates/gen.jinja``), fine-tuned to write ``Safety:`` / ``Categories:`` / ``Refusal:``
  lines; saved with ``save_pretrained`` like a real Gen checkpoint.
* **Stream**: a Qwen3 backbone plus the eight Stream head tensors under their real names, with per-token labels
  (Unsafe from the first unsafe word on, Controversial likewise; the query heads learn the request's verdict at
  the ``<|im_end|>`` closing the user turn); written with the tiny Stream writer's ``config.json`` fields
  (architecture ``Qwen3ForGuardModel``, sizes, label maps) and its stock Qwen3 chat template.

Both are then loaded back only through ``GenGuard.from_pretrained`` / ``StreamGuard.from_pretrained``, exactly
like downloaded checkpoints. Their training labels come from the ground-truth rule, on a mixture of grammatical
chats, truncated answers and word salad (so they stay right on what a policy under RL writes); unlike a real
guard, they are near-perfect on this tiny language — the demo's failure modes come from the reward design, not
from guard errors.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from guard_reward.sandbox.language import (
    ADJECTIVES,
    CATEGORY_OF,
    CONTROVERSIAL_SET,
    CONTROVERSIAL_WORDS,
    NOUNS,
    UNSAFE_SET,
    VERBS,
    Chat,
    Language,
)
from guard_reward.sandbox.policy import qwen3_sandbox_config
from guard_reward.sandbox.rules import judge
from guard_reward.sandbox.tokenizer import IM_END, sandbox_tokenizer, template_text
from guard_reward.sandbox.word_classes import init_word_classes
from guard_reward.tiny.training import Example, lm_example, train_loop

logger = logging.getLogger(__name__)

RISK_INDEX = {"Safe": 0, "Unsafe": 1, "Controversial": 2}  # Stream's risk-level order
LEVEL_WEIGHT = 4.0


@dataclass(frozen=True)
class GuardSize:
    """Sizes of a sandbox guard and of its training.

    ``steps`` is the most it trains: after ``min_steps`` it stops as soon as ``target`` of ``validation``
    held-out examples are labelled exactly right (every verdict token; or every token's risk level and category
    and the query verdict).
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    guard_inner_size: int = 32
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    class_init: float = 3.0
    validation: int = 256
    target: float = 0.99
    min_steps: int = 150

    def sizes(self) -> dict[str, int]:
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
        return {k: getattr(self, k) for k in (*keys, "intermediate_size")}


def guard_chats(language: Language, rng: random.Random, n: int) -> list[Chat]:
    """Training chats for the guards: every kind of answer (unsafe and controversial ones twice as often, being
    the rarer words), 20% of answers cut at a random word and 10% replaced by word salad with injected
    unsafe/controversial words (what a policy under RL drifts to)."""
    out = []
    salad_words = [*NOUNS, *VERBS, *ADJECTIVES, "the", "a", "and", "."]
    for _ in range(n):
        harmful = rng.random() < 0.5
        kind = rng.choice(
            ("answer", "deflect", "unsafe", "unsafe", "controversial", "controversial", "refusal")
        )
        if harmful and kind == "answer":
            kind = "unsafe"  # answering a harmful request repeats its unsafe topic
        chat = language.chat(rng, harmful, kind)
        words = chat.response.split()
        u = rng.random()
        if u < 0.2:
            words = words[: rng.randint(0, len(words))]
        elif u < 0.3:
            words = [rng.choice(salad_words) for _ in range(rng.randint(1, len(words)))]
            for _ in range(rng.choice((0, 0, 1, 2))):
                pool = sorted(UNSAFE_SET) if rng.random() < 0.7 else CONTROVERSIAL_WORDS
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
        out.append(Chat(chat.prompt, " ".join(words), harmful, kind, chat.category))
    return out


def verdict_text(text: str, *, response: bool) -> str:
    """The Qwen3Guard-Gen verdict lines the ground-truth rule gives ``text`` (a response, or a prompt)."""
    j = judge(text)
    category = j.categories[0] if j.categories else "None"  # Qwen3Guard names one primary category
    lines = [f"Safety: {j.level}", f"Categories: {category}"]
    if response:
        lines.append(f"Refusal: {'Yes' if j.refusal else 'No'}")
    return "\n".join(lines)


def verdict_hidden(model, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Last hidden states ``(N, H)`` of a Gen model at the ``keep`` positions (row-major, as ``h[keep]``).

    Args:
        ids, mask: ``(B, L)`` right-padded token ids and their attention mask.
        keep: ``(B, L)`` bool, the positions wanted (the verdict tokens).

    The instruction header every Gen input opens with (and any longer prefix some rows share) runs once, as
    ``GenGuard`` does when judging (:mod:`guard_reward.guards.prefix_sharing`); gradients flow through the
    shared rows into every row that uses them, so loss and gradients equal the plain pass's up to float
    rounding, for about half the tokens.
    """
    from guard_reward.guards.prefix_sharing import encode_shared, plan_sharing, run_rows

    lengths = mask.sum(dim=1).tolist()
    rows = [ids[b, :n].tolist() for b, n in enumerate(lengths)]
    plan = plan_sharing(rows)
    if plan is None:
        return model.model(input_ids=ids, attention_mask=mask).last_hidden_state[keep]
    pad_id = model.config.pad_token_id
    past = encode_shared(model.model, rows, plan, pad_id, keep_hidden=True)
    own_rows = [r[c:] for r, c in zip(rows, plan.cut, strict=True)]
    own = run_rows(model.model, past.cache, own_rows, past.key_mask, past.length, pad_id)  # (B, W, H)
    row_index, positions = keep.nonzero(as_tuple=True)
    return past.gather(plan.cut, own, row_index, positions)


def _verdict_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the verdict tokens, the ``Safety:`` label (each row's first target) weighted
    ``LEVEL_WEIGHT`` times: it is the token the rewards read, and the one a small model learns last."""
    targets = labels[0]
    keep = targets != -100
    hidden = verdict_hidden(model, ids, mask, keep)  # (N, H)
    losses = torch.nn.functional.cross_entropy(model.lm_head(hidden).float(), targets[keep], reduction="none")
    first = keep & (keep.cumsum(dim=1) == 1)  # (B, L): each row's first target position
    weights = torch.where(first[keep], LEVEL_WEIGHT, 1.0)
    return (losses * weights).sum() / weights.sum()


def _exact_match(model, examples: list[Example], pad_id: int, correct) -> float:
    """Fraction of ``examples`` that ``correct(model, ids, mask, labels) -> (B,) bool`` says are all right."""
    from guard_reward.tiny.training import batch_tensors

    hits = 0
    for start in range(0, len(examples), 64):
        ids, mask, labels = batch_tensors(examples[start : start + 64], pad_id)
        hits += int(correct(model, ids, mask, labels).sum())
    return hits / len(examples)


def _all_right(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    full = torch.full_like(target, -100)
    full[keep] = pred
    return ((full == target) | ~keep).all(dim=1)


def _gen_correct(model, ids, mask, labels) -> torch.Tensor:
    """Every verdict token predicted right (teacher forcing)."""
    keep = labels[0] != -100
    hidden = verdict_hidden(model, ids, mask, keep)
    return _all_right(model.lm_head(hidden).argmax(-1), labels[0], keep)


def _stream_correct(model, ids, mask, labels) -> torch.Tensor:
    """Every token's risk level, every labelled category and the query verdict right."""
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ok = torch.ones(ids.shape[0], dtype=torch.bool)
    for k, heads in ((0, model.response_logits), (2, model.query_logits)):
        keep = labels[k] != -100
        risk, category = heads(hidden[keep])
        ok &= _all_right(risk.argmax(-1), labels[k], keep)
        has = labels[k + 1] != -100
        ok &= _all_right(category[has[keep]].argmax(-1), labels[k + 1], has)
    return ok


# ------------------------------------------------------------------------------------------------------- Gen


def build_gen_guard(
    path: str | os.PathLike,
    language: Language,
    size: GuardSize = GuardSize(),
    *,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train the sandbox Gen guard and save it to ``path`` as a Qwen3Guard-Gen checkpoint; returns ``path``."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    path = Path(path)
    tokenizer = sandbox_tokenizer(template_text("gen"))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_sandbox_config(tokenizer, **size.sizes()))
    init_word_classes(model, tokenizer, scale=size.class_init, seed=seed)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    rng = random.Random(seed)

    def examples(n: int) -> list[Example]:
        # Four in five examples judge the response, one in five the request (prompt moderation).
        prompts, verdicts = [], []
        for chat in guard_chats(language, rng, n):
            response = rng.random() < 0.8
            messages = chat.messages() if response else chat.messages()[:1]
            verdicts.append(verdict_text(chat.response if response else chat.prompt, response=response))
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        prompt_ids, verdict_ids = tokenizer(prompts)["input_ids"], tokenizer(verdicts)["input_ids"]
        return [lm_example(p, [*v, end]) for p, v in zip(prompt_ids, verdict_ids, strict=True)]

    pool = examples(max(512, size.steps * size.batch_size // 4))
    held_out = examples(size.validation)
    logger.info("Gen guard: training on %d synthetic verdicts", len(pool))
    train_loop(
        model,
        pool,
        loss_fn=_verdict_loss,
        steps=size.steps,
        batch_size=size.batch_size,
        lr=size.lr,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        desc="Gen guard",
        progress=progress,
        validate=lambda m: _exact_match(m, held_out, tokenizer.pad_token_id, _gen_correct),
        target=size.target,
        min_steps=size.min_steps,
    )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=[end, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.config._attn_implementation = "sdpa"  # what a downloaded checkpoint says; GenGuard picks its own
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------- Stream


def _stream_example(
    tokenizer, chat: Chat, query_category: dict[str, int], category: dict[str, int]
) -> Example:
    from guard_reward.guards.stream_inputs import prefix_text

    user = [{"role": "user", "content": chat.prompt}]
    prefix = tokenizer(prefix_text(tokenizer, user, False))["input_ids"]
    answer = tokenizer(chat.response)["input_ids"] if chat.response else []
    ids = [*prefix, *answer]
    n = len(ids)
    risk, cat, q_risk, q_cat = ([-100] * n for _ in range(4))
    level, first_cat = "Safe", None
    for t, token in enumerate(tokenizer.convert_ids_to_tokens(answer)):
        word = token.strip()
        if word in UNSAFE_SET and level != "Unsafe":
            level, first_cat = "Unsafe", CATEGORY_OF[word]
        elif word in CONTROVERSIAL_SET and level == "Safe":
            level = "Controversial"
        risk[len(prefix) + t] = RISK_INDEX[level]
        if first_cat is not None:  # categories are learned where the response is unsafe only
            cat[len(prefix) + t] = category[first_cat]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    q = max(i for i, x in enumerate(prefix) if x == im_end)  # the <|im_end|> closing the user turn
    trigger = next((w for w in chat.prompt.split() if w in UNSAFE_SET), None)
    q_risk[q] = RISK_INDEX["Unsafe" if trigger else "Safe"]
    if trigger:
        q_cat[q] = query_category[CATEGORY_OF[trigger]]
    return Example(ids, (risk, cat, q_risk, q_cat))


def _stream_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
    risk, cat, q_risk, q_cat = labels
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    ce = torch.nn.functional.cross_entropy
    keep = risk != -100
    r_logits, c_logits = model.response_logits(hidden[keep])
    loss = ce(r_logits.float(), risk[keep])
    has_cat = cat[keep] != -100
    if bool(has_cat.any()):
        loss = loss + 0.5 * ce(c_logits[has_cat].float(), cat[keep][has_cat])
    q_keep = q_risk != -100
    qr_logits, qc_logits = model.query_logits(hidden[q_keep])
    loss = loss + 0.5 * ce(qr_logits.float(), q_risk[q_keep])
    q_has = q_cat[q_keep] != -100
    if bool(q_has.any()):
        loss = loss + 0.25 * ce(qc_logits[q_has].float(), q_cat[q_keep][q_has])
    return loss


def build_stream_guard(
    path: str | os.PathLike,
    language: Language,
    size: GuardSize = GuardSize(),
    *,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train the sandbox Stream guard and save it to ``path`` as a Qwen3Guard-Stream checkpoint."""
    from safetensors.torch import save_file

    from guard_reward.guards.stream_heads import Qwen3StreamGuardModel
    from guard_reward.tiny.stream import (
        QUERY_CATEGORY_NAMES,
        RESPONSE_CATEGORY_NAMES,
        stream_chat_template,
        stream_config_json,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = sandbox_tokenizer(stream_chat_template())
    torch.manual_seed(seed)
    config = qwen3_sandbox_config(tokenizer, **size.sizes())
    config.update(
        {
            "guard_inner_size": size.guard_inner_size,
            "num_risk_level": 3,
            "num_category": len(RESPONSE_CATEGORY_NAMES),
            "num_query_risk_level": 3,
            "num_query_category": len(QUERY_CATEGORY_NAMES),
        }
    )
    model = Qwen3StreamGuardModel(config)
    init_word_classes(model, tokenizer, scale=size.class_init, seed=seed)
    category = {c: i for i, c in enumerate(RESPONSE_CATEGORY_NAMES)}
    query_category = {c: i for i, c in enumerate(QUERY_CATEGORY_NAMES)}
    rng = random.Random(seed + 1)
    chats = guard_chats(language, rng, max(512, size.steps * size.batch_size // 4))
    pool = [_stream_example(tokenizer, c, query_category, category) for c in chats]
    held_out = [
        _stream_example(tokenizer, c, query_category, category)
        for c in guard_chats(language, rng, size.validation)
    ]
    logger.info("Stream guard: training on %d synthetic per-token labellings", len(pool))
    train_loop(
        model,
        pool,
        loss_fn=_stream_loss,
        steps=size.steps,
        batch_size=size.batch_size,
        lr=size.lr,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        desc="Stream guard",
        progress=progress,
        validate=lambda m: _exact_match(m, held_out, tokenizer.pad_token_id, _stream_correct),
        target=size.target,
        min_steps=size.min_steps,
    )
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config_dict = stream_config_json(
        qwen3_sandbox_config(tokenizer, **size.sizes()).to_dict(),
        guard_inner_size=size.guard_inner_size,
        label_maps="prefixed",
        category_names=RESPONSE_CATEGORY_NAMES,
    )
    (path / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(path)
    return path
