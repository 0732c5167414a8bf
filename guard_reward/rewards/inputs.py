"""What every guard reward shares: TRL's calling convention, a picklable guard handle, names, logging.

TRL 1.16 calls a reward function with keyword arguments only — ``prompts``, ``completions``,
``completion_ids``, ``trainer_state``, ``log_metric``, ``log_extra`` and every dataset column — and the async
GRPO trainer calls it in a spawned child process with only ``prompts``/``completions``/``completion_ids`` and
the columns. So every argument but ``prompts`` and ``completions`` is optional here, and a reward pickles
without its model: a guard given as a checkpoint path is (re)loaded on first use in whichever process calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from guard_reward.conversations import Conversation, flatten_tools, to_conversation

logger = logging.getLogger(__name__)

#: Keyword arguments TRL passes that are not dataset columns.
TRL_KWARGS = ("completion_ids", "trainer_state", "log_metric", "log_extra", "environments")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def check_name(name: object) -> str:
    """A reward name becomes TRL's metric key ``rewards/<name>/mean`` and a completions-table column."""
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(
            f"reward name must be a non-empty string without '/' or surrounding spaces, got {name!r}"
        )
    return name


def load_gen(source: str, **kwargs: Any) -> Any:
    """A Gen guard from a checkpoint (folder or hub id) or a served model (``openai+http://…``)."""
    from guard_reward.guards.gen_spec import load_gen_guard

    return load_gen_guard(source, **kwargs)


def load_stream(source: str, **kwargs: Any) -> Any:
    """A Stream guard from a checkpoint (folder or hub id)."""
    from guard_reward.guards.stream import StreamGuard

    return StreamGuard.from_pretrained(source, **kwargs)


#: Guards loaded from a checkpoint in this process, by loader, checkpoint and load settings: rewards given the
#: same checkpoint share one copy of its weights (a reward, its cost and an attacker's reward on one 4B guard
#: would otherwise hold it three times). Weak values: a guard that no reward holds any more is freed.
_LOADED: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()
_LOADING = threading.Lock()


class GuardHandle:
    """A guard given either as a loaded object or as a checkpoint to load lazily.

    Handles of the same checkpoint, loader and load settings share one loaded guard in a process (the guards
    only run inference). Pickling keeps only the checkpoint reference when there is one (the unpickling process
    loads its own copy with the handle's device settings: TRL's async GRPO child sees no GPU, so there a remote
    guard is the way to share one); an object given directly is pickled with its weights.
    """

    def __init__(
        self, guard: Any, loader: Callable[..., Any], load_kwargs: dict[str, Any] | None = None
    ) -> None:
        if isinstance(guard, (str, os.PathLike)):
            self.source: str | None = os.fspath(guard)
            self._guard = None
        else:
            self.source = None
            self._guard = guard
        self.loader = loader
        self.load_kwargs = dict(load_kwargs or {})

    def get(self) -> Any:
        if self._guard is None:
            key = (self.loader.__qualname__, str(self.source), repr(sorted(self.load_kwargs.items())))
            with _LOADING:
                guard = _LOADED.get(key)
                if guard is None:
                    logger.info("loading guard %s", self.source)
                    guard = self.loader(self.source, **self.load_kwargs)
                    # a guard that is not weakly referenceable is not shared: this handle keeps its own
                    with contextlib.suppress(TypeError):
                        _LOADED[key] = guard
                else:
                    logger.info("guard %s: sharing the copy already loaded in this process", self.source)
            self._guard = guard
        return self._guard

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.source is not None:
            state["_guard"] = None
        return state


def normalise_message(m: Any) -> dict[str, Any]:
    """One message with its reasoning folded back into the content as a think block (TRL's response parsing
    may move it to a separate field). A missing content next to ``tool_calls`` (a tool-call-only turn) is
    ``""``; without tool calls it stays missing, which validation reports as bad input."""
    if not isinstance(m, dict):
        return m
    out = dict(m)
    if out.get("content") is None and out.get("tool_calls"):
        out["content"] = ""
    for key in _REASONING_KEYS:
        reasoning = out.pop(key, None)
        if isinstance(reasoning, str) and reasoning and out.get("role") == "assistant":
            out["content"] = f"<think>\n{reasoning}\n</think>\n\n{out.get('content') or ''}"
    return out


