"""Drop-in clients of a served guard (``guard-reward serve``): ``RemoteGenGuard`` and ``RemoteStreamGuard``.

They have the local guards' methods and return types, so ``SafetyReward``, ``HybridSafetyReward`` and
``TokenSafetyPenalty`` take either. Importing them needs neither transformers, trl nor ray (only the stdlib's
``http.client`` and torch for ``TokenRisk``'s tensors).

Each call is cut into chunks by samples and bytes, sent over pooled keep-alive connections, retried with
backoff and reassembled in input order (:mod:`guard_reward.guards.remote_client`). A chunk still unanswered
after the retries gives each of its samples a failed result with reason ``guard_unavailable``
(``on_error="skip"``, the rewards then count it and give it no signal) or raises :class:`GuardUnavailable`
(``on_error="raise"``); a sample over the server's request limit gets reason ``invalid_input``. A 4xx answer is
a bug in the request and raises :class:`RemoteGuardError` at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from guard_reward.conversations import moderation_of
from guard_reward.faults import OnError
from guard_reward.guards.remote_client import GuardClient, GuardUnavailable, RemoteGuardError
from guard_reward.types import TokenRisk, Verdict
from guard_reward.wire import check_fields, failed_risk, failed_verdict, risk_from_json, verdict_from_json

__all__ = ["GuardUnavailable", "RemoteGenGuard", "RemoteGuardError", "RemoteStreamGuard"]


class _Remote:
    """Constructor and plumbing shared by both remote guards."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        chunk_size: int = 64,
        chunk_bytes: int = 2**20,
        parallel: int = 4,
        on_error: OnError = "skip",
    ) -> None:
        self.client = GuardClient(
            url,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            backoff_max=backoff_max,
            chunk_size=chunk_size,
            chunk_bytes=chunk_bytes,
            parallel=parallel,
            on_error=on_error,
        )

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def stats(self) -> Counter[str]:
        """``requests``, ``retries`` and ``guard_unavailable`` (samples) so far."""
        return self.client.stats

    def health(self) -> dict[str, Any]:
        """``GET /health``: the served guards' names and label maps."""
        return self.client.request("GET", "/health")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class RemoteGenGuard(_Remote):
    """A Qwen3Guard-Gen served by ``guard-reward serve``, with ``GenGuard.moderate``'s interface.

    Args:
        url: the server, ``http://HOST:PORT``.
        timeout: seconds per HTTP request (one chunk).
        retries: retries per chunk after the first attempt.
        backoff, backoff_max: the first retry waits about ``backoff`` seconds, doubling up to ``backoff_max``.
        chunk_size: samples per request at most; ``chunk_bytes``: JSON bytes of samples per request at most
            (1 MiB; a single larger sample goes alone). ``parallel``: requests of one call in flight at once.
        on_error: ``"skip"``: samples of an unanswered chunk get ``Verdict(level=None, reason=
            "guard_unavailable")``; ``"raise"``: :class:`GuardUnavailable`.
    """

    def moderate(
        self,
        conversations: Sequence[Any],
        decode: bool = False,
        thinking: str | None = None,
        on_error: OnError | None = None,
    ) -> list[Verdict]:
        """One :class:`Verdict` per conversation, in input order (see ``GenGuard.moderate``; ``on_error``
        defaults to the client's)."""
        if isinstance(conversations, (str, dict)) or (
            len(conversations) > 0 and isinstance(conversations[0], dict)
        ):
            raise TypeError("moderate() takes a list of conversations; wrap a single conversation in a list")
        convs = [list(c) if isinstance(c, tuple) else c for c in conversations]

        def fail(i: int, reason: str, message: str) -> Verdict:
            try:
                moderation = moderation_of(convs[i])
            except Exception:
                moderation = "response"
            return failed_verdict(moderation, reason, message)

        return self.client.chunked(
            "/v1/gen/moderate",
            {"conversations": convs},
            {"decode": bool(decode), "thinking": thinking},
            "verdicts",
            verdict_from_json,
            fail,
            on_error,
        )


