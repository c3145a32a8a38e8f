"""The wire codec: round trips, and one precise RemoteProtocolError for every kind of bad frame."""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudd.daemon.network.codec import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Codec,
    FrameDecoder,
    read_frame,
    write_message,
)
from cloudd.errors import LocalProtocolError, RemoteProtocolError


class Kind(enum.Enum):
    HOST = "host"
    NODE = "node"


@dataclass(frozen=True)
class Inner:
    name: str


@dataclass(frozen=True)
class Vote:
    term: int
    voter: str
    peers: tuple[str, ...]
    kind: Kind
    inner: Inner
    weight: float | None = None


@dataclass(frozen=True)
class Ping:
    n: int


@pytest.fixture
def codec() -> Codec:
    c = Codec()
    c.register(Vote, "test.vote")
    c.register(Ping, "test.ping")
    return c


def raw(tag: str, body: bytes | str, *, version: int = PROTOCOL_VERSION, flags: int = 0,
        rid: int = 0) -> bytes:
    """A frame built by hand, so that tests can break each part of it."""
    if isinstance(body, str):
        body = body.encode()
    payload = struct.pack(">BBIB", version, flags, rid, len(tag)) + tag.encode() + body
    return struct.pack(">I", len(payload)) + payload


VOTE = Vote(term=7, voter="pm1", peers=("pm2", "pm3"), kind=Kind.HOST, inner=Inner("x"))


def test_round_trip_every_field_type(codec: Codec) -> None:
    assert FrameDecoder(codec).feed(codec.encode(VOTE)) == [VOTE]


def test_frames_split_anywhere_and_joined_decode_the_same(codec: Codec) -> None:
    stream = codec.encode(VOTE) + codec.encode(Ping(1)) + codec.encode(Ping(2))
    dec = FrameDecoder(codec)
    out: list[object] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
    assert out == [VOTE, Ping(1), Ping(2)]
    assert dec.pending == 0 and dec.truncated() is None
    assert FrameDecoder(codec).feed(stream) == [VOTE, Ping(1), Ping(2)]


def test_request_and_reply_ids_survive(codec: Codec) -> None:
    req = FrameDecoder(codec).feed_frames(codec.encode(Ping(1), rid=42, request=True))[0]
    rep = FrameDecoder(codec).feed_frames(codec.encode(Ping(2), rid=42, reply=True))[0]
    assert (req.rid, req.request, req.reply) == (42, True, False)
    assert (rep.rid, rep.request, rep.reply) == (42, False, True)


@given(n=st.integers(min_value=-(2**63), max_value=2**63 - 1),
       voter=st.text(max_size=50), peers=st.lists(st.text(max_size=10), max_size=5),
       weight=st.none() | st.floats(allow_nan=False, allow_infinity=False))
def test_round_trip_property(n: int, voter: str, peers: list[str], weight: float | None) -> None:
    c = Codec()
    c.register(Vote, "test.vote")
    msg = Vote(term=n, voter=voter, peers=tuple(peers), kind=Kind.NODE, inner=Inner(voter),
               weight=weight)
    assert FrameDecoder(c).feed(c.encode(msg)) == [msg]


def test_one_gigabyte_length_is_refused_before_the_body(codec: Codec) -> None:
    dec = FrameDecoder(codec)
    with pytest.raises(RemoteProtocolError, match=r"frame of 1073741824 bytes exceeds the "
                       rf"maximum of {MAX_FRAME}"):
        dec.feed(struct.pack(">I", 1 << 30))  # nothing else sent: refused on the length alone


def test_decoder_stays_broken_after_an_error(codec: Codec) -> None:
    dec = FrameDecoder(codec)
    with pytest.raises(RemoteProtocolError):
        dec.feed(struct.pack(">I", 1 << 30))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        dec.feed(codec.encode(Ping(1)))


BAD_FRAMES = [
    (struct.pack(">I", 3) + b"abc", r"bad frame length 3: shorter than a frame header"),
    (raw("test.ping", '{"n": 1}', version=9),
     rf"protocol version 9 not supported \(this agent speaks {PROTOCOL_VERSION}\)"),
    (raw("test.ping", '{"n": 1}', flags=0x80), r"bad frame flags 0x80"),
    (raw("test.ping", '{"n": 1}', flags=0x03), r"bad frame flags 0x03"),
    (raw("no.such", '{"n": 1}'), r"unknown message type 'no.such'"),
    (raw("test.ping", '{"n": '), r"bad JSON in test.ping body: Expecting value at line 1 "
     r"column 7"),
    (raw("test.ping", b'\xff\xfe'), r"bad JSON in test.ping body"),
    (raw("test.ping", "[1, 2]"), r"test.ping body must be a JSON object, not list"),
    (raw("test.ping", '{"n": 1, "evil": 2}'), r"test.ping: unknown fields evil"),
    (raw("test.ping", '{"n": "1"}'), r"test.ping: n: Input should be a valid integer"),
    (raw("test.ping", "{}"), r"test.ping: n: Field required"),
    (raw("test.vote", json.dumps({"term": 1, "voter": "a", "peers": [], "kind": "alien",
                                  "inner": {"name": 3}})),
     r"test.vote: kind: Input should be 'host' or 'node'; inner.name: Input should be a "
     r"valid string"),
]


