"""Check a recipe's keys and value types against its dataclasses before anything is parsed or loaded.

TRL's ``TrlParser`` (an ``HfArgumentParser``) reads a recipe YAML by making each key an argparse default and
then parses the command line. That path has three failure modes a user meets: a YAML value of the wrong shape
(``beta: [0.04]``) is not converted at all and surfaces much later, in the trainer, after the guards loaded; a
wrong type on the command line (``--beta eight``) prints argparse's usage of all ~250 options and exits; and an
unknown key is reported without a hint. :func:`check_recipe` walks the same fields first and raises one
:class:`RecipeError` line naming the key, where it came from, the dataclass field it sets, what was found and
what is accepted, with a ``did you mean`` for a typo. Values are judged the way the parser would take them:
a YAML string or a command-line word is converted (``1e-6`` is a string to YAML and a number to argparse), any
other YAML value must already have the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: YAML keys TRL's parser takes besides the fields (``env``: environment variables set before the run).
EXTRA_KEYS = ("env",)
#: Mapping fields whose values are numbers (per-category weights), checked key by key.
NUMBER_MAPS = ("guard_category_weights", "constraint_category_weights")
_TRUE = ("true", "yes", "t", "y", "1")
_FALSE = ("false", "no", "f", "n", "0")


class RecipeError(ValueError):
    """A recipe key or value the recipe's dataclasses do not accept (one line: key, source, field, accepted)."""


@dataclasses.dataclass(frozen=True)
class _Field:
    owner: str  # the dataclass, e.g. "GRPOConfig"
    name: str
    hint: Any

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"


def recipe_fields(classes: Sequence[type]) -> dict[str, _Field]:
    """Every settable field of ``classes`` by name (the first class that has a name wins, as in the parser)."""
    out: dict[str, _Field] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in out:
                out[f.name] = _Field(cls.__name__, f.name, hints.get(f.name, Any))
    return out


