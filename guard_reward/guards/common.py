"""What both guards share: device and dtype placement, local-or-hub loading, the KV-cache keyword of the
installed transformers and the context-window policy.

Context policy (both guards): the judged (last) message is always kept whole. When the rendered conversation does
not fit the guard's window, the oldest turns are dropped first; when only one earlier turn is left and it is still
too long, its content is cut from the start, keeping the part nearest the judged message. If the judged message
alone does not fit, :class:`ContextTooLongError` is raised. Every trimmed input is flagged (``truncated=True``)
and counted.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from guard_reward.conversations import Conversation, with_last_content
from guard_reward.faults import CONTEXT_TOO_LONG, SampleError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ContextTooLongError(SampleError):
    """The judged message alone does not fit the guard's context window (a per-sample failure,
    reason ``"context_too_long"``)."""

    def __init__(self, message: str) -> None:
        super().__init__(CONTEXT_TOO_LONG, message)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means this process's own accelerator: under ``accelerate`` each rank gets its local device (one
    guard per process), otherwise the current CUDA device, else the CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} asks for CUDA, but this machine (or this torch build) has no CUDA "
                "device; use device='cpu' or leave the device unset"
            )
        return dev
    if "LOCAL_RANK" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ:
        from accelerate import PartialState

        return PartialState().device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``: bfloat16 on a GPU that supports it, float32 elsewhere. Strings name a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not accepted; use a torch.dtype or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def hub_kwargs(name_or_path: str | os.PathLike, *, what: str = "model", **kw: Any) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``: a local folder is loaded with ``local_files_only=True`` so it
    never touches the network; a well-formed hub id goes to the hub; a path that looks local but does not
    exist raises ``FileNotFoundError("no such folder: …")`` (see :func:`checkpoint_source`).

    A hub id while the hub cannot be reached (:func:`hub_unreachable`, one probe a minute) is loaded from
    the local cache when it is there, and otherwise raises :class:`HubUnreachableError` (naming it as ``what``)
    at once — instead of the hub client's retries, about 30 s of backoff before the same answer.
    """
    out = dict(kw)
    if checkpoint_source(name_or_path) == "local":
        out.setdefault("local_files_only", True)
    elif not out.get("local_files_only") and not _offline_mode():
        from huggingface_hub import constants, try_to_load_from_cache

        why = hub_unreachable(constants.ENDPOINT)
        if why is not None:
            name = os.fspath(name_or_path)
            if not isinstance(try_to_load_from_cache(name, "config.json", revision=out.get("revision")), str):
                raise HubUnreachableError(
                    f"cannot load the {what} {name!r}: the model hub ({constants.ENDPOINT}) is unreachable ({why}) "
                    "and the model is not in the local cache; download it where the hub is reachable, or pass "
                    "a local checkpoint folder"
                )
            logger.warning("the model hub is unreachable: %s is loaded from the local cache", name)
            out["local_files_only"] = True
    return out


#: Seconds the hub's address has to accept a connection before a hub id is called unreachable.
HUB_CONNECT_TIMEOUT = 5.0


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


#: ``{endpoint: (monotonic time, answer)}`` of :func:`hub_unreachable`: one probe serves every load of a command.
_HUB_PROBES: dict[str, tuple[float, str | None]] = {}
#: Seconds an answer of :func:`hub_unreachable` is reused (a long-lived process sees a network come back).
HUB_PROBE_TTL = 60.0


def hub_unreachable(endpoint: str, timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why the hub at ``endpoint`` (a URL) cannot be reached — no TCP connection within ``timeout`` seconds
    — or ``None`` when it can; the answer is reused for :data:`HUB_PROBE_TTL` seconds. Behind a proxy
    (``HTTPS_PROXY`` …) the answer is ``None``: only the hub client, through the proxy, can tell."""
    import time

    now = time.monotonic()
    if endpoint in _HUB_PROBES and now - _HUB_PROBES[endpoint][0] < HUB_PROBE_TTL:
        return _HUB_PROBES[endpoint][1]
    answer = _probe(endpoint, timeout)
    _HUB_PROBES[endpoint] = (now, answer)
    return answer


def _probe(endpoint: str, timeout: float) -> str | None:
    import socket
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(endpoint)
    if not parts.hostname or urllib.request.getproxies().get(parts.scheme):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no connection to {parts.hostname}:{port} within {timeout:g} s"
    except OSError as exc:  # no route, refused, name not resolved
        return f"{parts.hostname}:{port}: {exc.strerror or exc}"


def checkpoint_source(name_or_path: str | os.PathLike) -> str:
    """``"local"`` for an existing folder, ``"hub"`` for a well-formed hub id (``name`` or ``owner/name``).

    Raises ``FileNotFoundError("no such folder: …")`` for anything that looks like a local path and does not
    exist — it starts with ``./``, ``../``, ``/`` or ``~``, has more than one ``/`` or an OS separator, ends
    with a separator, or its parent folder exists here — so a typo is never sent to the hub as a malformed id.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return "local"
    if path.exists():
        raise NotADirectoryError(f"{text} is a file; a checkpoint is a folder (or a hub id)")
    if _looks_local(text):
        raise FileNotFoundError(f"no such folder: {text}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ValueError(
            f"{text!r} is neither an existing folder nor a well-formed hub id ('name' or 'owner/name')"
        ) from None
    return "hub"


def _looks_local(text: str) -> bool:
    if text in (".", "..", "") or text.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    if os.path.isabs(text) or text.count("/") > 1 or text.endswith(("/", os.sep)):
        return True
    if os.sep != "/" and os.sep in text:
        return True
    parent = Path(text).parent
    return parent != Path(".") and parent.exists()


class HubUnreachableError(OSError):
    """A checkpoint named by hub id could not be fetched: the hub is offline or unreachable and the files are
    not in the local cache."""


def _hub_failure(exc: BaseException) -> str | None:
    """What went wrong when ``exc`` (or an exception it was raised from) is a hub failure, else ``None``."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GatedRepoError):
            return "it is gated on the model hub: accept its licence there and log in (hf auth login)"
        if isinstance(current, RepositoryNotFoundError):
            return "the model hub has no such model (check the id; log in for a private one)"
        if isinstance(current, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)):
            why = "offline mode is on (HF_HUB_OFFLINE)" if _offline_mode() else "no connection"
            return (
                f"the model hub is unreachable ({why}) and the model is not in the local cache; download it "
                "where the hub is reachable, or pass a local checkpoint folder"
            )
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def hub_errors(name_or_path: str | os.PathLike, what: str = "model") -> Iterator[None]:
    """Turn a hub failure while loading ``name_or_path`` into a :class:`HubUnreachableError` (or a
    ``FileNotFoundError`` for a missing hub model) naming the model id."""
    try:
        yield
    except Exception as exc:
        why = _hub_failure(exc)
        if why is None:
            raise
        raise HubUnreachableError(f"cannot load the {what} {os.fspath(name_or_path)!r}: {why}") from exc


def read_config_json(name_or_path: str | os.PathLike, **kw: Any) -> dict[str, Any]:
    """The checkpoint's raw ``config.json`` (local folder or hub id), as a dict."""
    path = Path(name_or_path).expanduser()
    if checkpoint_source(name_or_path) == "local":
        file = path / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"{path} has no config.json; is it a model checkpoint folder?")
        return json.loads(file.read_text())
    from huggingface_hub import hf_hub_download

    kw = hub_kwargs(name_or_path, **kw)  # fails at once when the hub is unreachable and nothing is cached
    with hub_errors(name_or_path):
        return json.loads(Path(hf_hub_download(str(name_or_path), "config.json", **kw)).read_text())