@pytest.mark.parametrize(("frame", "reason"), BAD_FRAMES)
def test_bad_frames_raise_one_precise_reason(codec: Codec, frame: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        FrameDecoder(codec).feed(frame)


def test_tag_longer_than_frame(codec: Codec) -> None:
    payload = struct.pack(">BBIB", PROTOCOL_VERSION, 0, 0, 200) + b"x"
    with pytest.raises(RemoteProtocolError, match="bad tag length 200: longer than the frame"):
        FrameDecoder(codec).feed(struct.pack(">I", len(payload)) + payload)


def test_truncated_reports_how_much_arrived(codec: Codec) -> None:
    frame = codec.encode(Ping(5))
    dec = FrameDecoder(codec)
    assert dec.feed(frame[:-3]) == []
    err = dec.truncated()
    assert err is not None
    assert str(err) == f"truncated frame: stream ended after {len(frame) - 7} of " \
        f"{len(frame) - 4} bytes"
    dec2 = FrameDecoder(codec)
    dec2.feed(frame[:2])
    assert "inside a length prefix (2 bytes)" in str(dec2.truncated())


def test_register_refuses_what_cannot_be_a_message() -> None:
    c = Codec()

    @dataclass
    class Mutable:
        x: int

    with pytest.raises(LocalProtocolError, match="is not frozen"):
        c.register(Mutable)
    with pytest.raises(LocalProtocolError, match="is not a dataclass"):
        c.register(int)
    with pytest.raises(LocalProtocolError, match="must be 1-255 ASCII characters"):
        c.register(Ping, "pïng")
    c.register(Ping, "test.ping")
    c.register(Ping, "test.ping")  # idempotent
    with pytest.raises(LocalProtocolError, match=r"'test\.ping' is already Ping"):
        c.register(Inner, "test.ping")
    with pytest.raises(LocalProtocolError, match=r"Ping is already registered as 'test\.ping'"):
        c.register(Ping, "other")
    assert c.name_of(Ping) == "test.ping"
    assert c.register(Inner) is Inner  # default name: module.qualname
    assert c.name_of(Inner) == f"{__name__}.Inner"


def test_encode_refuses_unregistered_and_oversized() -> None:
    c = Codec(max_frame=100)
    c.register(Inner, "test.inner")
    with pytest.raises(LocalProtocolError, match="Ping is not a registered message"):
        c.encode(Ping(1))
    with pytest.raises(LocalProtocolError, match=r"test.inner frame of \d+ bytes exceeds the "
                       r"maximum of 100"):
        c.encode(Inner("x" * 200))


async def test_stream_helpers(codec: Codec) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(codec.encode(Ping(1)) + codec.encode(VOTE))
    reader.feed_eof()
    first, second = await read_frame(reader, codec), await read_frame(reader, codec)
    assert first is not None and first.msg == Ping(1)
    assert second is not None and second.msg == VOTE
    assert await read_frame(reader, codec) is None

    truncated = asyncio.StreamReader()
    truncated.feed_data(codec.encode(Ping(1))[:-2])
    truncated.feed_eof()
    with pytest.raises(RemoteProtocolError, match="truncated frame"):
        await read_frame(truncated, codec)

    huge = asyncio.StreamReader()
    huge.feed_data(struct.pack(">I", 1 << 30))  # no body and no EOF: must not wait for one
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum"):
        await asyncio.wait_for(read_frame(huge, codec), 5)


async def test_write_message_goes_through_a_real_socket(codec: Codec) -> None:
    got: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        frame = await read_frame(r, codec)
        got.set_result(frame.msg if frame else None)
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await write_message(writer, VOTE, codec=codec)
    assert await asyncio.wait_for(got, 10) == VOTE
    writer.close()
    server.close()
    await server.wait_closed()


def test_good_frames_before_a_bad_one_are_delivered_then_the_error(codec: Codec) -> None:
    dec = FrameDecoder(codec)
    assert dec.feed(codec.encode(Ping(1)) + raw("no.such", "{}")) == [Ping(1)]
    with pytest.raises(RemoteProtocolError, match=r"unknown message type 'no\.such'"):
        dec.check()
    with pytest.raises(RemoteProtocolError, match=r"unknown message type 'no\.such'"):
        dec.feed(codec.encode(Ping(2)))
    FrameDecoder(codec).check()  # a healthy decoder has nothing to raise
