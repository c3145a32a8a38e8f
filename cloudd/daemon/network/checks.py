"""The codec's strict checks of a message's fields, written against its dataclass.

A node agent loads no pydantic for the wire (issue 18: the library costs a node about
10.5 MiB of its 40), so the checks pydantic's strict `TypeAdapter` made are made here, with
pydantic's own words: the refusals are part of the protocol's tests, and a differential test
(tests/fuzz/test_codec_differential.py) holds the two to the same answers.

What a field may hold is read once, when a type is registered (`Shape.of`): each annotation
becomes a small function from parsed JSON to the field's value, so decoding a message
reflects on nothing. The annotations the catalogue uses are the ones understood: str, int
(not a boolean, not a float), float (an integer is one too), bool, None and `X | None`,
enums (by value), `tuple[X, ...]`, fixed tuples, frozenset, list, dict with string keys,
nested dataclasses (keys they do not name are ignored, as pydantic ignores them) and
`Annotated` with this module's markers `Parsed`, `AfterCheck` and `Written` (what pydantic's
`PlainValidator`, `AfterValidator` and `PlainSerializer` did; this module never imports
pydantic). Anything else is refused at registration, so a new kind of field cannot slip
through unchecked.

Integers are not bounded here: the codec refuses those beyond 64 bits before any check.
A dataclass's `__post_init__` runs as it does for pydantic: a `ValueError` from it is one
refusal ("Value error, ..."), any other exception (a `ClouddError`) goes to the caller.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from cloudd.errors import LocalProtocolError

#: A field error as pydantic words it: where (field names and item indices, innermost
#: last) and what.
Problem = tuple[tuple[str | int, ...], str]
#: Parsed JSON in, the field's value out; on a refusal it appends its problems (located
#: relative to the value) and returns `BAD`.
Check = Callable[[Any, list[Problem]], Any]
#: A field's value in, what `json.dumps` writes for it out.
Dump = Callable[[Any], Any]


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


#: What a check returns when it refused the value.
BAD: Any = _Bad()

_MISSING = "Field required"


def _fail(problems: list[Problem], msg: str) -> Any:
    problems.append(((), msg))
    return BAD


def _under(problems: list[Problem], start: int, where: str | int) -> None:
    """Place the problems a part added (from `start` on) under `where`."""
    for i in range(start, len(problems)):
        loc, msg = problems[i]
        problems[i] = ((where, *loc), msg)


def _value_error(problems: list[Problem], exc: ValueError) -> Any:
    return _fail(problems, f"Value error, {exc}")


# -- the scalars -----------------------------------------------------------------------------


def _check_str(value: Any, problems: list[Problem]) -> Any:
    return value if type(value) is str else _fail(problems, "Input should be a valid string")


def _check_int(value: Any, problems: list[Problem]) -> Any:
    return value if type(value) is int else _fail(problems, "Input should be a valid integer")


def _check_float(value: Any, problems: list[Problem]) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:  # strict JSON takes an integer for a float, and makes it one
        return float(value)
    return _fail(problems, "Input should be a valid number")


def _check_bool(value: Any, problems: list[Problem]) -> Any:
    return value if type(value) is bool else _fail(problems, "Input should be a valid boolean")


def _check_none(value: Any, problems: list[Problem]) -> Any:
    return None if value is None else _fail(problems, "Input should be None")


def _dump_float(value: Any) -> Any:
    # pydantic writes a float that is not finite as null (its `ser_json_inf_nan`)
    return value if math.isfinite(value) else None


def _same(value: Any) -> Any:
    return value


_SCALARS: dict[object, tuple[Check, Dump]] = {
    str: (_check_str, _same),
    int: (_check_int, _same),
    float: (_check_float, _dump_float),
    bool: (_check_bool, _same),
    type(None): (_check_none, _same),
}


# -- the compound types ----------------------------------------------------------------------


def _enum(cls: type[enum.Enum]) -> tuple[Check, Dump]:
    members = {(type(m.value), m.value): m for m in cls}
    values = [repr(m.value) for m in cls]
    expected = values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
    refusal = f"Input should be {expected}"

    def check(value: Any, problems: list[Problem]) -> Any:
        if type(value) in (str, int, float, bool):
            member = members.get((type(value), value))
            if member is not None:
                return member
        return _fail(problems, refusal)

    return check, _dump_enum


def _dump_enum(value: Any) -> Any:
    return value.value


def _optional(inner: Check) -> Check:
    def check(value: Any, problems: list[Problem]) -> Any:
        return None if value is None else inner(value, problems)
    return check


def _each(parts: Iterable[tuple[str | int, Check, Any]], problems: list[Problem]) -> Any:
    """Check each (where, check, value) of a tuple, list, set or mapping: the values, or
    `BAD` with every part's problems placed under its index or key."""
    out = []
    bad = False
    for where, check, value in parts:
        start = len(problems)
        got = check(value, problems)
        if got is BAD:
            _under(problems, start, where)
            bad = True
        else:
            out.append(got)
    return BAD if bad else out