def response_conversations(prompts: Sequence[Any], completions: Sequence[Any]) -> list[Conversation]:
    """TRL prompts and completions (strings or message lists) -> conversations ending with the completion."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions; they must pair up")
    out = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        check_pair(i, prompt, completion)
        p = prompt if isinstance(prompt, str) else [normalise_message(m) for m in prompt]
        c = completion if isinstance(completion, str) else [normalise_message(m) for m in completion]
        out.append(to_conversation(p, c))
    return out


def check_pair(i: int, prompt: Any, completion: Any) -> None:
    if not isinstance(prompt, (str, list, tuple)):
        raise TypeError(f"prompt {i}: expected a string or a list of messages, got {type(prompt).__name__}")
    if not isinstance(completion, (str, list, tuple)):
        raise TypeError(
            f"completion {i}: expected a string or a list of messages, got {type(completion).__name__}"
        )


def prompt_conversation(prompt: Any) -> Conversation:
    """The prompt as a conversation judged by prompt moderation: up to and including its last user turn (a
    tool result, which becomes a user turn for the guard, is never the judged prompt)."""
    messages = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else [normalise_message(m) for m in prompt]
    )
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("a prompt has no user message, so its harmfulness cannot be judged")
    return flatten_tools(messages[: users[-1] + 1], "prompt")


def unique_prompts(prompts: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Unique prompts in first-seen order and, per input, the index of its unique prompt. TRL repeats each
    prompt ``num_generations`` times in a batch; the guard judges each once."""
    seen: dict[str, int] = {}
    uniques: list[Any] = []
    index = []
    for prompt in prompts:
        key = json.dumps(prompt, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = len(uniques)
            uniques.append(prompt)
        index.append(seen[key])
    return uniques, index


def harm_from_column(values: Sequence[Any], column: str) -> list[float]:
    """A dataset column saying whether each prompt is harmful: bools, 0/1, or ``"harmful"``/``"benign"``."""
    words = {"harmful": 1.0, "unsafe": 1.0, "benign": 0.0, "safe": 0.0, "true": 1.0, "false": 0.0}
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            out.append(float(value))
        elif isinstance(value, str) and value.strip().lower() in words:
            out.append(words[value.strip().lower()])
        else:
            raise ValueError(
                f"column {column!r}, row {i}: {value!r} is not a harmfulness label; use a bool, 0/1, "
                f"or one of {', '.join(words)}"
            )
    return out


def trainer_of(log_metric: Any) -> Any:
    """The trainer behind TRL's ``log_metric`` (a bound method of the trainer), or ``None``."""
    return getattr(log_metric, "__self__", None)


def warn_reward_hacking_risk(reward_name: str, log_metric: Any) -> bool:
    """Warn when the trainer has no KL term (``beta == 0``) and this guard reward is its only reward.

    A guard-only reward without a KL anchor lets the policy stop just before anything risky (short, useless,
    "safe" answers) or refuse everything. Returns whether it warned.
    """
    trainer = trainer_of(log_metric)
    if trainer is None:
        return False
    beta = getattr(trainer, "beta", None)
    funcs = getattr(trainer, "reward_funcs", None)
    if beta is None or funcs is None:
        return False
    if float(beta) == 0.0 and len(funcs) <= 1:
        logger.warning(
            "reward %r is the only reward and the trainer has beta=0 (no KL term): a guard-only reward is "
            "easy to game (stopping before anything risky, refusing everything). Set beta > 0 and/or add a "
            "helpfulness reward (see HybridSafetyReward).",
            reward_name,
        )
        return True
    return False
