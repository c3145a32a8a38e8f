"""Frozen dataclasses read strictly from parsed YAML, without pydantic.

pydantic costs an agent about 10.5 MiB of memory, and a node agent (one in every VM) has a
budget of 40 (docs/operations.md, "An agent's footprint"). Its own settings need far less
than pydantic: mappings of numbers, text, paths and flags. So they are plain frozen
dataclasses, and this module reads them: unknown keys, wrong types and values out of range
are refused, each with one sentence at its key path, worded as `cloudd.config.problems`
words pydantic's errors (the operator reads the same refusal whichever reads the file).

Strict as pydantic's strict mode is: an integer is not a number written as text, and a flag
is `true` or `false`, never 1. The exceptions are pydantic's own: an integer is accepted
where a number is (and stored as a float), and a path is written as text.

A field's limits ride in its `metadata` (`setting(...)`); the field's annotation says its
type. A dataclass that subclasses `Plain` checks its values when built in Python as well,
raising ValueError, so a test or a caller cannot build settings the file would refuse.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

Loc = tuple[str | int, ...]
_SHOW_LIMIT = 60
_I64 = 1 << 63

P = TypeVar("P", bound="Plain")


@dataclass(frozen=True)
class FieldRefusal:
    """One value refused: where (`at_key`: the key itself, not its value), and why."""

    loc: Loc
    message: str
    at_key: bool = False


@dataclass(frozen=True)
class FieldLimits:
    """What a field's value must satisfy beyond its type, checked in pydantic's order: the
    bounds (le, ge, gt), the length, the pattern, then `check`; the first one broken is told."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_length: int | None = None
    pattern: str | None = None
    #: Returns the value to keep (normalized) or raises ValueError with one sentence.
    check: Callable[[Any], Any] | None = None


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
            **limits: Any) -> Any:
    """A dataclass field with a default and its `FieldLimits` (ge, gt, le, min_length, pattern,
    check)."""
    meta = {"limits": FieldLimits(**limits)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def show(value: Any) -> str:
    """`value` as it is quoted back in a refusal: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def ip_address(value: str) -> str:
    """`value` as an IP address written the standard way (a `check`, the manifest's too)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class Plain:
    """Base of the settings dataclasses: values checked (and normalized) once built."""

    def __post_init__(self) -> None:
        problems = []
        for name, hint, limits in _fields(type(self)):
            value = getattr(self, name)
            if _is_group(hint) and isinstance(value, hint):
                continue  # built, so checked
            got, refused = _value(hint, limits, value, (name,))
            problems += refused
            object.__setattr__(self, name, got)
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(
                f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))


_FIELDS: dict[type, tuple[tuple[str, Any, FieldLimits], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, Any, FieldLimits], ...]:
    """(name, type, limits) of each field of `cls`; the annotations resolved once per class."""
    if cls not in _FIELDS:
        hints = get_type_hints(cls)
        _FIELDS[cls] = tuple((f.name, hints[f.name], f.metadata.get("limits", FieldLimits()))
                             for f in dataclasses.fields(cls))
    return _FIELDS[cls]


def read(cls: type[P], data: dict[Any, Any],
         loc: Loc = ()) -> tuple[P | None, list[FieldRefusal]]:
    """`cls` built from the mapping `data` found at `loc`, or None and every refusal.

    Refusals come in pydantic's order: the fields in their declared order, then the keys
    that name no field, in the file's order."""
    values: dict[str, Any] = {}
    problems: list[FieldRefusal] = []
    fields = _fields(cls)
    for name, hint, limits in fields:
        if name in data:
            got, refused = _value(hint, limits, data[name], (*loc, name))
            problems += refused
            values[name] = got
        elif _required(cls, name):
            problems.append(FieldRefusal((*loc, name), "is required"))
    names = {name for name, _, _ in fields}
    for key in data:
        if not isinstance(key, str):
            problems.append(FieldRefusal((*loc, _key_loc(key)), "keys should be strings"))
        elif key not in names:
            problems.append(FieldRefusal((*loc, key), "unknown field", at_key=True))
    if problems:
        return None, problems
    return cls(**values), []


def _is_group(hint: Any) -> bool:
    """Whether the field holds a dataclass of its own (a group, such as `listen`)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _required(cls: type, name: str) -> bool:
    f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return f.default is MISSING and f.default_factory is MISSING


def _key_loc(key: Any) -> str | int:
    """How pydantic names a key that is not text: a small integer as itself, else its repr."""
    if isinstance(key, int) and -_I64 <= key < _I64:
        return int(key)
    return repr(key)


def _value(hint: Any, limits: FieldLimits, value: Any, loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """`value` checked against the type `hint` and `limits`, converted as pydantic would."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None, []
        (hint,) = (a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if origin is Literal:
        options = get_args(hint)
        if value in options and isinstance(value, str):
            return value, []
        return value, [FieldRefusal(loc, f"should be {_alternatives(options)}, not {show(value)}")]
    if origin is list:
        if not isinstance(value, list):
            return value, [_type(loc, "a valid list", value)]
        (item,) = get_args(hint)
        items, problems = [], []
        for i, each in enumerate(value):
            got, refused = _value(item, FieldLimits(), each, (*loc, i))
            items.append(got)
            problems += refused
        return items, problems
    if _is_group(hint):
        if isinstance(value, hint):
            return value, []
        if not isinstance(value, dict):
            return value, [_type(loc, f"a valid dictionary or instance of {hint.__name__}",
                                 value)]
        return read(hint, value, loc)
    got, problem = _SCALARS[hint](value, loc)
    if problem is not None:
        return value, [problem]
    return _limited(limits, value, got, loc)


def _alternatives(options: tuple[Any, ...]) -> str:
    shown = [repr(o) for o in options]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _type(loc: Loc, expected: str, value: Any) -> FieldRefusal:
    return FieldRefusal(loc, f"should be {expected}, not {show(value)}")


def _bool(value: Any, loc: Loc) -> tuple[Any, FieldRefusal | None]:
    return value, None if isinstance(value, bool) else _type(loc, "a valid boolean", value)


def _int(value: Any, loc: Loc) -> tuple[Any, FieldRefusal | None]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    return value, _type(loc, "a valid integer", value)


def _float(value: Any, loc: Loc) -> tuple[Any, FieldRefusal | None]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value), None
        except OverflowError:  # an integer of hundreds of digits
            pass
    return value, _type(loc, "a valid number", value)


def _str(value: Any, loc: Loc) -> tuple[Any, FieldRefusal | None]:
    return value, None if isinstance(value, str) else _type(loc, "a valid string", value)


def _path(value: Any, loc: Loc) -> tuple[Any, FieldRefusal | None]:
    if isinstance(value, (str, Path)):
        return Path(value), None
    return value, FieldRefusal(loc, "input is not a valid path for <class 'pathlib.Path'>")


_SCALARS: dict[Any, Callable[[Any, Loc], tuple[Any, FieldRefusal | None]]] = {
    bool: _bool, int: _int, float: _float, str: _str, Path: _path}


def _limited(limits: FieldLimits, given: Any, value: Any,
             loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """`value` (converted from `given`) checked against `limits`; pydantic's comparisons, so
    that NaN fails every bound."""
    bound = next(_broken(limits, value), None)
    if bound is not None:
        return value, [FieldRefusal(loc, f"should be {bound}, not {show(given)}")]
    if limits.min_length is not None and len(value) < limits.min_length:
        n = limits.min_length
        return value, [FieldRefusal(loc, f"{show(given)} should have at least {n} "
                                    f"character{'' if n == 1 else 's'}")]
    if limits.pattern is not None and not _pattern(limits.pattern).search(value):
        return value, [FieldRefusal(loc, f"{show(given)} should match pattern '{limits.pattern}'")]
    if limits.check is not None:
        try:
            value = limits.check(value)
        except ValueError as exc:
            message = str(exc)
            if isinstance(given, str) and len(given) > _SHOW_LIMIT:
                message = message.replace(repr(given), show(given))
            return value, [FieldRefusal(loc, message)]
    return value, []


def _broken(limits: FieldLimits, value: Any) -> Iterator[str]:
    """The bounds `value` breaks, in pydantic's order (which NaN, breaking all, shows)."""
    if limits.le is not None and not value <= limits.le:
        yield f"less than or equal to {limits.le}"
    if limits.ge is not None and not value >= limits.ge:
        yield f"greater than or equal to {limits.ge}"
    if limits.gt is not None and not value > limits.gt:
        yield f"greater than {limits.gt}"


@cache
def _pattern(text: str) -> re.Pattern[str]:
    """`text` compiled to match as pydantic's (Rust) regex does: a final `$` is the end of the
    text, where Python's would also match before a final newline ("pm1\\n")."""
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1] + r"\Z"
    return re.compile(text)


# -- Lists, their items, and the longest text: the cloud types' settings -------------------
#
# The settings of a cloud type (`cloudd.providers.*.spec`) are read by every node agent, so
# they are plain dataclasses too; they add what the agent's own settings never needed: a
# list's fewest and most items, limits on each of its items, and a text's most characters,
# each refused in pydantic's words and order. A field with such limits declares them with
# `constrained(...)`, whose `LengthLimits` the reader below tells from `FieldLimits`.


@dataclass(frozen=True)
class LengthLimits(FieldLimits):
    """`FieldLimits` and a text's most characters (`max_length`), or a list's fewest and
    most items (`min_length`, `max_length`) and the limits of each item (`items`).

    pydantic's order: a list longer than `max_length` is refused before its items are read;
    one whose items are all valid is then held to `min_length`. A text's length is checked
    before its pattern."""

    max_length: int | None = None
    items: FieldLimits | None = None


def constrained(default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
                **limits: Any) -> Any:
    """A dataclass field with a default (none: the field is required) and its `LengthLimits`."""
    meta = {"limits": LengthLimits(**limits)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


_value_of_type = _value


def _value_within(hint: Any, limits: FieldLimits, value: Any,
                  loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """`_value`, and the `LengthLimits` of a list or a text."""
    if not isinstance(limits, LengthLimits):
        return _value_of_type(hint, limits, value, loc)
    if value is None and type(None) in get_args(hint):
        return None, []
    if type(None) in get_args(hint):
        (hint,) = (a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is not list:
        if (limits.max_length is not None and isinstance(value, str)
                and len(value) > limits.max_length):
            return value, [FieldRefusal(loc, f"{show(value)} should have at most "
                                        f"{_plural(limits.max_length, 'character')}")]
        return _value_of_type(hint, limits, value, loc)
    if not isinstance(value, list):
        return value, [_type(loc, "a valid list", value)]
    if limits.max_length is not None and len(value) > limits.max_length:
        return value, [FieldRefusal(loc, f"should have at most "
                                    f"{_plural(limits.max_length, 'item')} after validation, "
                                    f"not {len(value)}")]
    (item,) = get_args(hint)
    items, problems = [], []
    for i, each in enumerate(value):
        got, refused = _value(item, limits.items or FieldLimits(), each, (*loc, i))
        items.append(got)
        problems += refused
    if not problems and limits.min_length is not None and len(items) < limits.min_length:
        problems.append(FieldRefusal(loc, f"should have at least "
                                     f"{_plural(limits.min_length, 'item')} after validation, "
                                     f"not {len(items)}"))
    return items, problems


# `read` and `Plain` look `_value` up when they run: from here on they check `LengthLimits` too.
_value = _value_within


def pydantic_words(refusal: FieldRefusal, data: Any) -> str:
    """`refusal` of a value of `data` in pydantic's own words ("Input should be a valid
    integer"), as a node's providers have quoted a cloud's settings since they were pydantic
    models: `cloudd.config.problems.sentence` turned back. The value is looked up at the
    refusal's place, since the sentence quotes it and pydantic's words do not."""
    message = refusal.message
    if refusal.at_key:
        return "Extra inputs are not permitted"
    if message == "is required":
        return "Field required"
    shown = show(_at(data, refusal.loc))
    if message.startswith("should be ") and message.endswith(f", not {shown}"):
        return "Input " + message.removesuffix(f", not {shown}")
    if message.startswith(f"{shown} should "):
        return "String" + message.removeprefix(shown)
    if message.startswith("should have "):
        return "List " + message
    return message[:1].upper() + message[1:]


def _at(data: Any, loc: Loc) -> Any:
    """The value at `loc` in `data` (None where there is none)."""
    for part in loc:
        within = isinstance(data, dict) and part in data
        if isinstance(data, list) and isinstance(part, int):
            within = 0 <= part < len(data)
        if not within:
            return None
        data = data[part]
    return data


#: What `\s` matches in pydantic's (Rust) regex: Unicode's White_Space, as a character
#: class's body. Python's `\s` also matches \x1c-\x1f, which an e-mail pattern of
#: `[^\s@]` would then refuse where pydantic took it.
_WHITE_SPACE = "\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_pattern_of_python = _pattern


@cache
def _pattern_as_rust(text: str) -> re.Pattern[str]:
    """`_pattern`, with each `\\s` matching what it matches in pydantic's regex."""
    out, in_class, i = [], False, 0
    while i < len(text):
        step = 2 if text[i] == "\\" else 1
        part = text[i:i + step]
        i += step
        if part == "\\s":
            part = _WHITE_SPACE if in_class else f"[{_WHITE_SPACE}]"
        elif part == "[":
            in_class = True
        elif part == "]":
            in_class = False
        out.append(part)
    return _pattern_of_python("".join(out))


_pattern = _pattern_as_rust