def _required(value: Any, problems: list[Problem]) -> Any:
    return _fail(problems, _MISSING)


def _items(item: Check, make: Callable[[list[Any]], Any]) -> Check:
    """A JSON array of `item`s made into a tuple, list or frozenset."""

    def check(value: Any, problems: list[Problem]) -> Any:
        if type(value) is not list:
            return _fail(problems, "Input should be a valid array")
        out = _each(((i, item, v) for i, v in enumerate(value)), problems)
        return BAD if out is BAD else make(out)

    return check


def _fixed_tuple(items: list[Check]) -> Check:
    size = len(items)

    def check(value: Any, problems: list[Problem]) -> Any:
        if type(value) is not list:
            return _fail(problems, "Input should be a valid array")
        if len(value) > size:
            return _fail(problems, f"Tuple should have at most {size} items after "
                                   f"validation, not {len(value)}")
        given = len(value)
        out = _each(((i, items[i], value[i]) if i < given else (i, _required, None)
                     for i in range(size)), problems)
        return BAD if out is BAD else tuple(out)

    return check


def _mapping(item: Check) -> Check:
    def check(value: Any, problems: list[Problem]) -> Any:
        if type(value) is not dict:
            return _fail(problems, "Input should be an object")
        out = _each(((k, item, v) for k, v in value.items()), problems)
        return BAD if out is BAD else dict(zip(value, out, strict=True))

    return check


def _dump_items(item: Dump) -> Dump:
    if item is _same:
        return list
    return lambda value: [item(v) for v in value]


def _dump_fixed(items: list[Dump]) -> Dump:
    if all(d is _same for d in items):
        return list
    return lambda value: [d(v) for d, v in zip(items, value, strict=True)]


def _dump_mapping(item: Dump) -> Dump:
    return lambda value: {k: item(v) for k, v in value.items()}


# -- Annotated: the markers ------------------------------------------------------------------


