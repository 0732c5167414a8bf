"""Qwen3Guard-Gen served by vLLM (or another OpenAI-compatible server): ``GenGuard.moderate`` over HTTP, exact.

The guard renders the Gen chat template itself, with the checkpoint's own tokenizer (loaded here from the
``tokenizer`` folder or hub id, by default the model the server reports it loaded), and sends **token ids** to
``/v1/completions``, so what is judged is token for token what the local :class:`~guard_reward.guards.gen.GenGuard`
judges (same units per thinking mode, same context policy, same de-duplication).

Label probabilities mirror :mod:`guard_reward.guards.gen_scoring` exactly: after the forced ``Safety:`` every
label's full token sequence is scored, ``log P(label) = Σ_k log P(label_k | prompt, "Safety:", label_<k)``,
then renormalised over the three labels. The local guard reads all positions of the label trie in one pass;
here each trie position is one prompt (``ids + "Safety:" + the trie path``) with ``max_tokens: 1`` and the
label tokens' log-probabilities asked by id (vLLM's ``logprob_token_ids``, with ``logprobs: 0`` and
``return_tokens_as_token_ids``). For the Qwen vocabulary that is 3 prompts per judged unit (``" Safe"`` and
``" Unsafe"`` are one token, ``" Controversial"`` three), sent with many units' prompts in one request;
they share their whole prefix, which vLLM's prefix cache encodes once. ``decode=True`` adds one greedy prompt
per unit (``max_tokens = max_new_tokens``, stopping at the end of turn, ``" Yes"``/``" No"`` asked by id at
every step for ``p_refusal``) in a second request of the same chunk.

Transport: :class:`~guard_reward.guards.remote_client.GuardClient` (pooled keep-alive ``http.client``, retries
with backoff on connection errors, timeouts and 429/5xx). Units are sent in chunks of ``chunk_size``, up to
``parallel`` chunks at once. A chunk unanswered after the retries gives its samples ``Verdict(level=None,
reason="guard_unavailable")`` (``on_error="skip"``, the default, as the other remote guards) or raises; a
prompt the server refuses as longer than its context gives that sample ``reason="context_too_long"`` (the chunk
is re-sent prompt by prompt to find it). The server is checked at the first call (model name, template,
``logprob_token_ids``), and a mismatch raises :class:`ServerMismatch` naming what is missing and what is
accepted.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guard_reward.conversations import Conversation, ThinkingMode, check_thinking_mode, moderation_of
from guard_reward.faults import (
    CONTEXT_TOO_LONG,
    GUARD_UNAVAILABLE,
    NO_ANSWER,
    NON_FINITE,
    UNPARSEABLE,
    OnError,
    SampleError,
    check_on_error,
)
from guard_reward.guards.gen import check_gen_template, gen_label_tree
from guard_reward.guards.gen_units import (
    checked_conversations,
    encode_conversation,
    plan_units,
    render_units,
    sample_verdict,
)
from guard_reward.guards.gen_verdicts import decoded_verdict, refusal_token_ids
from guard_reward.guards.remote_client import (
    GuardClient,
    GuardUnavailable,
    RemoteGuardError,
    openai_api_root,
    served_model,
)
from guard_reward.types import Verdict

logger = logging.getLogger(__name__)

#: What a server must accept on ``/v1/completions`` (named in :class:`ServerMismatch`).
ACCEPTED = (
    "an OpenAI-compatible server whose /v1/completions takes token-id prompts and returns the log-probabilities "
    "of chosen token ids ('logprob_token_ids' with 'return_tokens_as_token_ids'; vLLM 0.32 does), serving a "
    "Qwen3Guard-Gen model (a chat template that asks for 'Safety:')"
)
Rendered = tuple[tuple[int, ...], bool, str]


class ServerMismatch(ValueError):
    """The server cannot serve this guard (wrong model name, no ``logprob_token_ids``, not a Gen model)."""


def _mismatch(url: str, what: str) -> ServerMismatch:
    return ServerMismatch(f"{url}: {what}. Accepted: {ACCEPTED}.")


class OpenAIGenGuard:
    """A Qwen3Guard-Gen behind an OpenAI-compatible ``/v1/completions`` (vLLM first), with ``GenGuard.moderate``.

    Args:
        url: the server's API root, ``http://HOST:PORT/v1`` (``/v1`` is added when missing).
        model: the served model name; ``None`` takes the server's only model.
        tokenizer: the checkpoint folder or hub id of the tokenizer (chat template included); ``None`` takes the
            path the server loaded (vLLM's ``/v1/models`` ``root``), then the model name.
        thinking, max_new_tokens: as :class:`~guard_reward.guards.gen.GenGuard`.
        max_length: context window in tokens; defaults to the server's ``max_model_len``.
        chunk_size: judged units per request; ``parallel``: requests in flight at once.
        timeout, retries, backoff, backoff_max: per request, as the other remote guards.
        on_error: ``"skip"`` (default): a sample the server cannot judge is a ``level=None`` verdict with its
            reason, counted in :attr:`stats`; ``"raise"``: it raises.
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        tokenizer: str | None = None,
        thinking: ThinkingMode = "answer",
        max_new_tokens: int = 32,
        max_length: int | None = None,
        chunk_size: int = 32,
        parallel: int = 4,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        on_error: OnError = "skip",
    ) -> None:
        if max_new_tokens < 4:
            raise ValueError(f"max_new_tokens must be >= 4 to fit a verdict line, got {max_new_tokens}")
        self.client = GuardClient(
            openai_api_root(url),
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            backoff_max=backoff_max,
            chunk_size=chunk_size,
            parallel=parallel,
            on_error=on_error,
        )
        self.model = model
        self.tokenizer_source = tokenizer
        self.thinking: ThinkingMode = check_thinking_mode(thinking)
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.tokenizer: Any = None
        self.stats: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return self.client.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        # the tokenizer is loaded again where the guard is unpickled (a TRL worker, a Ray actor)
        return {**self.__dict__, "tokenizer": None}

    # ------------------------------------------------------------------ the first call

    def connect(self) -> OpenAIGenGuard:
        """Check the server once (done by the first ``moderate``): the model is served, the tokenizer loads and
        carries a Gen template, ``logprob_token_ids`` is honoured. Raises :class:`ServerMismatch` otherwise, and
        :class:`GuardUnavailable` when the server does not answer."""
        if self.tokenizer is not None:
            return self
        try:
            self.model, card = served_model(self.client, self.model)
        except ValueError as exc:
            raise _mismatch(self.url, str(exc)) from None
        if self.max_length is None:
            self.max_length = int(card.get("max_model_len") or 0) or None
            if self.max_length is None:
                raise _mismatch(self.url, "the model card has no 'max_model_len'; pass max_length")
        source = self.tokenizer_source or card.get("root") or self.model
        tokenizer = _load_tokenizer(source, self.url)
        try:
            check_gen_template(tokenizer)
        except ValueError as exc:
            raise _mismatch(self.url, f"{source}: {exc}") from None
        self.tree = gen_label_tree(tokenizer)
        self.label_ids = sorted({tok for steps in self.tree.label_steps for _, tok in steps})
        self.refusal_ids = refusal_token_ids(tokenizer)
        self.end_ids = _end_ids(tokenizer)
        self._probe(tokenizer)
        self.tokenizer = tokenizer
        return self

    def _probe(self, tokenizer: Any) -> None:
        """One scoring request on a rendered probe: every asked id must come back with its log-probability."""
        ids = encode_conversation(tokenizer, [{"role": "user", "content": "hi"}]) + list(self.tree.prefix_ids)
        try:
            answer = self.client.request("POST", "/completions", self._body([ids], self.label_ids, 1))
        except RemoteGuardError as exc:
            raise _mismatch(self.url, f"the scoring request was refused ({exc})") from None
        choice = (answer.get("choices") or [{}])[0]
        got = _asked_logprobs(choice, 0)
        missing = [t for t in self.label_ids if t not in got]
        if missing:
            raise _mismatch(
                self.url,
                f"the answer lacks the log-probabilities of the asked token ids {missing} ('logprob_token_ids' "
                "ignored: an older vLLM or another server)",
            )

    # ------------------------------------------------------------------ public API

    def moderate(
        self,
        conversations: Sequence[Conversation],
        decode: bool = False,
        thinking: ThinkingMode | None = None,
        on_error: OnError | None = None,
    ) -> list[Verdict]:
        """One :class:`Verdict` per conversation, in input order (see ``GenGuard.moderate``; ``on_error``
        defaults to the guard's, ``"skip"``)."""
        start = time.perf_counter()
        mode = check_thinking_mode(thinking or self.thinking)
        policy = self.client.on_error if on_error is None else check_on_error(on_error)
        convs = checked_conversations(conversations, policy)
        try:
            self.connect()
        except GuardUnavailable as exc:
            if policy == "raise":
                raise
            return self._all_unavailable(convs, str(exc))
        units, plans = plan_units(convs, mode)
        assert self.max_length is not None and self.tokenizer is not None
        limit = self.max_length - self.tree.n_extra - (self.max_new_tokens if decode else 1)
        rendered = render_units(self.tokenizer, units, limit, policy, self.stats)
        judged: dict[int, Verdict] = {}
        ok = [u for u, r in enumerate(rendered) if not isinstance(r, SampleError)]
        for u, v in zip(ok, self._judge_unique([rendered[u] for u in ok], decode, policy), strict=True):  # type: ignore[misc]
            judged[u] = v
        for u, r in enumerate(rendered):
            if isinstance(r, SampleError):
                judged[u] = Verdict.failed(r.reason, str(r), moderation_of(units[u]))
        verdicts = [sample_verdict(plan, judged) for plan in plans]
        failures = sum(not v.ok and not v.empty for v in verdicts)
        self.stats.update(requested=len(convs), failures=failures)
        if failures:
            logger.warning("%d of %d samples got no verdict (level=None)", failures, len(convs))
        self.stats["seconds"] += time.perf_counter() - start
        # as the local guard: a sample it cannot judge raises (unparseable verdict lines do not)
        if policy == "raise":
            for i, v in enumerate(verdicts):
                if v.reason not in (None, NO_ANSWER, UNPARSEABLE):
                    raise SampleError(v.reason, f"{self.url} ({self.model}), sample {i}: {v.error}")
        return verdicts

    def _all_unavailable(self, convs: list[Any], message: str) -> list[Verdict]:
        self.stats.update(requested=len(convs), failures=len(convs), **{GUARD_UNAVAILABLE: len(convs)})
        logger.warning("%s; %d samples get reason %s", message, len(convs), GUARD_UNAVAILABLE)
        out = []
        for c in convs:
            if isinstance(c, SampleError):
                out.append(Verdict.failed(c.reason, str(c)))
            else:
                out.append(Verdict.failed(GUARD_UNAVAILABLE, message, moderation_of(c)))
        return out

    # ------------------------------------------------------------------ judging

    def _judge_unique(self, rendered: list[Rendered], decode: bool, policy: str) -> list[Verdict]:
        """Judge each distinct token sequence once, in chunks of ``chunk_size`` (``parallel`` at once)."""
        first_of: dict[tuple[int, ...], int] = {}
        unique: list[int] = []
        for i, (ids, _, _) in enumerate(rendered):
            if ids not in first_of:
                first_of[ids] = i
                unique.append(i)
        self.stats.update(judged=len(unique), deduplicated=len(rendered) - len(unique))
        size = self.client.chunk_size
        chunks = [[rendered[i] for i in unique[k : k + size]] for k in range(0, len(unique), size)]
        if len(chunks) > 1 and self.client.parallel > 1:
            with ThreadPoolExecutor(min(self.client.parallel, len(chunks))) as pool:
                parts = list(pool.map(lambda c: self._judge_chunk(c, decode, policy), chunks))
        else:
            parts = [self._judge_chunk(c, decode, policy) for c in chunks]
        results = dict(zip(unique, (v for part in parts for v in part), strict=True))
        return [results[first_of[ids]] for ids, _, _ in rendered]

    def _judge_chunk(self, items: list[Rendered], decode: bool, policy: str) -> list[Verdict]:
        """Label probabilities (one prompt per trie position per unit), then the greedy verdicts if asked."""
        positions = _trie_paths(self.tree)
        prompts = [list(ids) + list(self.tree.prefix_ids) + path for ids, _, _ in items for path in positions]
        try:
            scored = self._complete(prompts, self.label_ids, 1)
        except GuardUnavailable as exc:
            return self._unavailable(items, exc, policy)
        verdicts: list[Verdict] = []
        n_pos = len(positions)
        for k, (_, truncated, moderation) in enumerate(items):
            rows = scored[k * n_pos : (k + 1) * n_pos]
            if any(isinstance(r, SampleError) for r in rows):
                err = next(r for r in rows if isinstance(r, SampleError))
                self.stats[err.reason] += 1  # once per unit, however many of its prompts were refused
                verdicts.append(Verdict.failed(err.reason, str(err), moderation))  # type: ignore[arg-type]
                continue
            verdicts.append(self._label_verdict(rows, truncated, moderation))  # type: ignore[arg-type]
        if not decode:
            return verdicts
        todo = [k for k, v in enumerate(verdicts) if v.probs]
        try:
            generated = self._complete(
                [list(items[k][0]) for k in todo], list(self.refusal_ids), self.max_new_tokens, greedy=True
            )
        except GuardUnavailable as exc:
            failed = self._unavailable([items[k] for k in todo], exc, policy)
            for k, v in zip(todo, failed, strict=True):
                verdicts[k] = v
            return verdicts
        for k, choice in zip(todo, generated, strict=True):
            _, truncated, moderation = items[k]
            if isinstance(choice, SampleError):
                self.stats[choice.reason] += 1
                verdicts[k] = Verdict.failed(choice.reason, str(choice), moderation)  # type: ignore[arg-type]
                continue
            verdicts[k] = self._decoded(choice, verdicts[k].probs, truncated, moderation)
        return verdicts

    def _label_verdict(self, rows: list[dict[str, Any]], truncated: bool, moderation: str) -> Verdict:
        # the same sums and renormalisation as gen_scoring.label_log_probs + softmax (in float64 here)
        logp = [_asked_logprobs(row, 0) for row in rows]
        scores = []
        for steps in self.tree.label_steps:
            scores.append(sum(logp[pos].get(tok, -math.inf) for pos, tok in steps))
        top = max(scores)
        if not all(math.isfinite(s) for s in scores):
            return Verdict.failed(
                NON_FINITE, f"the server returned non-finite label log-probabilities {scores}", moderation
            )  # type: ignore[arg-type]
        exp = [math.exp(s - top) for s in scores]
        probs = {label: e / sum(exp) for label, e in zip(self.tree.labels, exp, strict=True)}
        level = self.tree.labels[max(range(len(scores)), key=scores.__getitem__)]
        return Verdict(level=level, probs=probs, moderation=moderation, truncated=truncated)  # type: ignore[arg-type]

    def _decoded(
        self, choice: dict[str, Any], probs: dict[str, float], truncated: bool, moderation: str
    ) -> Verdict:
        ids = _generated_ids(choice)
        cut = next((k for k, t in enumerate(ids) if t in self.end_ids), len(ids))
        yes, no = self.refusal_ids

        def yes_no(step: int) -> tuple[float, float] | None:
            asked = _asked_logprobs(choice, step)
            if yes not in asked or no not in asked:
                return None
            return asked[yes], asked[no]

        return decoded_verdict(self.tokenizer, ids[:cut], yes_no, probs, truncated, moderation)

    def _unavailable(self, items: list[Rendered], exc: Exception, policy: str) -> list[Verdict]:
        if policy == "raise":
            raise exc
        self.stats[GUARD_UNAVAILABLE] += len(items)
        logger.warning("%s; %d units get reason %s", exc, len(items), GUARD_UNAVAILABLE)
        return [Verdict.failed(GUARD_UNAVAILABLE, str(exc), m) for _, _, m in items]  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the protocol

    def _body(
        self, prompts: list[list[int]], asked: list[int], max_tokens: int, greedy: bool = False
    ) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": 0,
            "logprob_token_ids": asked,
            "return_tokens_as_token_ids": True,
        }
        if greedy:
            body.update(stop_token_ids=self.end_ids, skip_special_tokens=False)
        else:
            body["ignore_eos"] = True  # the one scored step must never be cut short
        return body

    def _complete(
        self, prompts: list[list[int]], asked: list[int], max_tokens: int, greedy: bool = False
    ) -> list[dict[str, Any] | SampleError]:
        """One ``/v1/completions`` call for ``prompts``: their choices in order. A context-length refusal
        re-sends the prompts one by one; the refused ones become ``SampleError(context_too_long)``."""
        if not prompts:
            return []
        self.stats["requests"] += 1
        try:
            answer = self.client.request(
                "POST", "/completions", self._body(prompts, asked, max_tokens, greedy)
            )
        except RemoteGuardError as exc:
            if not exc.context_too_long:
                raise
            if len(prompts) == 1:
                return [SampleError(CONTEXT_TOO_LONG, f"the server refused the prompt ({exc})")]
            return [r for p in prompts for r in self._complete([p], asked, max_tokens, greedy)]
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts):
            raise RemoteGuardError(200, f"/completions: expected {len(prompts)} choices, got {answer!r:.300}")
        return sorted(choices, key=lambda c: c.get("index", 0))


