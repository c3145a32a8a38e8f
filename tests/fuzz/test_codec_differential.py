"""The codec's own JSON reader and field checks against pydantic's, which they replaced.

The codec decoded bodies with pydantic_core's `from_json` and a strict pydantic `TypeAdapter`
per message type; it now uses `cloudd.daemon.network.jsontext` and `.checks`, so that an
agent loads no pydantic for the wire. The old way (`old_body`, kept here as it was) and the
new one must agree on every body: the same bodies accepted, as equal messages (types
included: a float stays a float), and the same bodies refused, in the same words, but for
JSON that does not parse, which each parser words its own way (and which a number too large
for a double makes a body refused by the number check where jiter refused its JSON). The
bodies: the fuzz corpus's example of every registered type,
messages generated from each type's annotations, both with places replaced, deleted or added
(the fuzz module's mutations), mutated byte-wise, and raw JSON texts for the reader alone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic_core import from_json

from cloudd.daemon.network import checks
from cloudd.daemon.network import codec as wire
from cloudd.daemon.network.jsontext import JsonError, loads
from cloudd.errors import ClouddError, RemoteProtocolError
from tests.fuzz.corpus import CODEC, EXAMPLES
from tests.fuzz.mutate import change, places
from tests.fuzz.profile import fuzz, timeout
from tests.fuzz.test_codec_fuzz import DEEP, any_value, body_of, dumps, mutate, mutations

pytestmark = timeout

#: pydantic's own class that did what each of the codec's markers does.
PYDANTIC_MARKERS: dict[type, Any] = {checks.Parsed: pydantic.PlainValidator,
                                     checks.AfterCheck: pydantic.AfterValidator,
                                     checks.Written: pydantic.PlainSerializer}


def as_pydantic(marker: Any, source: Any, handler: Any) -> Any:
    """A marker as pydantic's own validator or serializer, so that the oracle checks every
    field as the agents did with pydantic."""
    return PYDANTIC_MARKERS[type(marker)](marker.func).__get_pydantic_core_schema__(
        source, handler)


# The codec never names pydantic (cloudd imports none): its markers are taught to the oracle
# here, before the adapters below read the catalogue's annotations.
for _marker in PYDANTIC_MARKERS:
    _marker.__get_pydantic_core_schema__ = as_pydantic  # type: ignore[attr-defined]

NAMES = sorted(EXAMPLES)
#: the codec of each type's name (the corpus's, or this module's own for test-only types)
CODECS = dict.fromkeys(NAMES, CODEC)
CLASSES = {name: CODEC._by_name[name].cls for name in NAMES}
ADAPTERS = {name: pydantic.TypeAdapter(cls) for name, cls in CLASSES.items()}


def old_body(name: str, body: bytes) -> object:
    """What the codec made of a body before: pydantic's JSON, then its strict adapter."""
    entry = CODECS[name]._by_name[name]
    try:
        try:
            data = from_json(body)
        except ValueError as exc:
            raise wire._refusal(f"bad JSON in {name} body: {exc}") from None
        if not isinstance(data, dict):
            raise wire._refusal(f"{name} body must be a JSON object, not "
                                f"{wire._JSON_TYPES.get(type(data), type(data).__name__)}")
        extra = sorted(set(data) - {f.name for f in dataclasses.fields(entry.cls)})
        if extra:
            raise wire._refusal(f"{name}: unknown fields {wire._some(extra)}")
        bad_number = wire._bad_number(data)
        if bad_number is not None:
            raise wire._refusal(f"{name}: {bad_number}")
        try:
            return ADAPTERS[name].validate_json(body, strict=True)
        except pydantic.ValidationError as exc:
            problems = wire._some([f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: "
                                   f"{err['msg']}" for err in exc.errors()], sep="; ")
            raise wire._refusal(f"{name}: {problems}") from None
        except ClouddError as exc:
            raise wire._refusal(f"{name}: {exc}") from None
    except RemoteProtocolError as exc:
        return str(exc)


