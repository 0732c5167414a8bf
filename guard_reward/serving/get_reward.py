"""OpenRLHF's remote reward protocol (``POST /get_reward``) on top of a ``SafetyReward``.

OpenRLHF 0.11 sends ``{"query": [str], "prompts": [str], "labels": [...]}``: each query is the decoded prompt
and response (``tokenizer.decode(prompt + response, skip_special_tokens=False)``), each prompt the decoded
prompt. The response is the query minus its prompt prefix, with trailing end-of-turn special tokens removed. A
prompt in ChatML (``<|im_start|>role\\n...<|im_end|>`` turns, as every Qwen chat template renders it) is parsed
back into messages; the open assistant turn at its end (the generation prompt, possibly with an empty
``<think></think>`` block) is put back in front of the response. Any other prompt is one user message.

The answer is ``{"rewards": [float], "scores": [float], "extra_logs": {name: [float]}}``. OpenRLHF cannot take a
missing reward, so a sample the guard could not judge gets the reward config's ``failure_value`` (0.0 unless
set) and ``guard_failed = 1.0`` in ``extra_logs``; it is also logged and counted by the reward.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward.serving.protocol import MAX_ITEMS, BadRequest
from guard_reward.types import LEVEL_RANK, Verdict

#: End-of-turn / end-of-text markers of common chat templates, removed from the end of a response.
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>", "<|end|>")
_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\s*|$)", re.S)
#: Fields of a reward config (YAML) and the ``SafetyReward`` argument each sets; ``guard_`` prefixes (the
#: recipes' spelling) are accepted too.
REWARD_FIELDS = (
    "mode",
    "controversial",
    "safe_value",
    "unsafe_value",
    "category_weights",
    "refusal",
    "benign_refusal_value",
    "harmful_refusal_value",
    "thinking",
    "failure_value",
    "decode",
)


def reward_kwargs(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A reward config (``{"mode": "soft", ...}`` or ``{"guard_mode": ...}``) -> ``SafetyReward`` kwargs,
    with ``failure_value`` 0.0 unless given (see the module docstring)."""
    out: dict[str, Any] = {"failure_value": 0.0}
    for key, value in (config or {}).items():
        name = key.removeprefix("guard_")
        if name not in REWARD_FIELDS:
            raise ValueError(
                f"reward config: unknown field {key!r}; accepted (optionally with a guard_ prefix): "
                f"{', '.join(REWARD_FIELDS)}"
            )
        out[name] = value
    return out


def parse_get_reward(body: Any) -> tuple[list[str], list[str]]:
    """The ``query`` and ``prompts`` lists of a ``/get_reward`` body (``labels`` is accepted and unused)."""
    route = "/get_reward"
    if not isinstance(body, dict):
        raise BadRequest(f"{route}: the body must be a JSON object, got {type(body).__name__}")
    for key in ("query", "prompts"):
        if key not in body:
            raise BadRequest(f"{route}: missing field {key!r} (OpenRLHF sends query, prompts and labels)")
        if not isinstance(body[key], list) or not all(isinstance(s, str) for s in body[key]):
            raise BadRequest(f"{route}: {key!r} must be a list of strings")
    queries, prompts = body["query"], body["prompts"]
    if len(queries) != len(prompts):
        raise BadRequest(f"{route}: {len(queries)} queries but {len(prompts)} prompts; one per sample")
    if len(queries) > MAX_ITEMS:
        raise BadRequest(f"{route}: {len(queries)} samples; at most {MAX_ITEMS} per request")
    return queries, prompts


def strip_end_markers(text: str) -> str:
    """``text`` without trailing end-of-turn markers (and the whitespace between them)."""
    while True:
        stripped = text.rstrip()
        for marker in END_MARKERS:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                break
        else:
            return text


def prompt_messages(prompt: str) -> tuple[list[dict[str, str]], str]:
    """``(messages up to the last user turn, text of the open assistant turn)`` of a rendered prompt."""
    turns = [(m.group(1), m.group(2)) for m in _TURN.finditer(prompt)]
    if not turns:
        return [{"role": "user", "content": strip_end_markers(prompt).strip()}], ""
    opening = ""
    if turns[-1][0] == "assistant" and "<|im_end|>" not in prompt[prompt.rfind("<|im_start|>") :]:
        opening = turns.pop()[1]
    return [{"role": role, "content": content} for role, content in turns], opening


def split_sample(query: str, prompt: str, index: int) -> tuple[list[dict[str, str]], str]:
    """``(prompt messages, response text)`` of one OpenRLHF sample; a query that does not start with its
    prompt is a bad item (``ValueError``)."""
    if not query.startswith(prompt):
        raise ValueError(
            f"sample {index}: the query does not start with its prompt, so the response is unknown"
        )
    messages, opening = prompt_messages(prompt)
    return messages, opening + strip_end_markers(query[len(prompt) :])


def level_number(v: Verdict) -> float:
    """0 Safe, 1 Controversial, 2 Unsafe, -1 when the guard gave no level."""
    return float(LEVEL_RANK[v.level]) if v.level is not None else -1.0


def get_reward(
    reward: Callable[..., Sequence[float | None]],
    judged: Callable[[], list[Verdict]],
    queries: Sequence[str],
    prompts: Sequence[str],
    failure_value: float,
) -> dict[str, Any]:
    """Value every sample with ``reward`` (a ``SafetyReward``); ``judged()`` returns the response verdicts
    the reward's guard produced for this call (for ``extra_logs``). Bad samples get ``failure_value``."""
    n = len(queries)
    rewards: list[float] = [failure_value] * n
    failed = [1.0] * n
    p_unsafe = [-1.0] * n
    levels = [-1.0] * n
    refusal = [-1.0] * n
    good, convs, responses = [], [], []
    for i, (q, p) in enumerate(zip(queries, prompts, strict=True)):
        try:
            messages, response = split_sample(q, p, i)
        except ValueError:
            continue
        good.append(i)
        convs.append(messages)
        responses.append(response)
    if good:
        values = reward(prompts=convs, completions=responses)
        verdicts = judged()
        for k, i in enumerate(good):
            if values[k] is not None:
                rewards[i] = float(values[k])
            if k < len(verdicts):
                v = verdicts[k]
                failed[i] = 0.0 if v.ok and values[k] is not None else 1.0
                p_unsafe[i] = v.p_unsafe if v.ok else -1.0
                levels[i] = level_number(v)
                refusal[i] = -1.0 if v.refusal is None else float(v.refusal)
    return {
        "rewards": rewards,
        "scores": list(rewards),
        "extra_logs": {"p_unsafe": p_unsafe, "level": levels, "refusal": refusal, "guard_failed": failed},
    }