class _Marker:
    """A function that a field's `Annotated` carries for the checks."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.func!r})"


class Parsed(_Marker):
    """The field's value is `func(the JSON value)`, in place of its type's check (a
    `ValueError` is the refusal): an IP address from its text."""


class AfterCheck(_Marker):
    """After the type's check, the field's value is `func(value)` (a `ValueError` is the
    refusal): rules across the parts of a value."""


class Written(_Marker):
    """What JSON writes for the field is `func(value)`: the text of an IP address."""


def _annotated(base: tuple[Check, Dump], metadata: tuple[Any, ...],
               where: str) -> tuple[Check, Dump]:
    check, dump = base
    for meta in metadata:
        if isinstance(meta, Parsed):
            check = _plain(meta.func)
        elif isinstance(meta, AfterCheck):
            check = _after(check, meta.func)
        elif isinstance(meta, Written):
            dump = meta.func
        else:
            raise LocalProtocolError(f"{where}: the codec's checks do not know {meta!r}")
    return check, dump


def _plain(func: Callable[[Any], Any]) -> Check:
    def check(value: Any, problems: list[Problem]) -> Any:
        try:
            return func(value)
        except ValueError as exc:
            return _value_error(problems, exc)
    return check


def _after(inner: Check, func: Callable[[Any], Any]) -> Check:
    def check(value: Any, problems: list[Problem]) -> Any:
        got = inner(value, problems)
        if got is BAD:
            return BAD
        try:
            return func(got)
        except ValueError as exc:
            return _value_error(problems, exc)
    return check


# -- dataclasses -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    check: Check
    #: how the field's value is written (None: as it is)
    dump: Dump | None
    #: a default value, or a default factory's function, or neither (the field is required)
    default: Any
    factory: Callable[[], Any] | None
    #: the one type a JSON value of this field has when it is taken as it is (None: none)
    exact: type | None


#: The scalar checks that take a value of one type as it is, and that type: `Shape.check`
#: takes such a value itself, without a call, and calls the check only to refuse one.
_EXACT: dict[Check, type] = {_check_str: str, _check_int: int, _check_float: float,
                             _check_bool: bool}
_ABSENT: Any = object()


class Shape:
    """What a dataclass's fields may hold, read from its annotations once."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        #: the names of its fields, which the codec checks a body's keys against
        self.names: frozenset[str] = frozenset()
        self._fields: tuple[_Field, ...] = ()
        self._table: tuple[tuple[str, type | None, Check, Any, Any], ...] = ()
        self._dumps: tuple[tuple[str, Dump | None], ...] = ()
        # As pydantic does: an instance is made with its fields set, then `__post_init__`
        # (a dataclass with slots goes through its `__init__`).
        self._fill = "__slots__" not in cls.__dict__
        self._post_init = getattr(cls, "__post_init__", None)

    @classmethod
    def of(cls, dc: type, *, _seen: dict[type, Shape] | None = None) -> Shape:
        """The shape of dataclass `dc` and of every dataclass its fields hold; refuses an
        annotation the checks do not understand, with the field it is on."""
        seen = {} if _seen is None else _seen
        if dc in seen:
            return seen[dc]
        try:
            hints = typing.get_type_hints(dc, include_extras=True)
        except (NameError, TypeError) as exc:
            raise LocalProtocolError(
                f"{dc.__qualname__}: cannot read its annotations: {exc}") from None
        shape = cls(dc)
        seen[dc] = shape  # before its fields: a dataclass may hold itself
        fields = []
        for f in dataclasses.fields(dc):
            if not f.init:
                raise LocalProtocolError(f"{dc.__qualname__}.{f.name}: init=False fields "
                                         "cannot travel")
            check, dump = _compile(hints[f.name], f"{dc.__qualname__}.{f.name}", seen)
            factory = None if f.default_factory is dataclasses.MISSING else f.default_factory
            fields.append(_Field(f.name, check, None if dump is _same else dump, f.default,
                                 factory, _EXACT.get(check)))
        shape._fields = tuple(fields)
        shape.names = frozenset(f.name for f in fields)
        shape._table = tuple((f.name, f.exact, f.check, f.default, f.factory) for f in fields)
        shape._dumps = tuple((f.name, f.dump) for f in fields)
        return shape

    def check(self, value: Any, problems: list[Problem]) -> Any:
        """The instance that `value` (a parsed JSON object) describes, or `BAD` with the
        problems appended. Keys that name no field are ignored (the codec refuses them at
        the top, pydantic ignores them in nested dataclasses)."""
        if type(value) is not dict:
            return _fail(problems, "Input should be an object")
        args = {}
        bad = False
        for name, exact, check, default, factory in self._table:
            got = value.get(name, _ABSENT)
            if got is _ABSENT:
                if factory is not None:
                    args[name] = factory()
                elif default is not dataclasses.MISSING:
                    args[name] = default
                else:
                    problems.append(((name,), _MISSING))
                    bad = True
                continue
            if type(got) is not exact:
                start = len(problems)
                got = check(got, problems)
                if got is BAD:
                    _under(problems, start, name)
                    bad = True
                    continue
            args[name] = got
        if bad:
            return BAD
        try:
            if not self._fill:
                return self.cls(**args)
            msg: Any = object.__new__(self.cls)
            msg.__dict__.update(args)
            if self._post_init is not None:
                msg.__post_init__()
            return msg
        except ValueError as exc:  # `__post_init__` refused it; a ClouddError goes up as is
            return _value_error(problems, exc)

    def dump(self, msg: Any) -> dict[str, Any]:
        """`msg`'s fields as `json.dumps` writes them."""
        return {name: getattr(msg, name) if dump is None else dump(getattr(msg, name))
                for name, dump in self._dumps}


def _compile(hint: Any, where: str, seen: dict[type, Shape]) -> tuple[Check, Dump]:
    """The check and the dump for one annotation."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        kinds = {type(m) for m in hint.__metadata__}
        # a parser and a writer stand in for the type: it need not be known
        known = {Parsed, Written} <= kinds
        base = (_check_str, _same) if known else _compile(args[0], where, seen)
        return _annotated(base, hint.__metadata__, where)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        shape = Shape.of(hint, _seen=seen)
        return shape.check, shape.dump
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            check, dump = _compile(rest[0], where, seen)
            return _optional(check), (lambda v: None if v is None else dump(v))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        check, dump = _compile(args[0], where, seen)
        return _items(check, tuple), _dump_items(dump)
    if origin is tuple and args and Ellipsis not in args:
        parts = [_compile(a, where, seen) for a in args]
        return _fixed_tuple([c for c, _ in parts]), _dump_fixed([d for _, d in parts])
    if origin in (frozenset, list) and len(args) == 1:
        check, dump = _compile(args[0], where, seen)
        return _items(check, origin), _dump_items(dump)
    if origin is dict and len(args) == 2 and args[0] is str:
        check, dump = _compile(args[1], where, seen)
        return _mapping(check), _dump_mapping(dump)
    raise LocalProtocolError(f"{where}: the codec's checks do not know {hint!r}")
