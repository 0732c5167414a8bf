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
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guard_reward.protocol import MAX_ITEMS, BadRequest
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
    """Value every OpenRLHF sample with ``reward`` (a ``SafetyReward``); ``judged()`` returns the response
    verdicts the reward's guard produced for this call (for ``extra_logs``). Bad samples get
    ``failure_value``."""
    samples: list[tuple[list[dict[str, str]], str] | None] = []
    for i, (q, p) in enumerate(zip(queries, prompts, strict=True)):
        try:
            samples.append(split_sample(q, p, i))
        except ValueError:
            samples.append(None)
    return score_samples(reward, judged, samples, failure_value)


def score_samples(
    reward: Callable[..., Sequence[float | None]],
    judged: Callable[[], list[Verdict]],
    samples: Sequence[tuple[list[dict[str, str]], str] | None],
    failure_value: float,
) -> dict[str, Any]:
    """``(prompt messages, response)`` per sample (``None``: a bad sample) -> rewards, scores, extra logs."""
    n = len(samples)
    rewards: list[float] = [failure_value] * n
    failed = [1.0] * n
    p_unsafe = [-1.0] * n
    levels = [-1.0] * n
    refusal = [-1.0] * n
    good = [i for i, s in enumerate(samples) if s is not None]
    if good:
        values = reward(prompts=[samples[i][0] for i in good], completions=[samples[i][1] for i in good])
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


class RecordingGuard:
    """A Gen guard wrapper that remembers, per thread, the response verdicts of its last ``moderate`` call
    (the reward asks the guard; the caller then reads the same verdicts for its logs). Picklable."""

    def __init__(self, guard: Any) -> None:
        self.guard = guard
        self._local = threading.local()

    def moderate(
        self, conversations: Sequence[Any], decode: bool = False, thinking: str | None = None, **kwargs: Any
    ) -> list:
        verdicts = self.guard.moderate(conversations, decode=decode, thinking=thinking, **kwargs)
        if conversations and conversations[0] and conversations[0][-1].get("role") == "assistant":
            self._local.verdicts = verdicts
        return verdicts

    def judged(self) -> list[Verdict]:
        return getattr(self._local, "verdicts", [])

    def __getstate__(self) -> dict[str, Any]:
        return {"guard": self.guard}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.guard = state["guard"]
        self._local = threading.local()


class GuardRewardFunction:
    """``(queries, prompts) -> {"rewards", "scores", "extra_logs"}`` with a ``SafetyReward`` on ``guard`` (a
    ``GenGuard``, a ``RemoteGenGuard`` or anything with ``moderate``); ``reward_config`` as for
    ``--reward-config``. What ``/get_reward``, the OpenRLHF reward file and the verl manager share."""

    def __init__(self, guard: Any, reward_config: Mapping[str, Any] | None = None) -> None:
        from guard_reward.rewards.safety import SafetyReward

        kwargs = reward_kwargs(reward_config)
        self.failure_value = float(kwargs["failure_value"])
        self.recorder = RecordingGuard(guard)
        self.reward = SafetyReward(self.recorder, **kwargs)

    def __call__(self, queries: Sequence[str], prompts: Sequence[str]) -> dict[str, Any]:
        return get_reward(self.reward, self.recorder.judged, queries, prompts, self.failure_value)

    def score(self, messages: Sequence[list[dict[str, str]]], responses: Sequence[str]) -> dict[str, Any]:
        """The same for prompts already given as message lists."""
        samples = [(list(m), r) for m, r in zip(messages, responses, strict=True)]
        return score_samples(self.reward, self.recorder.judged, samples, self.failure_value)