#: The names a model forward takes its KV cache by, newest first: transformers 5.24 renamed the argument and the
#: output field ``past_key_values`` to ``cache`` (the old name warns until its removal: 5.40 for model forwards,
#: 6.0 for ``generate``).
CACHE_NAMES = ("cache", "past_key_values")
CACHE_RENAMED_IN = (5, 24)


def cache_kwarg(model: Any) -> str:
    """The keyword ``model``'s forward, and its ``generate``, take the KV cache by: ``"cache"`` or
    ``"past_key_values"``.

    Read from the forward's signature, which is what transformers' own ``generate`` checks its keyword
    arguments against: the answer fits the model actually called on whatever release is installed, without
    a version table to keep true (a model class that still takes the old name on a newer release is served
    too). A forward that takes only ``**kwargs`` (a wrapper such as ``Qwen3StreamGuardModel``) is answered by
    its ``base_model``; failing that, by the installed transformers' version.
    """
    for module in (model, getattr(model, "base_model", None)):
        if module is not None:
            name = _declared_cache_name(type(module))
            if name is not None:
                return name
    return _release_cache_name()


@functools.cache
def _declared_cache_name(cls: type) -> str | None:
    """The cache keyword named in ``cls.forward``'s signature, ``None`` when it names neither (one look per
    class: the streaming session asks on every step)."""
    try:
        params = inspect.signature(cls.forward).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None
    return next((name for name in CACHE_NAMES if name in params), None)


def _release_cache_name() -> str:
    import transformers

    release = tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())
    return "cache" if release >= CACHE_RENAMED_IN else "past_key_values"


def output_cache(outputs: Any) -> Any:
    """The KV cache a model forward returned: the ``cache`` field where the output declares one (transformers
    >= 5.24), else ``past_key_values``. Read by declared field, so the deprecated alias property of newer
    releases (and its warning) is never touched."""
    fields = getattr(outputs, "__dataclass_fields__", ())
    return outputs.cache if "cache" in fields else outputs.past_key_values


def fit_to_context(
    conversation: Conversation, n_tokens: Callable[[Conversation], int], limit: int
) -> tuple[Conversation, bool]:
    """Apply the context policy (module docstring). ``n_tokens`` renders and counts a conversation."""
    if n_tokens(conversation) <= limit:
        return conversation, False
    kept = list(conversation)
    while len(kept) > 2 and n_tokens(kept) > limit:
        kept.pop(0)
    if len(kept) == 2 and n_tokens(kept) > limit:
        kept = _cut_earlier_turn(kept, n_tokens, limit)
    if n_tokens(kept) > limit:
        raise ContextTooLongError(
            f"the judged {kept[-1]['role']} message alone needs {n_tokens(kept[-1:])} tokens with the template, "
            f"more than the guard's context window of {limit}"
        )
    return kept, True


def _cut_earlier_turn(
    pair: Conversation, n_tokens: Callable[[Conversation], int], limit: int
) -> Conversation:
    """Keep the longest suffix of the earlier turn's content that fits (binary search over characters)."""
    earlier = pair[0]["content"]
    if n_tokens(pair[1:]) > limit:
        return pair[1:]
    lo, hi = 0, len(earlier)  # number of characters kept from the end
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = [with_last_content([pair[0]], earlier[len(earlier) - mid :])[0], pair[1]]
        if n_tokens(trial) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return pair[1:]
    return [with_last_content([pair[0]], earlier[len(earlier) - lo :])[0], pair[1]]