def _trie_paths(tree: Any) -> list[list[int]]:
    """The token path after the prefix to each scoring position: ``[]`` for the prefix end, then each trie
    node's ancestors and itself (scoring position ``1 + i`` is node ``i``, as in ``LabelTree.label_steps``)."""
    paths: list[list[int]] = [[]]
    ancestors = tree.node_ancestors
    for i in range(int(tree.node_ids.numel())):
        chain = [j for j in range(i + 1) if bool(ancestors[i, j])]
        chain.sort(key=lambda j: int(tree.node_depth[j]))
        paths.append([int(tree.node_ids[j]) for j in chain])
    return paths


def _token_id(key: Any) -> int | None:
    """``"token_id:123"`` (``return_tokens_as_token_ids``) -> 123."""
    if isinstance(key, str) and key.startswith("token_id:"):
        tail = key.split(":", 1)[1]
        return int(tail) if tail.lstrip("-").isdigit() else None
    return None


def _asked_logprobs(choice: dict[str, Any], step: int) -> dict[int, float]:
    """The log-probabilities by token id at generation step ``step`` of one choice (``{}`` if absent)."""
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    if step >= len(tops) or not isinstance(tops[step], dict):
        return {}
    out = {}
    for key, value in tops[step].items():
        tok = _token_id(key)
        if tok is not None and value is not None:
            out[tok] = float(value)
    return out


def _generated_ids(choice: dict[str, Any]) -> list[int]:
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    ids = [_token_id(t) for t in tokens]
    if any(t is None for t in ids):
        raise RemoteGuardError(200, f"/completions: generated tokens not given as token ids: {tokens[:5]!r}")
    return ids  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(source: str) -> Any:
    """One tokenizer per source and process (a Qwen vocabulary takes seconds to load; guards of one server share
    it, and only read it)."""
    from transformers import AutoTokenizer

    from guard_reward.guards.common import hub_kwargs

    return AutoTokenizer.from_pretrained(source, **hub_kwargs(source))


def _end_ids(tokenizer: Any) -> list[int]:
    # the local guard's end of turn: the tokenizer's eos, <|im_end|> and the generation config's eos, which is
    # <|im_end|> and <|endoftext|> in Qwen3 checkpoints
    ids = {
        tokenizer.eos_token_id,
        *(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")),
    }
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def _load_tokenizer(source: str, url: str) -> Any:
    try:
        return _cached_tokenizer(source)
    except Exception as exc:
        raise _mismatch(
            url,
            f"the tokenizer {source!r} could not be loaded ({type(exc).__name__}: {exc}); pass tokenizer= the "
            "checkpoint folder or hub id of the served model",
        ) from None
