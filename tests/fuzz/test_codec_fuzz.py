"""Fuzzing the wire codec: whatever bytes a peer sends, the decoder either yields messages of
the catalogue whose fields hold their declared types, or raises `RemoteProtocolError` with one
short line saying why; never another exception, never a recursion error, never a hang.

Inputs: random bytes, random bodies behind a well-formed header, valid frames of every
registered type mutated byte-wise (flipped, cut, duplicated, inserted) and field-wise (a field
deleted, added, or replaced by any JSON value: wrong types, huge numbers, NaN, deep nesting),
strings with invalid UTF-8, unknown tags and declared lengths from 0 to 4 GiB.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import typing
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cloudd.daemon.network.codec import MAX_FRAME, PROTOCOL_VERSION, Frame, FrameDecoder
from cloudd.election.messages import WhoLeads
from cloudd.errors import RemoteProtocolError
from tests.fuzz.corpus import CODEC, EXAMPLES, conforms, registered_names
from tests.fuzz.mutate import change, places
from tests.fuzz.profile import fuzz, timeout

pytestmark = timeout

NAMES = sorted(EXAMPLES)
#: Deep enough for Python's own recursion limit (1000) ten times over.
DEEP = 10_000


def frame(tag: bytes, body: bytes, *, version: int = PROTOCOL_VERSION, flags: int = 0,
          rid: int = 0) -> bytes:
    payload = struct.pack(">BBIB", version, flags, rid, len(tag)) + tag + body
    return struct.pack(">I", len(payload)) + payload


def body_of(name: str) -> dict[str, Any]:
    """The JSON object the example of `name` travels as."""
    data = json.loads(CODEC.encode(EXAMPLES[name])[4 + 7 + len(name):])
    assert isinstance(data, dict)
    return data


def check_reason(exc: RemoteProtocolError) -> str:
    """A refusal's reason: one printable line of bounded length."""
    reason = str(exc)
    assert reason and reason.isprintable() and len(reason) <= 400, repr(reason)
    return reason


def decode(data: bytes, *, chunks: list[int] | None = None) -> list[Frame] | str:
    """Feed `data` (in pieces of the given sizes, then the rest) and end the stream: the
    frames, or the reason of the refusal. Any other exception fails the property."""
    decoder = FrameDecoder(CODEC)
    frames: list[Frame] = []
    pieces, at = [], 0
    for size in chunks or []:
        pieces.append(data[at:at + size])
        at += size
    pieces.append(data[at:])
    try:
        for piece in pieces:
            frames += decoder.feed_frames(piece)
        decoder.check()
    except RemoteProtocolError as exc:
        check_reason(exc)
        for f in frames:  # what came before the bad frame is whole and valid too
            assert conforms(f.msg) is None, conforms(f.msg)
        return str(exc)
    for f in frames:
        assert CODEC.name_of(type(f.msg)) is not None
        assert conforms(f.msg) is None, conforms(f.msg)
        assert not (f.request and f.reply)
    ended = decoder.truncated()
    if ended is not None:
        return check_reason(ended)
    return frames


# -- the corpus itself ----------------------------------------------------------------------


def test_every_registered_type_has_an_example() -> None:
    assert set(EXAMPLES) == registered_names()
    for name, msg in EXAMPLES.items():
        assert CODEC.name_of(type(msg)) == name


@pytest.mark.parametrize("name", NAMES)
def test_every_example_round_trips_and_conforms(name: str) -> None:
    msg = EXAMPLES[name]
    assert conforms(msg) is None
    frames = decode(CODEC.encode(msg, rid=9, request=True))
    assert isinstance(frames, list) and [f.msg for f in frames] == [msg]


# -- random bytes ----------------------------------------------------------------------------


@fuzz(300)
@given(data=st.binary(max_size=4096), chunks=st.lists(st.integers(0, 64), max_size=8))
@example(data=b"\x00\x00\x00\x0b" + b"\x03\x00" + b"\x00" * 4 + b"\x00" * 5, chunks=[])
def test_random_bytes(data: bytes, chunks: list[int]) -> None:
    decode(data, chunks=chunks)


@fuzz(300)
@given(tag=st.sampled_from([n.encode() for n in NAMES]) | st.binary(max_size=40),
       body=st.binary(max_size=2048), flags=st.integers(0, 255),
       version=st.sampled_from([PROTOCOL_VERSION, 0, PROTOCOL_VERSION + 1, 255]),
       rid=st.integers(0, 0xFFFFFFFF))
def test_random_bodies_behind_a_well_formed_header(tag: bytes, body: bytes, flags: int,
                                                    version: int, rid: int) -> None:
    decode(frame(tag, body, version=version, flags=flags, rid=rid))


