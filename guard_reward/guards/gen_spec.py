"""Where a Qwen3Guard-Gen comes from, as one string: a checkpoint (folder or hub id) or an OpenAI-compatible server.

``openai+http://HOST:PORT[/v1][?model=NAME&tokenizer=PATH&...]`` (or ``openai+https://``) is a Gen served by
vLLM, SGLang or another server with ``/v1/completions`` (:class:`~guard_reward.guards.openai_gen.OpenAIGenGuard`);
anything else is a checkpoint for :class:`~guard_reward.guards.gen.GenGuard`. Every place that takes a Gen guard
by name (the rewards' ``guard=``, ``eval --judge/--judge2/--train-guard``, ``moderate --guard``, the sandbox's
``gen_guard``) goes through :func:`load_gen_guard`, so the spec works in all of them.

Query options: ``model`` (the served name; default the server's only model), ``tokenizer`` (the checkpoint's
tokenizer, folder or hub id; default the path the server loaded), ``chunk_size``, ``parallel``, ``timeout``,
``retries``, ``max_length``.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

SCHEME_PREFIX = "openai+"
#: Query options of the spec and their types.
SPEC_OPTIONS: dict[str, type] = {
    "model": str,
    "tokenizer": str,
    "chunk_size": int,
    "parallel": int,
    "timeout": float,
    "retries": int,
    "max_length": int,
}
#: ``GenGuard.from_pretrained`` settings a served model fixes on the server side: accepted and not used.
ENGINE_SIDE = ("device", "dtype", "token_budget", "max_batch_size", "share_prefix", "revision", "token")


def is_server_spec(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a served Gen (``openai+http://…``) rather than a checkpoint."""
    return isinstance(spec, str) and spec.startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://"))


def parse_server_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``(url, options)`` of ``openai+http://HOST:PORT[/v1]?model=NAME&…``; bad options raise, naming the
    accepted ones."""
    if not is_server_spec(spec):
        raise ValueError(
            f"{spec!r} is not a server spec; expected {SCHEME_PREFIX}http://HOST:PORT/v1?model=NAME"
        )
    parts = urllib.parse.urlsplit(spec[len(SCHEME_PREFIX) :])
    if not parts.hostname:
        raise ValueError(f"{spec!r} has no host; expected {SCHEME_PREFIX}http://HOST:PORT/v1?model=NAME")
    options: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in SPEC_OPTIONS:
            raise ValueError(f"{spec!r}: unknown option {key!r}; accepted: {', '.join(SPEC_OPTIONS)}")
        try:
            options[key] = SPEC_OPTIONS[key](values[-1])
        except ValueError:
            raise ValueError(
                f"{spec!r}: option {key}={values[-1]!r} is not a {SPEC_OPTIONS[key].__name__}"
            ) from None
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return url, options


def load_gen_guard(spec: str | os.PathLike, **kw: Any) -> Any:
    """A Gen guard from a checkpoint (``GenGuard.from_pretrained(spec, **kw)``) or a server spec
    (``OpenAIGenGuard``: ``thinking``, ``max_new_tokens``, ``max_length`` and ``on_error`` apply; the
    settings in :data:`ENGINE_SIDE` belong to the server and are ignored)."""
    if not is_server_spec(spec):
        from guard_reward.guards.gen import GenGuard

        return GenGuard.from_pretrained(spec, **kw)
    from guard_reward.guards.openai_gen import OpenAIGenGuard

    url, options = parse_server_spec(str(spec))
    unknown = sorted(set(kw) - set(ENGINE_SIDE) - {"thinking", "max_new_tokens", "max_length", "on_error"})
    if unknown:
        raise TypeError(f"{spec}: a served Gen guard does not take {unknown}")
    own = {k: v for k, v in kw.items() if k not in ENGINE_SIDE}
    return OpenAIGenGuard(url, **{**own, **options})