def new_body(name: str, body: bytes) -> object:
    try:
        return CODECS[name]._decode_body(CODECS[name]._by_name[name], body)
    except RemoteProtocolError as exc:
        return str(exc)


def tree(value: Any) -> Any:
    """`value` with the type of every part beside it: `==` alone takes 1 for 1.0 and True."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value), tuple((f.name, tree(getattr(value, f.name)))
                                  for f in dataclasses.fields(value))
    if isinstance(value, tuple | list):
        return type(value), tuple(tree(v) for v in value)
    if isinstance(value, frozenset):
        return type(value), frozenset(tree(v) for v in value)
    if isinstance(value, dict):
        return dict, tuple((k, tree(v)) for k, v in value.items())
    if isinstance(value, float) and math.isnan(value):
        return float, "nan"
    return type(value), value


def same(name: str, body: bytes) -> object:
    """Decode `body` both ways and require one answer; return it."""
    old, new = old_body(name, body), new_body(name, body)
    bad_json = f"bad JSON in {name} body: "
    if isinstance(old, str) and isinstance(new, str) and (
            old.startswith(bad_json) or new.startswith(bad_json)):
        pass  # both refused; the words for JSON that does not parse are each parser's
    elif isinstance(old, str) or isinstance(new, str):
        assert new == old, body[:300]
    else:
        assert tree(new) == tree(old), body[:300]
        assert json.loads(ADAPTERS[name].dump_json(old)) == json.loads(encoded(new, name))
    return new


def encoded(msg: object, name: str) -> bytes:
    """The body the codec writes for `msg`."""
    return CODECS[name].encode(msg)[4 + 7 + len(name):]


ASSIGNMENT = "cloudd.role-assignment"
PEER = {"node": "a", "role": "b", "address": "2001:DB8::1", "healthy": True}


@pytest.mark.parametrize(("changed", "refusal"), [
    ({"address": "nope"}, "address: Value error, 'nope' is not an IP address"),
    ({"peers": [{**PEER, "address": 5}]}, "peers.0.address: Value error, 5 is not an IP address"),
    ({"secrets": [["a b", "x"]]}, "secrets.0: Value error, secret name 'a b' is not a plain name"),
])
def test_the_old_way_applies_the_catalogue_s_markers(changed: dict[str, Any],
                                                     refusal: str) -> None:
    """pydantic, the oracle, reads the catalogue's markers (`checks.Parsed`, `AfterCheck`,
    `Written`) as its own validators and serializer, as it read them when they were its
    own: else the differential would compare the checks with a laxer decoder."""
    body = {"term": 1, "cloud": "c", "node": "n", "role": "r", "address": "10.0.0.1",
            "generation": "g", "peers": [PEER]}
    assert old_body(ASSIGNMENT, dumps({**body, **changed})) == f"{ASSIGNMENT}: {refusal}"
    msg = same(ASSIGNMENT, dumps(body))
    assert ADAPTERS[ASSIGNMENT].dump_json(msg) == encoded(msg, ASSIGNMENT)
    assert b'"address":"2001:db8::1"' in encoded(msg, ASSIGNMENT)


# -- bodies generated from the annotations ---------------------------------------------------

WORDS = st.sampled_from(["", "pm1", "shop", "db", "alice", "staff", "aHVudGVyMg==", "x y",
                         "192.0.2.7", "2001:db8::7", "-rf", "leader", "ready", "define"])
TEXT = WORDS | st.text(max_size=12)
INTS = st.sampled_from([0, 1, -1, 4, 999, 1000, 1001, 59999, 60000]) | st.integers(
    -(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-5, 5)


def json_of(hint: Any) -> st.SearchStrategy[Any]:
    """JSON values for a field of type `hint`: mostly ones it takes, some near misses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return json_of(args[0])
    if hint is str:
        return TEXT
    if hint is int:
        return INTS
    if hint is float:
        return FLOATS
    if hint is bool:
        return st.booleans()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from([m.value for m in hint]) | TEXT
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = {f.name for f in dataclasses.fields(hint)
                    if f.default is dataclasses.MISSING is f.default_factory}
        return st.fixed_dictionaries(
            {f: json_of(hints[f]) for f in hints if f in required},
            optional={f.name: json_of(hints[f.name]) for f in dataclasses.fields(hint)
                      if f.name not in required})
    if origin in (typing.Union, types.UnionType):
        if all(a.__module__ == "ipaddress" for a in args):
            return st.ip_addresses().map(str) | TEXT
        return st.one_of([json_of(a) if a is not type(None) else st.none() for a in args])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(json_of(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(json_of(a) for a in args)).map(list)
    if origin is frozenset:
        return st.lists(json_of(args[0]), max_size=3)
    raise AssertionError(f"no strategy for {hint!r}")


BODIES = {name: json_of(cls) for name, cls in CLASSES.items()}


@fuzz(40)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_generated_messages_of_every_type(name: str, data: st.DataObject) -> None:
    same(name, json.dumps(data.draw(BODIES[name], label="body")).encode())


@fuzz(300)
@given(name=st.sampled_from(NAMES), data=st.data(),
       changes=st.lists(st.tuples(any_value, st.sampled_from(["replace", "delete", "add"])),
                        min_size=1, max_size=4))
def test_generated_messages_with_places_changed(name: str, data: st.DataObject,
                                                changes: list[tuple[Any, str]]) -> None:
    body: Any = data.draw(BODIES[name], label="body")
    for new, how in changes:
        inside = places(body)[1:]
        if inside:
            body = change(body, data.draw(st.sampled_from(inside)), how, new)
    same(name, dumps(body))


# -- the fuzz corpus -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_example_decodes_and_encodes_the_same(name: str) -> None:
    msg = same(name, encoded(EXAMPLES[name], name))
    assert msg == EXAMPLES[name]
    assert encoded(EXAMPLES[name], name) == ADAPTERS[name].dump_json(EXAMPLES[name])


PLACES = [(name, path) for name in NAMES for path in places(body_of(name))[1:]]


@fuzz(6)
@pytest.mark.parametrize(("name", "where"), PLACES, ids=[
    f"{n}:{'.'.join(map(str, p))}" for n, p in PLACES])
@given(new=any_value, how=st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
def test_every_place_of_every_example_changed(name: str, where: tuple[Any, ...], new: Any,
                                              how: str) -> None:
    same(name, dumps(change(body_of(name), where, how, new)))


@fuzz(400)
@given(name=st.sampled_from(NAMES), changes=mutations)
def test_examples_mutated_byte_wise(name: str, changes: list[tuple[str, int, int, bytes]]) -> None:
    same(name, mutate(encoded(EXAMPLES[name], name), changes))


# -- the JSON reader alone --------------------------------------------------------------------


def taken(value: Any) -> Any:
    """What the codec goes on with: a value, unless its number check refuses it (a float
    that is not finite: jiter refuses a literal too large for a double, ours reads inf)."""
    return ("refused",) if wire._bad_number(value) is not None else ("value", tree(value))


def jiter(body: bytes) -> Any:
    try:
        return taken(from_json(body))
    except ValueError:
        return ("refused",)


def ours(body: bytes) -> Any:
    try:
        return taken(loads(body))
    except JsonError:
        return ("refused",)


ODD_TEXTS = [
    b"", b"  ", b"\n\n x", b"\xef\xbb\xbf{}", b"\x80", b"[\x00]", b"nul", b"[nul]", b"falsy",
    b"tx", b"NaN", b"-NaN", b"NaN1", b"Na", b"Infinity", b"-Infinity", b"[Infinit]", b"-I",
    b"infinity", b"01", b"-01", b"00", b"1.", b".5", b"-", b"--1", b"1e", b"1e+", b"1.5e",
    b"1.e5", b"[1.]", b"[-]", b"-0", b"-0.0", b"1E400", b"-1e400", b"2.5E-3", b"1x", b"[1x]",
    b"1" * 4300, b"1" * 4301, b"-" + b"1" * 4300, b"-" + b"1" * 4299, b"1" * 5000 + b".5",
    b"1" * 4299 + b".5", b"1" * 4300 + b".5", b"1" * 5000 + b"e0", b"0." + b"1" * 5000,
    b"-" + b"1" * 4301 + b"   ", b"[-" + b"1" * 4301 + b"]", b"  " + b"1" * 4301 + b" ",
    b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\udc00"', b'"\\ud800x"', b'"\\uD800\\u0041"',
    b'"\\ud800\\\\"', b'"\\ud800"x', b'"\\udbff\\udfff"', b'"\\ud800\\ud800"', b'"\\u12"',
    b'"\\u12g4"', b'"\\x"', b'"a\\', b'"a\\u', b'"a\\u00', b'"\\ud800', b'"\\ud800\\',
    b'"\\ud800\\u', b'"\\ud800\\udc0', b'"a\x01"', b'"abc', b'"\xff"', b'"\\n\xff"',
    b'"\\u00e9\xc3"', b'"ok\xe2\x82"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"',
    b'{"\xff":1}', b'{"a\x01":1}', b'{"a":"\xc3"}', b'[1 2]', b'{1:2}', b'{"a" 1}', b'{"a":}',
    b'{"a":1 "b":2}', b'{"a":1,"b"}', b'{"a":1,}', b'{"a":1, 2}', b"{ }", b"[ ]",
    b"[1,\n2,\n]", b"[1]\n x", b"[1,2", b'{"a":[', b"[1,]", b"[", b"{", b'{"a"', b'{"a":1',
    b'{"a":1}}', b"[[]]]", b"[true", b"[true,", b'{"a":true', b'{"a":true,', b'{"a":true, ',
    b'{"a":1,"a":2}', b'{"a":1,"b":2,"a":3}', b" \t\r\n1 \t\r\n", b"[1 , 2 ]", b"1e5",
    b'"\\/\\b\\f\\n\\r\\t\\"\\\\"', b'"\\u0000\\u001f\\u00e9\\u20ac"', b'"\\ud83d\\ude00"',
]
for n in (199, 200, 201, 202):
    ODD_TEXTS += [b"[" * n + b"1" + b"]" * n, b"[" * n + b"]" * n, b"[" * n + b"[]" + b"]" * n,
                  b'{"a":' * n + b"1" + b"}" * n, b'{"a":' * n + b"{}" + b"}" * n,
                  b"[" * n + b"1" + b"]" * (n - 1), b"[ " * n + b"]" * n]
ODD_TEXTS += [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP]


@pytest.mark.parametrize("text", ODD_TEXTS, ids=range(len(ODD_TEXTS)))
def test_odd_json_is_taken_as_jiter_takes_it(text: bytes) -> None:
    assert ours(text) == jiter(text)


PIECES = st.sampled_from([
    "a", "é", "\u20ac", "\U0001f600", "\\n", "\\\\", '\\"', "\\u00e9", "\\ud800", "\\udc00",
    "\\ud83d\\ude00", "\\u12", "\\x", "\\", '"', "\x01", "\x7f"])
STRINGS = st.lists(PIECES, max_size=6).map(lambda p: ('"' + "".join(p) + '"'))
TOKENS = st.sampled_from(["[", "]", "{", "}", ",", ":", " ", "\n", "1", "-", "0", ".", "e",
                          "+", "NaN", "Infinity", "true", "null", "fals", '"k"']) | STRINGS


@fuzz(1000)
@given(pieces=st.lists(TOKENS, max_size=20))
@example(pieces=['{"k"', ":", '"\\ud800"', "}"])
def test_token_soup_is_taken_as_jiter_takes_it(pieces: list[str]) -> None:
    text = "".join(pieces).encode("utf-8", "surrogatepass")
    assert ours(text) == jiter(text)


@fuzz(500)
@given(text=st.binary(max_size=64) | any_value.map(dumps), changes=mutations)
def test_random_and_mutated_json_is_taken_as_jiter_takes_it(text: bytes,
                                                            changes: Any) -> None:
    assert ours(text) == jiter(text)
    broken = mutate(text, changes)
    assert ours(broken) == jiter(broken)


# -- what no registered message holds yet ----------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Part:
    n: int

    def __post_init__(self) -> None:
        if self.n == 99:
            raise ValueError("ninety-nine is not a part")


@dataclasses.dataclass(frozen=True)
class Everything:
    """Every annotation the checks know, for the kinds no message uses yet (lists, dicts,
    a `ValueError` from `__post_init__`)."""

    s: str = ""
    i: int = 0
    f: float = 0.0
    b: bool = False
    c: Colour = Colour.RED
    pair: tuple[str, int] = ("", 0)
    many: tuple[Part, ...] = ()
    bag: frozenset[str] = frozenset()
    items: list[int] = dataclasses.field(default_factory=list)
    table: dict[str, Part] = dataclasses.field(default_factory=dict)
    part: Part | None = None
    maybe: int | None = None


EVERYTHING = "test.everything"
CODECS[EVERYTHING] = wire.Codec()
CODECS[EVERYTHING].register(Everything, EVERYTHING)
ADAPTERS[EVERYTHING] = pydantic.TypeAdapter(Everything)
PARTS = st.fixed_dictionaries({"n": st.sampled_from([1, 99, "1", None])}) | any_value


@fuzz(300)
@given(body=st.fixed_dictionaries({}, optional={
    "s": TEXT | any_value, "i": INTS | any_value, "f": FLOATS | any_value,
    "b": st.booleans() | any_value, "c": st.sampled_from(["red", "blue", "pink", 1]),
    "pair": st.lists(TEXT | INTS, max_size=3), "many": st.lists(PARTS, max_size=3),
    "bag": st.lists(TEXT, max_size=3) | any_value, "items": st.lists(INTS | TEXT, max_size=3),
    "table": st.dictionaries(TEXT, PARTS, max_size=3) | any_value, "part": PARTS,
    "maybe": st.none() | INTS | TEXT}))
@example(body={"s": 1, "i": "x", "f": "x", "b": "x", "c": "pink"})
@example(body={"part": {"n": 99}})
def test_every_kind_of_field(body: dict[str, Any]) -> None:
    same(EVERYTHING, dumps(body))


def test_a_value_error_of_the_message_itself_is_one_refusal() -> None:
    codec = wire.Codec()
    codec.register(Part, "test.part")
    with pytest.raises(RemoteProtocolError, match=r"^test\.part: \(body\): Value error, "
                                                  r"ninety-nine is not a part$"):
        codec._decode_body(codec._by_name["test.part"], b'{"n": 99}')


@dataclasses.dataclass(frozen=True)
class Unknown:
    either: int | str


def test_an_annotation_the_checks_do_not_know_is_refused_at_registration() -> None:
    with pytest.raises(ClouddError, match=r"Unknown\.either: the codec's checks do not know"):
        wire.Codec().register(Unknown, "test.unknown")


def test_the_codec_loads_no_pydantic() -> None:
    code = ("import sys\n"
            "from cloudd.daemon.network.codec import Codec, FrameDecoder\n"
            "from cloudd.election.messages import Ping\n"
            "codec = Codec()\n"
            "codec.register(Ping, 'ping')\n"
            "assert FrameDecoder(codec).feed(codec.encode(Ping(1, 'a', 'b', 2))) != []\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'pydantic_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