@fuzz(100)
@given(size=st.integers(0, 0xFFFFFFFF))
def test_any_declared_length_is_judged_before_the_body(size: int) -> None:
    decoder = FrameDecoder(CODEC)
    head = struct.pack(">I", size)
    if size < 8 or size > MAX_FRAME:
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(head)
        assert check_reason(info.value) in (
            f"bad frame length {size}: shorter than a frame header",
            f"frame of {size} bytes exceeds the maximum of {MAX_FRAME}")
    else:  # a plausible length: it waits for the body, holding nothing but the prefix
        assert decoder.feed(head) == [] and decoder.pending == 0
        ended = decoder.truncated()
        assert ended is not None and check_reason(ended) == (
            f"truncated frame: stream ended after 0 of {size} bytes")


# -- valid frames, mutated byte-wise ---------------------------------------------------------

Mutation = tuple[str, int, int, bytes]


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply each (kind, position, length, bytes) in turn; positions wrap around the data."""
    out = bytearray(data)
    for kind, pos, length, extra in mutations:
        at = pos % (len(out) + 1)
        if kind == "flip" and out:
            at %= len(out)
            out[at] ^= extra[0] if extra and extra[0] else 0xFF
        elif kind == "cut":
            del out[at:at + length]
        elif kind == "duplicate":
            out[at:at] = out[at:at + length]
        elif kind == "insert":
            out[at:at] = extra
    return bytes(out)


mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "duplicate", "insert"]),
                               st.integers(0, 1 << 16), st.integers(1, 64),
                               st.binary(min_size=1, max_size=16)), min_size=1, max_size=4)


@fuzz(600)
@given(name=st.sampled_from(NAMES), rid=st.integers(0, 0xFFFFFFFF),
       kind=st.sampled_from(["request", "reply", "plain"]), changes=mutations,
       chunks=st.lists(st.integers(0, 64), max_size=4), twice=st.booleans())
def test_mutated_frames_of_every_type(name: str, rid: int, kind: str, changes: list[Mutation],
                                      chunks: list[int], twice: bool) -> None:
    good = CODEC.encode(EXAMPLES[name], rid=rid, request=kind == "request",
                        reply=kind == "reply")
    decode(mutate(good + good if twice else good, changes), chunks=chunks)


# -- valid frames, mutated field-wise --------------------------------------------------------

#: Values at and beyond every edge the codec draws, and the empty ones a message may refuse.
EDGES = [None, True, 0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**300, 1e308,
         float("nan"), float("inf"), float("-inf"), "", "\x00", "é" * 300, [], {}, [[]]]
#: Stand-ins for values nested `DEEP` levels (`dumps` writes them out).
DEEP_LIST, DEEP_OBJECT = "\x00deep-list\x00", "\x00deep-object\x00"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
any_value = st.sampled_from([*EDGES, DEEP_LIST, DEEP_OBJECT]) | json_values


def dumps(value: Any) -> bytes:
    """JSON text of `value`, NaN and Infinity as JavaScript writes them, deep stand-ins
    written out."""
    text = json.dumps(value, allow_nan=True)
    text = text.replace(json.dumps(DEEP_LIST), "[" * DEEP + "]" * DEEP)
    return text.replace(json.dumps(DEEP_OBJECT), '{"a":' * DEEP + "1" + "}" * DEEP).encode()


#: Every place in every example: (type name, path inside its body).
PLACES = [(name, path) for name in NAMES for path in places(body_of(name))[1:]]


@fuzz(12)
@pytest.mark.parametrize(("name", "where"), PLACES, ids=[
    f"{n}:{'.'.join(map(str, p))}" for n, p in PLACES])
@given(new=any_value, how=st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
def test_every_place_of_every_type_replaced_deleted_or_added(
        name: str, where: tuple[Any, ...], new: Any, how: str) -> None:
    decode(frame(name.encode(), dumps(change(body_of(name), where, how, new))))


@fuzz(300)
@given(name=st.sampled_from(NAMES), data=st.data(),
       changes=st.lists(st.tuples(any_value, st.sampled_from(["replace", "delete", "add"])),
                        min_size=2, max_size=5))
def test_several_places_changed_at_once(name: str, data: st.DataObject,
                                        changes: list[tuple[Any, str]]) -> None:
    body: Any = body_of(name)
    for new, how in changes:
        inside = places(body)[1:]
        if inside:
            body = change(body, data.draw(st.sampled_from(inside)), how, new)
    decode(frame(name.encode(), dumps(body)))


FIELDS = [(name, field) for name in NAMES for field in body_of(name)]


@pytest.mark.parametrize(("name", "field"), FIELDS)
@pytest.mark.parametrize("deep", ["list", "object"])
def test_ten_thousand_levels_in_any_field(name: str, field: str, deep: str) -> None:
    nested = "[" * DEEP + "]" * DEEP if deep == "list" else '{"a":' * DEEP + "1" + "}" * DEEP
    body = json.dumps({**body_of(name), field: "HOLE"}).replace('"HOLE"', nested)
    reason = decode(frame(name.encode(), body.encode()))
    assert isinstance(reason, str)
    assert reason == f"bad JSON in {name} body: nested deeper than 200 levels"


def _numeric_fields(name: str) -> list[tuple[str, str]]:
    """(field, 'int' or 'float') for each top-level number of the type `name`."""
    cls = type(EXAMPLES[name])
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) | {hints[f.name]}
        if float in args:
            out.append((f.name, "float"))
        elif int in args and bool not in args:
            out.append((f.name, "int"))
    return out


NUMBERS = [(n, f, k) for n in NAMES for f, k in _numeric_fields(n)]


@pytest.mark.parametrize(("name", "field", "kind"), NUMBERS)
@pytest.mark.parametrize("number", ["9223372036854775808", "-9223372036854775809",
                                    "1" + "0" * 4000, "NaN", "Infinity", "-Infinity", "1e999"])
def test_huge_and_non_finite_numbers_in_any_number_field(name: str, field: str, kind: str,
                                                         number: str) -> None:
    body = json.dumps({**body_of(name), field: "HOLE"}).replace('"HOLE"', number)
    reason = decode(frame(name.encode(), body.encode()))
    assert isinstance(reason, str)
    if number[-1].isdigit() and "e" not in number:
        digits = len(number.lstrip("-"))
        assert reason == f"{name}: {field}: an integer of {digits} digits is beyond 64 bits"
    else:
        shown = {"NaN": "nan", "-Infinity": "-inf"}.get(number, "inf")
        assert reason == f"{name}: {field}: {shown} is not a finite number"


@pytest.mark.parametrize("term", [2**63 - 1, -(2**63)])
def test_numbers_at_the_64_bit_edges_decode(term: int) -> None:
    frames = decode(frame(b"election.who-leads", json.dumps({"term": term}).encode()))
    assert isinstance(frames, list) and frames[0].msg == WhoLeads(term)


@fuzz(200)
@given(name=st.sampled_from(NAMES), bad=st.binary(min_size=1, max_size=8).filter(
    lambda b: not _is_utf8(b)), data=st.data())
def test_strings_with_invalid_utf8(name: str, bad: bytes, data: st.DataObject) -> None:
    body = json.dumps(body_of(name)).encode()
    quotes = [i for i, c in enumerate(body) if c == ord('"')]
    at = data.draw(st.sampled_from(quotes), label="at")
    reason = decode(frame(name.encode(), body[:at + 1] + bad + body[at + 1:]))
    assert isinstance(reason, str) and reason.startswith(f"bad JSON in {name} body: ")


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@fuzz(200)
@given(tag=st.binary(min_size=1, max_size=255).filter(
    lambda t: t.decode("latin-1") not in EXAMPLES))
def test_unknown_tags(tag: bytes) -> None:
    reason = decode(frame(tag, b"{}"))
    assert isinstance(reason, str)
    assert reason.startswith(("unknown message type ", "message type "))


# -- the crashes the fuzzing found, kept as they were -----------------------------------------


def test_nesting_deeper_than_pythons_stack_was_a_recursion_error() -> None:
    body = b'{"cloud": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    assert decode(frame(b"cloudd.manifest-wanted", body)) == (
        "bad JSON in cloudd.manifest-wanted body: nested deeper than 200 levels")


def test_a_message_refused_by_its_own_check_was_a_metadata_error() -> None:
    event = body_of("cloudd.domain-event")
    event["event"]["meta"]["cloud"] = ""
    assert decode(frame(b"cloudd.domain-event", json.dumps(event).encode())) == (
        "cloudd.domain-event: cloudd metadata: cloud must not be empty")


def test_a_nan_lease_was_accepted() -> None:
    body = b'{"term": 5, "seq": 2, "duration": NaN}'
    assert decode(frame(b"election.lease-grant", body)) == (
        "election.lease-grant: duration: nan is not a finite number")


def test_unknown_field_names_are_shown_escaped_and_bounded() -> None:
    body = json.dumps({"cloud": "shop", **{f"evil\n{i:04}": 1 for i in range(2000)}})
    reason = decode(frame(b"cloudd.manifest-wanted", body.encode()))
    assert reason == ("cloudd.manifest-wanted: unknown fields evil\\n0000, evil\\n0001, "
                      "evil\\n0002, and 1997 more")


def test_a_value_quoted_back_is_bounded() -> None:
    body = json.dumps({**body_of("cloudd.role-assignment"), "address": "x" * 100_000})
    reason = decode(frame(b"cloudd.role-assignment", body.encode()))
    assert isinstance(reason, str) and len(reason) == 400 and reason.endswith("...")
    assert reason.startswith("cloudd.role-assignment: address: Value error, 'xxx")
