"""Frozen dataclasses read strictly from parsed YAML, without pydantic.

pydantic costs an agent about 10.5 MiB of memory, and a node agent (one in every VM) has a
budget of 40 (docs/operations.md, "An agent's footprint"). Its own settings need far less
than pydantic: mappings of numbers, text, paths and flags. So they are plain frozen
dataclasses, and this module reads them: unknown keys, wrong types and values out of range
are refused, each with one sentence at its key path, worded as `cloudd.config.problems`
worded pydantic's errors (the operator reads the same refusal as when pydantic read the file).

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


def _typed(hint: Any, limits: FieldLimits, value: Any, loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """`value` checked against the type `hint` and `limits`, converted as pydantic would
    (`_value` adds the `LengthLimits` of a list or a text)."""
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


#: What `\s` matches in pydantic's (Rust) regex: Unicode's White_Space, as a character
#: class's body. Python's `\s` also matches \x1c-\x1f, which an e-mail pattern of
#: `[^\s@]` would then refuse where pydantic took it.
_WHITE_SPACE = "\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@cache
def _pattern(text: str) -> re.Pattern[str]:
    """`text` compiled to match as pydantic's (Rust) regex does: a final `$` is the end of the
    text, where Python's would also match before a final newline ("pm1\\n"), and each `\\s`
    matches the white space it matches there (not Python's `\\x1c`-`\\x1f`)."""
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
    text = "".join(out)
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


def _value(hint: Any, limits: FieldLimits, value: Any,
           loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """`_typed`, and the `LengthLimits` of a list or a text."""
    if not isinstance(limits, LengthLimits):
        return _typed(hint, limits, value, loc)
    if value is None and type(None) in get_args(hint):
        return None, []
    if type(None) in get_args(hint):
        (hint,) = (a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is not list:
        if (limits.max_length is not None and isinstance(value, str)
                and len(value) > limits.max_length):
            return value, [FieldRefusal(loc, f"{show(value)} should have at most "
                                        f"{_plural(limits.max_length, 'character')}")]
        return _typed(hint, limits, value, loc)
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


def pydantic_words(refusal: FieldRefusal, data: Any) -> str:
    """`refusal` of a value of `data` in pydantic's own words ("Input should be a valid
    integer"), as a node's providers have quoted a cloud's settings since they were pydantic
    models: the tests' `shared.pydantic_problems.sentence` turned back. The value is looked
    up at the refusal's place, since the sentence quotes it and pydantic's words do not."""
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


# ----------------------------------------------------------------------------------------
# The manifest's input models (`cloudd.config.model`, `cloudd.config.users`).
#
# Their types say more than the agent's settings do: lists and mappings with bounds on how
# many items they hold, a check on each item of a list (every address), a value that is a
# list or a text, and fields whose presence matters (a node's entry that says more than its
# address). A field's type and limits are written together, `Annotated[T, ValueLimits(...)]`, as
# pydantic's `Field(...)` was, so that a list's items carry their own (`list[Address]`).
# Each refusal is worded, placed and ordered as pydantic's was (tests/config/
# test_manifest_differential.py holds the two side by side). These models are only ever
# built by `read_model`: nothing checks them when built in Python.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueLimits(FieldLimits):
    """`FieldLimits`, and the most characters (a text) or items (a list, a mapping)."""

    max_length: int | None = None


_NONE = ValueLimits()
M = TypeVar("M")
#: Where `read_model` keeps the names of the fields the text gave (pydantic's
#: `model_fields_set`): an attribute beside the dataclass's fields, so that it is never
#: compared, shown, or taken for a field.
_GIVEN = "_given_fields"


def given(model: Any) -> frozenset[str]:
    """The names of the fields the text gave `model` (read by `read_model`), in no order."""
    return model.__dict__.get(_GIVEN, frozenset())  # type: ignore[no-any-return]


def read_model(cls: type[M], data: dict[Any, Any],
               loc: Loc = ()) -> tuple[M | None, list[FieldRefusal]]:
    """Like `read`, for a model whose fields are written `Annotated[T, ValueLimits(...)]`; the
    instance remembers the fields it was given (`given`)."""
    values: dict[str, Any] = {}
    problems: list[FieldRefusal] = []
    hints = _annotated(cls)
    for name, hint in hints.items():
        if name in data:
            got, refused = read_value(hint, data[name], (*loc, name))
            problems += refused
            values[name] = got
        elif _required(cls, name):
            problems.append(FieldRefusal((*loc, name), "is required"))
    for key in data:
        if not isinstance(key, str):
            problems.append(FieldRefusal((*loc, _key_loc(key)), "keys should be strings"))
        elif key not in hints:
            problems.append(FieldRefusal((*loc, key), "unknown field", at_key=True))
    if problems:
        return None, problems
    model = cls(**values)
    object.__setattr__(model, _GIVEN, frozenset(values))
    return model, []


def read_value(hint: Any, value: Any, loc: Loc = (),
               limits: ValueLimits = _NONE) -> tuple[Any, list[FieldRefusal]]:
    """`value` (found at `loc`) checked against `hint`, a type written as the manifest's
    models write theirs: a model, a list, a mapping, a union, a literal or a scalar, each
    maybe `Annotated` with its `ValueLimits` (`limits`: those of the field it is the type of)."""
    hint, own = _limits_of(hint)
    if own is not _NONE and limits is not _NONE:  # an item's checks and its field's bounds
        raise TypeError(f"limits both on {hint} and on the optional field it is the type of")
    limits = own if limits is _NONE else limits
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(get_args(hint)):
            return None, []
        if len(arms) > 1:
            return _either(arms, limits, value, loc)
        return read_value(arms[0], value, loc, limits)
    if origin is list:
        return _list(get_args(hint)[0], limits, value, loc)
    if origin is dict:
        return _mapping(get_args(hint)[1], limits, value, loc)
    if _is_group(hint):
        if not isinstance(value, dict):
            return value, [_type(loc, f"a valid dictionary or instance of {hint.__name__}",
                                 value)]
        return read_model(hint, value, loc)
    if hint is Any:
        return value, []
    n = limits.max_length
    if isinstance(value, str) and n is not None and len(value) > n:
        return value, [FieldRefusal(loc, f"{show(value)} should have at most {n} "
                                    f"character{'' if n == 1 else 's'}")]
    return _value(hint, limits, value, loc)  # a literal or a scalar: as the settings'


_ANNOTATED: dict[type, dict[str, Any]] = {}


def _annotated(cls: type) -> dict[str, Any]:
    """Each field's type of `cls` with its `Annotated` limits, in the declared order; the
    annotations resolved once per class."""
    if cls not in _ANNOTATED:
        hints = get_type_hints(cls, include_extras=True)
        _ANNOTATED[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _ANNOTATED[cls]


def _limits_of(hint: Any) -> tuple[Any, ValueLimits]:
    """(the type, its limits) of a type maybe written `Annotated[T, ValueLimits(...)]`."""
    for extra in getattr(hint, "__metadata__", ()):
        if isinstance(extra, ValueLimits):
            return hint.__origin__, extra
    return hint, _NONE


def _items(n: int) -> str:
    return f"{n} item{'' if n == 1 else 's'}"


def _count(loc: Loc, limits: ValueLimits, n: int, *, what: str = "") -> FieldRefusal | None:
    """Why `n` items (or characters, of a union's value) are too few or too many."""
    if limits.max_length is not None and n > limits.max_length:
        return FieldRefusal(loc, f"{what}should have at most {_items(limits.max_length)} "
                            f"after validation, not {n}")
    if limits.min_length is not None and n < limits.min_length:
        return FieldRefusal(loc, f"{what}should have at least {_items(limits.min_length)} "
                            f"after validation, not {n}")
    return None


def _list(item: Any, limits: ValueLimits, value: Any, loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """A list and each of its items. Too many items is said alone, before any item is read
    (pydantic stops there); too few, only once every item was read without a refusal."""
    if not isinstance(value, list):
        return value, [_type(loc, "a valid list", value)]
    if limits.max_length is not None and len(value) > limits.max_length:
        return value, [_count(loc, limits, len(value))]  # type: ignore[list-item]
    items, problems = [], []
    for i, each in enumerate(value):
        got, refused = read_value(item, each, (*loc, i))
        items.append(got)
        problems += refused
    too_few = None if problems else _count(loc, limits, len(items))
    return items, problems if too_few is None else [too_few]


def _mapping(item: Any, limits: ValueLimits, value: Any,
             loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """A mapping of text keys (`dict[str, T]`): each key, then its value, in order."""
    if not isinstance(value, dict):
        return value, [_type(loc, "a valid dictionary", value)]
    out, problems = {}, []
    for key, each in value.items():
        at = key if isinstance(key, str) else _key_loc(key)
        if not isinstance(key, str):
            problems.append(_type((*loc, at, "[key]"), "a valid string", key))
        got, refused = read_value(item, each, (*loc, at))
        out[key] = got
        problems += refused
    too_few = None if problems else _count(loc, limits, len(out))
    return out, problems if too_few is None else [too_few]


def _either(arms: list[Any], limits: ValueLimits, value: Any,
            loc: Loc) -> tuple[Any, list[FieldRefusal]]:
    """The first arm of a union that takes `value` (`list[Address] | str`), then the field's
    bounds on its length, worded for any value; or every arm's refusals, each placed under
    the arm's name as pydantic names it."""
    problems: list[FieldRefusal] = []
    for arm in arms:
        got, refused = read_value(arm, value, loc)
        if not refused:
            bad = _count(loc, limits, len(got), what="value ")
            return got, [] if bad is None else [bad]
        at = (*loc, _tag(arm))
        problems += [dataclasses.replace(r, loc=(*at, *r.loc[len(loc):])) for r in refused]
    return value, problems


def _tag(hint: Any) -> str:
    """How pydantic names an arm of a union in a refusal's place: `str`,
    `list[function-after[ip_address(), str]]`."""
    bare, limits = _limits_of(hint)
    name = f"list[{_tag(get_args(bare)[0])}]" if get_origin(bare) is list else bare.__name__
    if limits.check is not None:
        return f"function-after[{limits.check.__name__}(), {name}]"
    return name