class RemoteStreamGuard(_Remote):
    """A Qwen3Guard-Stream served by ``guard-reward serve``, with ``StreamGuard.score`` / ``score_ids`` /
    ``shares_tokenizer``. Arguments as :class:`RemoteGenGuard` (failed samples get an empty ``TokenRisk``
    with ``reason="guard_unavailable"``; from ``score_ids`` with ``span=(0, 0)``).

    ``binary=True`` (the default) asks for answers in the binary form (``guard_reward.wire``: safetensors,
    float32 as it is, some 200-300 times cheaper to encode and decode than JSON lists); ``False`` asks for JSON.

    ``fields``: the per-token fields to fetch (names of ``wire.TOKEN_FIELDS``; default all of them). The others
    come back as ``wire.placeholder`` s (right shape, NaN or -1, no memory). ``TokenSafetyPenalty`` asks a guard
    left at the default for only what it reads (``wire.SHAPING_FIELDS``: 28 of 72 bytes a token). A call's own
    ``fields=`` overrides it. An unknown name raises ``ValueError`` naming the accepted ones."""

    def __init__(
        self, url: str, *, binary: bool = True, fields: Sequence[str] | None = None, **kw: Any
    ) -> None:
        super().__init__(url, **kw)
        self.binary = binary
        self.fields = None if fields is None else check_fields(fields)
        self._names: tuple[str, ...] | None = None
        self._vocab: dict[str, int] | None = None
        self._rows: int | None = None

    @property
    def category_names(self) -> tuple[str, ...]:
        """The served guard's response category labels (asked once)."""
        if self._names is None:
            self._names = tuple(self.health()["guards"]["stream"]["category_names"])
        return self._names

    @property
    def vocab_rows(self) -> int:
        """Rows of the served guard's embedding table: ids below it are scored as they are (asked once)."""
        if self._rows is None:
            self._rows = int(self.health()["guards"]["stream"]["vocab_rows"])
        return self._rows

    def _fail_names(self) -> tuple[str, ...]:
        try:
            return self.category_names
        except Exception:  # the server is down: the failure still needs a (possibly empty) label list
            return ()

    def _extra(self, thinking: str | None, fields: Sequence[str] | None) -> dict[str, Any]:
        wanted = self.fields if fields is None else check_fields(fields)
        return {"thinking": thinking, **({} if wanted is None else {"fields": list(wanted)})}

    def score(
        self,
        conversations: Sequence[Any],
        *,
        thinking: str | None = None,
        on_error: OnError | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[TokenRisk]:
        """Per-token risk of the last assistant message of each conversation (see ``StreamGuard.score``)."""
        return self.client.chunked(
            "/v1/stream/score",
            {"conversations": list(conversations)},
            self._extra(thinking, fields),
            "risks",
            risk_from_json,
            lambda i, reason, m: failed_risk(self._fail_names(), reason, m, None),
            on_error,
            binary=self.binary,
        )

    def score_ids(
        self,
        prompts: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        *,
        thinking: str | None = None,
        on_error: OnError | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[TokenRisk]:
        """Per-token risk of completions given as guard token ids (see ``StreamGuard.score_ids``)."""
        if len(prompts) != len(completion_ids):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(completion_ids)} completion_ids; one per sample"
            )
        ids = [[int(t) for t in (row.tolist() if hasattr(row, "tolist") else row)] for row in completion_ids]
        return self.client.chunked(
            "/v1/stream/score_ids",
            {"prompts": list(prompts), "completion_ids": ids},
            self._extra(thinking, fields),
            "risks",
            risk_from_json,
            lambda i, reason, m: failed_risk(self._fail_names(), reason, m, (0, 0)),
            on_error,
            binary=self.binary,
        )

    def shares_tokenizer(self, other: Any) -> bool:
        """Whether ``other``'s ids mean the same tokens as the served guard's (its vocabulary, asked once)."""
        if self._vocab is None:
            self._vocab = self.client.request("GET", "/v1/stream/vocab")["vocab"]
        mine = self._vocab
        theirs = other.get_vocab()
        return len(theirs) <= len(mine) and all(mine.get(tok) == i for tok, i in theirs.items())