def split_overrides(overrides: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    """``(key, words)`` for each ``--key value`` / ``--key=value`` / ``--flag`` / ``--key a b`` of the command
    line; a word that is not an option raises :class:`RecipeError`."""
    i, args = 0, list(overrides)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise RecipeError(f"unexpected argument {arg!r}: recipe options are written --name value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            yield key, [value]
            i += 1
            continue
        words = []
        i += 1
        while i < len(args) and not args[i].startswith("--"):
            words.append(args[i])
            i += 1
        yield arg[2:], words


def check_recipe(
    data: Mapping[str, Any], overrides: Sequence[str], classes: Sequence[type], source: str
) -> None:
    """Raise :class:`RecipeError` for the first unknown key or ill-typed value of the recipe ``data`` (read
    from ``source``, a file name) or the command-line ``overrides``; return quietly when all fit."""
    fields = recipe_fields(classes)
    known = sorted([*fields, *EXTRA_KEYS])
    for key, value in data.items():
        if key in EXTRA_KEYS:
            continue
        where = f"in {source}"
        field = fields.get(str(key)) or _unknown(f"key {key!r} {where}", str(key), known, "")
        _check_value(field, value, str(key), where, from_text=isinstance(value, str))
    for key, words in split_overrides(overrides):
        where = "on the command line"
        negated = key.startswith("no_") and key[3:] in fields and _accepts(fields[key[3:]].hint, bool)
        field = (
            fields.get(key)
            or (fields[key[3:]] if negated else None)
            or _unknown(f"option --{key} {where}", key, known, "--")
        )
        if negated or (not words and _accepts(field.hint, bool)):
            continue  # --flag / --no_flag: argparse's own spelling of a boolean
        if not words:
            raise RecipeError(f"--{key} {where} ({field.label}) needs a value: --{key} VALUE")
        value: Any = words if len(words) > 1 else words[0]
        if len(words) > 1 and not _list_item(field.hint):
            raise RecipeError(
                f"--{key} {where} ({field.label}) takes one value, got {len(words)}: {' '.join(words)}"
            )
        _check_value(field, value, f"--{key}", where, from_text=True)


def _unknown(what: str, key: str, known: Sequence[str], prefix: str) -> Any:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
    raise RecipeError(
        f"unknown {what}{hint} (a recipe's keys are the fields of its dataclasses: "
        "`guard-reward train --help` says which)"
    )


def _check_value(field: _Field, value: Any, key: str, where: str, *, from_text: bool) -> None:
    hint = field.hint
    if field.name in NUMBER_MAPS and isinstance(value, Mapping):
        for name, weight in value.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise RecipeError(
                    f"{key}.{name} {where} ({field.label}) must be a number, got {_shown(weight)}"
                )
        return
    items = value if isinstance(value, list) else None
    item_hint = _list_item(hint)
    if items is not None and item_hint is not None:
        for i, item in enumerate(items):
            if not _fits(item_hint, item, from_text=isinstance(item, str)):
                raise RecipeError(
                    f"{key}[{i}] {where} ({field.label}) must be {_describe(item_hint)}, got {_shown(item)}"
                )
        return
    if not _fits(hint, value, from_text=from_text):
        raise RecipeError(f"{key} {where} ({field.label}) must be {_describe(hint)}, got {_shown(value)}")


def _branches(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(hint: Any, kind: type) -> bool:
    return any(b is kind for b in _branches(hint))


def _list_item(hint: Any) -> Any:
    for b in _branches(hint):
        if typing.get_origin(b) is list or b is list:
            args = typing.get_args(b)
            return args[0] if args else Any
    return None


def _fits(hint: Any, value: Any, *, from_text: bool) -> bool:
    return any(_fits_one(b, value, from_text) for b in _branches(hint))


def _fits_one(hint: Any, value: Any, from_text: bool) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None or (from_text and str(value).lower() in ("none", "null"))
    if value is None:
        return False
    if origin is typing.Literal:
        return value in typing.get_args(hint) or str(value) in map(str, typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool) or (from_text and str(value).lower() in (*_TRUE, *_FALSE))
    if hint in (int, float):
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)) and not from_text:
            return hint is float or isinstance(value, int)
        try:
            hint(str(value))
        except ValueError:
            return False
        return True
    if hint is str:
        return isinstance(value, (str, int, float, bool))  # a YAML scalar; the field's own check judges it
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return str(value) in {str(m.value) for m in hint}
    if hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return True
        if from_text:
            try:
                return isinstance(json.loads(str(value)), dict)
            except json.JSONDecodeError:
                return False
        return False
    if hint is list or origin is list:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        values = value if isinstance(value, list) else [value]  # argparse's nargs: one word is a list of one
        return all(_fits(item, v, from_text=isinstance(v, str)) for v in values)
    return True  # a class the parser builds itself (e.g. accelerate's ParallelismConfig): not judged here


def _describe(hint: Any) -> str:
    names = []
    for b in _branches(hint):
        if b is type(None):
            names.append("null")
        elif b is bool:
            names.append("true or false")
        elif b is int:
            names.append("an integer")
        elif b is float:
            names.append("a number")
        elif b is str:
            names.append("a string")
        elif b is dict or typing.get_origin(b) is dict:
            names.append("a mapping")
        elif b is list or typing.get_origin(b) is list:
            names.append(f"a list of {_describe(_list_item(b))}")
        elif typing.get_origin(b) is typing.Literal:
            names.append("one of " + ", ".join(map(repr, typing.get_args(b))))
        elif isinstance(b, type) and issubclass(b, enum.Enum):
            names.append("one of " + ", ".join(str(m.value) for m in b))
        else:
            names.append(getattr(b, "__name__", str(b)))
    return " or ".join(dict.fromkeys(names))


def _shown(value: Any) -> str:
    kind = {
        list: "a list",
        dict: "a mapping",
        bool: "a boolean",
        str: "the text",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return f"{kind} {text[:80]}"
