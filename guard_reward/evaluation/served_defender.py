"""A policy served behind an OpenAI-compatible ``/v1/chat/completions`` (``vllm serve``, SGLang, TGI, …) as the
defender of red teaming (``AttackReward``'s ``Defender`` protocol).

Each prompt is one chat-completions request with the prompt as the user turn (after an optional system turn),
sent ``parallel`` at a time; the answers come back in input order. The transport is the remote guards' own,
:class:`~guard_reward.guards.remote_client.GuardClient`: pooled keep-alive ``http.client``, retries with backoff
and jitter on connection errors, timeouts and 429/5xx.

Failures cost only their own prompt: a prompt the server does not answer after the retries (``unavailable``),
refuses as longer than its context (``context_too_long``) or refuses otherwise (``refused``, any other 4xx),
an answer without text (``no_answer``: no choices, a null content, a body that is not JSON) and a prompt that is
not a string (``invalid_input``) give ``None`` for that prompt; ``AttackReward`` counts it in
``attack/defender_failures`` and rewards the rest. Each failure is counted by reason in :attr:`ServedDefender.stats`
and logged with an example.

A server that cannot be reached at the first call is an error (:class:`DefenderUnreachable`, naming the URL), not
``None`` for every prompt: at the start it is almost always a wrong URL or a server not yet up, and a reward fed
only ``None`` would train on no signal while looking alive. (Inside ``AttackReward`` the error is still caught, logged
and counted per prompt, so a run does not die of it.) Once the server has answered, a later outage is per prompt.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guard_reward.faults import CONTEXT_TOO_LONG, INVALID_INPUT
from guard_reward.guards.remote_client import (
    GuardClient,
    GuardUnavailable,
    RemoteGuardError,
    openai_api_root,
    served_model,
)

logger = logging.getLogger(__name__)

#: Failure reasons of one prompt (keys of :attr:`ServedDefender.stats`, beside ``context_too_long`` and
#: ``invalid_input``).
UNAVAILABLE = "unavailable"
REFUSED = "refused"
NO_ANSWER = "no_answer"
#: Body fields the defender sets itself: ``extra_body`` may not override them (one request, one answer).
_OWN_FIELDS = frozenset({"model", "messages", "n", "stream"})

#: One prompt's outcome: ``(answer, None, finish_reason)`` or ``(None, failure reason, message)``.
Outcome = tuple[str | None, str | None, str]


class DefenderUnreachable(ConnectionError):
    """The served policy did not answer ``GET /v1/models`` at the first call, after the retries."""


class ServedDefender:
    """A served policy as the defender: ``defender(prompts) -> answers``, one chat completion per prompt.

    Args:
        url: the server's API root, ``http://HOST:PORT/v1`` (``/v1`` is added when missing).
        model: the served model name; ``None`` takes the one model the server lists at ``/v1/models`` (it is an
            error when it lists several: name one).
        max_tokens, temperature, top_p: sampling settings of every answer (``temperature=0``: greedy).
        parallel: requests in flight at once.
        timeout: seconds per request (a whole answer is generated within one request).
        retries, backoff, backoff_max: retries per request, with exponential backoff (as the remote guards).
        system_prompt: an optional system turn before each prompt.
        extra_body: further body fields sent with every request (``{"seed": 0}``, ``{"top_k": 20}``,
            ``{"chat_template_kwargs": {"enable_thinking": False}}``); ``model``, ``messages``, ``n`` and
            ``stream`` are the defender's own and not accepted.

    Only the answer's ``content`` is the answer (a reasoning server's ``reasoning_content`` is not judged); an
    answer cut at ``max_tokens`` is still an answer, counted under ``stats["cut_at_max_tokens"]``. Picklable (the
    connection pool is rebuilt where it is unpickled, and in a forked child at its first call).
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        parallel: int = 16,
        timeout: float = 300.0,
        retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        system_prompt: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if max_tokens < 1 or parallel < 1:
            raise ValueError(f"max_tokens and parallel must be >= 1, got {max_tokens}, {parallel}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a string or None, got {type(system_prompt).__name__}")
        clash = sorted(_OWN_FIELDS & set(extra_body or {}))
        if clash:
            raise ValueError(
                f"extra_body may not set {clash}: the defender sends one request with one answer per prompt; "
                f"pass the model as model= and other sampling fields (seed, top_k, stop, ...) in extra_body"
            )
        # chunk_size is the guards' batching, unused here: every request carries one prompt
        self.client = GuardClient(
            openai_api_root(url),
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            backoff_max=backoff_max,
            chunk_size=1,
            parallel=parallel,
            on_error="skip",
        )
        self.model = model
        self.max_tokens, self.temperature, self.top_p = int(max_tokens), float(temperature), float(top_p)
        self.parallel = int(parallel)
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        #: Lifetime counts: ``prompts``, ``answered``, ``failures``, one key per failure reason,
        #: ``cut_at_max_tokens``, ``seconds`` (the HTTP requests and retries are in ``client.stats``).
        self.stats: Counter[str] = Counter()
        self._connected = False

    @property
    def url(self) -> str:
        return self.client.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r})"

    def connect(self) -> ServedDefender:
        """Check the server once (the first call does it): it answers, and serves ``model`` (or exactly one model
        when ``model`` is ``None``). Raises :class:`DefenderUnreachable` or ``ValueError`` naming what is wrong."""
        if self._connected:
            return self
        try:
            self.model, _ = served_model(self.client, self.model)
        except GuardUnavailable as exc:
            raise DefenderUnreachable(
                f"the served policy at {self.url} cannot be reached ({exc}); start its server (e.g. `vllm serve "
                f"MODEL --port PORT`) or pass the url of a running one"
            ) from None
        except (RemoteGuardError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{self.url}/models did not list models ({exc}); the url must be the API root of an "
                f"OpenAI-compatible server, http://HOST:PORT/v1"
            ) from None
        except ValueError as exc:
            raise ValueError(f"{self.url}: {exc}") from None
        self._connected = True
        return self

    def __call__(self, prompts: list[str]) -> list[str | None]:
        """The answers to ``prompts``, in order; ``None`` for a prompt that got no answer (module docstring)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got one string; wrap it in a list")
        prompts = list(prompts)
        if not prompts:
            return []
        start = time.perf_counter()
        self.connect()
        if len(prompts) == 1 or self.parallel == 1:
            outcomes = [self._answer(p) for p in prompts]
        else:
            with ThreadPoolExecutor(min(self.parallel, len(prompts))) as pool:
                outcomes = list(pool.map(self._answer, prompts))  # map keeps input order
        self._count(outcomes)
        self.stats["seconds"] += time.perf_counter() - start
        return [answer for answer, _, _ in outcomes]

    # ------------------------------------------------------------------ one prompt

    def _body(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            **self.extra_body,
        }

    def _answer(self, prompt: Any) -> Outcome:
        """One request; runs in a worker thread, so it only returns what happened and :meth:`_count` counts."""
        if not isinstance(prompt, str):
            return None, INVALID_INPUT, f"a prompt must be a string, got {type(prompt).__name__}"
        try:
            answer = self.client.request("POST", "/chat/completions", self._body(prompt))
        except GuardUnavailable as exc:
            return None, UNAVAILABLE, str(exc)
        except RemoteGuardError as exc:
            return None, CONTEXT_TOO_LONG if exc.context_too_long else REFUSED, str(exc)
        except ValueError as exc:  # a 200 whose body is not JSON
            return None, NO_ANSWER, f"the answer is not JSON ({exc})"
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not choices or not isinstance(choices[0], dict):
            return None, NO_ANSWER, f"the answer has no choices: {answer!r:.200}"
        choice = min(choices, key=lambda c: c.get("index", 0))
        content = (choice.get("message") or {}).get("content")
        if not isinstance(content, str):
            return None, NO_ANSWER, f"the answer has no text content: {choice!r:.200}"
        return content, None, str(choice.get("finish_reason"))

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        reasons: Counter[str] = Counter()
        example: dict[str, str] = {}
        for _, reason, message in outcomes:
            if reason is None:
                self.stats["answered"] += 1
                self.stats["cut_at_max_tokens"] += message == "length"
                continue
            reasons[reason] += 1
            example.setdefault(reason, message)
        self.stats.update(reasons, prompts=len(outcomes), failures=sum(reasons.values()))
        if reasons:
            logger.warning(
                "%s (%s): %d of %d prompts got no answer (%s); e.g. %s",
                self.url, self.model, sum(reasons.values()), len(outcomes), dict(reasons),
                "; ".join(f"{k}: {v[:300]}" for k, v in example.items()),
            )  # fmt: skip
