"""OpenRLHF's remote reward protocol (``POST /get_reward``) on top of a ``SafetyReward``.

OpenRLHF 0.11 sends ``{"query": [str], "prompts": [str], "labels": [...]}``: each query is the decoded prompt
and response (``tokenizer.decode(prompt + response, skip_special_tokens=False)``), each prompt the decoded
prompt. Both are parsed back into TRL's conversational format (:mod:`guard_reward.serving.chat_formats`: ChatML,
Llama 3, Gemma, DeepSeek-R1, gpt-oss harmony; anything else is one user and one assistant message): the prompt
messages, and the completion messages the response adds (the open turn the generation prompt began, with its
opening such as ``<think>\\n``, then any tool results and further assistant turns), end markers removed. The
reward judges them as it judges a TRL completion.

The answer is ``{"rewards": [float], "scores": [float], "extra_logs": {name: [float]}}``. OpenRLHF cannot take a
missing reward (a ``None`` reaches its experience maker) and averages every ``extra_logs`` key over the samples
of a step, so every sample gets a float reward and the same keys, all 0/1 indicators or values whose batch mean
means something (:data:`EXTRA_LOGS`); nothing is ``-1``. A sample without a value of its own (bad sample, guard
failure) gets the reward config's ``failure_value`` (0.0 unless set) and ``guard_failed = 1``; it is also logged
and counted by the reward. An empty answer is a judged outcome (the config's ``empty_value``), not a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guard_reward.serving.chat_formats import (
    detect_format,
    raw_turns,
    split_rendered,
    strip_end_markers,
    to_messages,
)
from guard_reward.serving.protocol import MAX_ITEMS, BadRequest

if TYPE_CHECKING:
    from guard_reward.rewards.safety import SafetyReward
    from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

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
    "empty_value",
    "no_answer_value",
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


def prompt_messages(prompt: str) -> tuple[list[dict[str, Any]], str]:
    """``(messages of the prompt's closed turns, text of the open assistant turn at its end)`` of a rendered
    prompt (the opening is what a response decoded on its own must be prefixed with, e.g. ``<think>\\n``)."""
    fmt = detect_format(prompt)
    if fmt is None:
        return [{"role": "user", "content": strip_end_markers(prompt).strip()}], ""
    turns = raw_turns(prompt, fmt)
    opening = ""
    if turns and not turns[-1][2]:
        role, opening, _ = turns.pop()
        opening = opening if role.startswith("assistant") else ""
    return to_messages(turns, fmt), opening


Sample = tuple[list[dict[str, Any]], "str | list[dict[str, Any]]"]


def split_sample(query: str, prompt: str, index: int) -> Sample:
    """``(prompt messages, completion messages)`` of one OpenRLHF sample; a query that does not start with its
    prompt is a bad item (``ValueError`` naming the sample)."""
    try:
        return split_rendered(prompt, query)
    except ValueError as exc:
        raise ValueError(f"sample {index}: {exc}") from None


def _tool_call_count(completion: str | list[dict[str, Any]]) -> float:
    if isinstance(completion, str):
        return 0.0
    return float(sum(len(m.get("tool_calls") or ()) for m in completion if isinstance(m, dict)))


def get_reward(
    reward: SafetyReward, queries: Sequence[str], prompts: Sequence[str], failure_value: float
) -> dict[str, Any]:
    """Value every OpenRLHF sample with ``reward``; the verdict that decided each value feeds ``extra_logs``.
    Bad samples get ``failure_value``, counted and logged."""
    samples: list[Sample | None] = []
    bad = 0
    for i, (q, p) in enumerate(zip(queries, prompts, strict=True)):
        try:
            samples.append(split_sample(q, p, i))
        except ValueError as exc:
            bad += 1
            if bad == 1:
                logger.warning("/get_reward: %s; valued %s (guard_failed=1)", exc, failure_value)
            samples.append(None)
    if bad:
        logger.info(
            "/get_reward: %d of %d samples could not be split into prompt and response", bad, len(samples)
        )
    return score_samples(reward, samples, failure_value)


#: The ``extra_logs`` keys and what each means for one sample; OpenRLHF logs each key's mean over a step.
EXTRA_LOGS = {
    "guard_failed": "1 when the sample has no value of its own and got failure_value, else 0 (mean: failure rate)",
    "judged": "1 when the guard gave the answer a safety level, else 0 (mean: judged rate)",
    "empty": "1 when the answer was empty, valued with empty_value (a judged outcome, not a failure)",
    "unsafe": "1 when judged Unsafe, else 0 (mean: unsafe rate over all samples)",
    "controversial": "1 when judged Controversial, else 0",
    "refusal": "1 when the guard's Refusal line says Yes (decoded verdicts only), else 0",
    "p_unsafe": "P(Unsafe) when judged, else 0; mean(p_unsafe) / mean(judged) is the mean over judged samples",
    "tool_calls": "number of tool calls in the completion",
}


def sample_logs(value: float | None, verdict: Verdict, completion: Any) -> dict[str, float]:
    """One sample's :data:`EXTRA_LOGS` from its value (``None``: no value of its own), the verdict that decided
    it and its completion (a string or messages)."""
    judged = verdict.ok and verdict.level is not None
    return {
        "guard_failed": float(value is None),
        "judged": float(judged),
        "empty": float(verdict.empty),
        "unsafe": float(judged and verdict.level == "Unsafe"),
        "controversial": float(judged and verdict.level == "Controversial"),
        "refusal": float(judged and bool(verdict.refusal)),
        "p_unsafe": float(verdict.p_unsafe) if judged else 0.0,
        "tool_calls": _tool_call_count(completion),
    }


def score_samples(
    reward: SafetyReward,
    samples: Sequence[Sample | None],
    failure_value: float,
) -> dict[str, Any]:
    """``(prompt messages, completion)`` per sample (``None``: a bad sample) -> rewards ``(B,)``, scores
    ``(B,)`` and ``extra_logs`` ``{key: (B,)}`` (keys: :data:`EXTRA_LOGS`)."""
    n = len(samples)
    rewards: list[float] = [failure_value] * n
    logs = {key: [0.0] * n for key in EXTRA_LOGS}
    logs["guard_failed"] = [1.0] * n
    good = [i for i, s in enumerate(samples) if s is not None]
    if good:
        # evaluate() returns, per completion, the verdict of the turn that decided its value (a multi-turn
        # completion is judged turn by turn, so the guard's own call has more verdicts than samples)
        values, verdicts = reward.evaluate(
            prompts=[samples[i][0] for i in good], completions=[samples[i][1] for i in good]
        )
        for k, i in enumerate(good):
            if values[k] is not None:
                rewards[i] = float(values[k])
            for key, x in sample_logs(values[k], verdicts[k], samples[i][1]).items():
                logs[key][i] = x
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs}


class GuardRewardFunction:
    """``(queries, prompts) -> {"rewards", "scores", "extra_logs"}`` with a ``SafetyReward`` on ``guard`` (a
    ``GenGuard``, a ``RemoteGenGuard`` or anything with ``moderate``); ``reward_config`` as for
    ``--reward-config``. What ``/get_reward``, the OpenRLHF reward file and the verl manager share."""

    def __init__(self, guard: Any, reward_config: Mapping[str, Any] | None = None) -> None:
        from guard_reward.rewards.safety import SafetyReward

        kwargs = reward_kwargs(reward_config)
        self.failure_value = float(kwargs["failure_value"])
        self.reward = SafetyReward(guard, **kwargs)

    def __call__(self, queries: Sequence[str], prompts: Sequence[str]) -> dict[str, Any]:
        return get_reward(self.reward, queries, prompts, self.failure_value)

    def score(
        self, messages: Sequence[list[dict[str, Any]]], responses: Sequence[str | list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """The same for prompts already given as message lists (responses: strings or completion messages)."""
        samples = [(list(m), r) for m, r in zip(messages, responses, strict=True)]
        return score_samples(self.reward, samples, self.failure_value)
