"""The one wire codec: every message between agents is a frozen dataclass in a frame.

A frame is a 4-byte big-endian length followed by that many bytes:

    version u8 | flags u8 | request id u32 | tag length u8 | tag (ASCII) | JSON body

`flags` marks a frame as a request (its sender waits for a reply with the same id) or as a
reply. The tag is the message's stable type name, given once in `Codec.register`; the body is
the dataclass's fields as a JSON object. Decoding checks, in order: the length against the
maximum (before a single byte of the body is read), the version, the tag, the JSON, and then
every field against the dataclass's annotations, strictly. Any failure is one
`RemoteProtocolError` whose message says precisely what was wrong; the shell logs it with the
peer and drops that connection only.

The JSON (`jsontext`: the standard library's parser with a peer's limits) and the field checks
(`checks`) were pydantic's (`from_json` and a strict `TypeAdapter`) and are now written here,
so that an agent that loads this module loads no pydantic; they accept and build what
pydantic did, and refuse a body's fields in the same words, which a differential test holds
them to (JSON that does not parse is refused in the standard parser's words).

`FrameDecoder` is sans-I/O (`feed(bytes) -> list[msg]`); `read_frame`/`write_message` adapt it
to asyncio streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

from cloudd.daemon.network import jsontext
from cloudd.daemon.network.checks import BAD, Problem, Shape
from cloudd.errors import ClouddError, LocalProtocolError, RemoteProtocolError

#: The protocol version this agent speaks; a frame with another version is refused.
#: 2: manifest origins, node phases and operator commands became enums on the wire.
#: 3: addresses in role assignments are IP addresses; assignments carry the role's secrets;
#: manifests travel self-contained.
PROTOCOL_VERSION = 3
#: Largest frame body accepted, in bytes (1 MiB): agent messages are small; anything larger
#: is a broken or hostile peer, refused before its body is read.
MAX_FRAME = 1 << 20

_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">BBIB")  # version, flags, request id, tag length
_FLAG_REQUEST = 0x01
_FLAG_REPLY = 0x02
_MAX_RID = 0xFFFFFFFF
#: The integers a body may hold: 64 signed bits, what every field (terms, sequence numbers,
#: memory sizes, ids) fits in with room to spare.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
#: Longest refusal reason, in characters: it is logged, and the peer chose its contents.
_MAX_REASON = 400
#: How many field errors or unknown field names one reason names before "and N more".
_SHOWN = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the message and, for request/response traffic, its id."""

    msg: object
    rid: int = 0
    request: bool = False
    reply: bool = False


@dataclass(frozen=True)
class _Entry:
    cls: type
    name: str
    tag: bytes
    shape: Shape


class Codec:
    """A registry of message types by stable name, and the frame format around them."""

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._by_name: dict[str, _Entry] = {}
        self._by_cls: dict[type, _Entry] = {}

    def register(self, cls: type[T], name: str | None = None) -> type[T]:
        """Make `cls` (a frozen dataclass) sendable under `name` (default: module.qualname).

        Returns `cls`, so it also works as a decorator. Registering the same class under the
        same name twice is harmless; reusing a name or renaming a class is a bug and raises.
        """
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            raise LocalProtocolError(f"{cls!r} is not a dataclass")
        if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise LocalProtocolError(f"{cls.__qualname__} is not frozen")
        name = name or f"{cls.__module__}.{cls.__qualname__}"
        tag = name.encode("ascii", "strict") if name.isascii() else b""
        if not tag or len(tag) > 255:
            raise LocalProtocolError(f"message name {name!r} must be 1-255 ASCII characters")
        known = self._by_name.get(name)
        if known is not None and known.cls is cls:
            return cls
        if known is not None:
            raise LocalProtocolError(f"message name {name!r} is already {known.cls.__qualname__}")
        if cls in self._by_cls:
            raise LocalProtocolError(
                f"{cls.__qualname__} is already registered as {self._by_cls[cls].name!r}")
        entry = _Entry(cls, name, tag, Shape.of(cls))
        self._by_name[name] = entry
        self._by_cls[cls] = entry
        return cls

    def name_of(self, cls: type) -> str | None:
        entry = self._by_cls.get(cls)
        return entry.name if entry else None

    def encode(self, msg: object, *, rid: int = 0, request: bool = False,
               reply: bool = False) -> bytes:
        """The complete frame (length prefix included) for `msg`."""
        entry = self._by_cls.get(type(msg))
        if entry is None:
            raise LocalProtocolError(f"{type(msg).__qualname__} is not a registered message")
        if not 0 <= rid <= _MAX_RID:
            raise LocalProtocolError(f"request id {rid} out of range")
        try:
            body = jsontext.dumps(entry.shape.dump(msg))
        except (TypeError, ValueError) as exc:  # a field holding what cannot travel
            raise LocalProtocolError(f"cannot encode {entry.name}: {exc}") from None
        flags = (_FLAG_REQUEST if request else 0) | (_FLAG_REPLY if reply else 0)
        head = _HEADER.pack(PROTOCOL_VERSION, flags, rid, len(entry.tag)) + entry.tag
        size = len(head) + len(body)
        if size > self.max_frame:
            raise LocalProtocolError(
                f"{entry.name} frame of {size} bytes exceeds the maximum of {self.max_frame}")
        return _LENGTH.pack(size) + head + body

    def check_length(self, size: int) -> None:
        """Refuse a frame by its announced length alone, before reading its body."""
        if size < _HEADER.size + 1:
            raise RemoteProtocolError(f"bad frame length {size}: shorter than a frame header")
        if size > self.max_frame:
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds the maximum of {self.max_frame}")

    def decode_payload(self, payload: bytes) -> Frame:
        """Decode one frame's bytes after the length prefix."""
        self.check_length(len(payload))
        version, flags, rid, tag_len = _HEADER.unpack_from(payload)
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {version} not supported (this agent speaks "
                f"{PROTOCOL_VERSION})")
        if flags & ~(_FLAG_REQUEST | _FLAG_REPLY) or flags == _FLAG_REQUEST | _FLAG_REPLY:
            raise RemoteProtocolError(f"bad frame flags {flags:#04x}")
        start = _HEADER.size
        if start + tag_len > len(payload):
            raise RemoteProtocolError(f"bad tag length {tag_len}: longer than the frame")
        raw_tag = payload[start:start + tag_len]
        try:
            name = raw_tag.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"message type {raw_tag!r} is not ASCII") from None
        entry = self._by_name.get(name)
        if entry is None:
            raise RemoteProtocolError(f"unknown message type {name!r}")
        msg = self._decode_body(entry, payload[start + tag_len:])
        return Frame(msg, rid, bool(flags & _FLAG_REQUEST), bool(flags & _FLAG_REPLY))

    def _decode_body(self, entry: _Entry, body: bytes) -> object:
        try:
            data = jsontext.loads(body)
        except jsontext.JsonError as exc:  # bad UTF-8, bad syntax, too deep, a number too long
            raise _refusal(f"bad JSON in {entry.name} body: {exc}") from None
        if not isinstance(data, dict):
            raise _refusal(f"{entry.name} body must be a JSON object, not "
                           f"{_JSON_TYPES.get(type(data), type(data).__name__)}")
        extra = sorted(set(data) - entry.shape.names)
        if extra:
            raise _refusal(f"{entry.name}: unknown fields {_some(extra)}")
        bad_number = _bad_number(data)
        if bad_number is not None:
            raise _refusal(f"{entry.name}: {bad_number}")
        problems: list[Problem] = []
        try:
            msg = entry.shape.check(data, problems)
        except ClouddError as exc:  # the message's own check (`__post_init__`) refused it
            raise _refusal(f"{entry.name}: {exc}") from None
        if msg is BAD:
            raise _refusal(f"{entry.name}: " + _some(
                [f"{'.'.join(str(p) for p in loc) or '(body)'}: {what}"
                 for loc, what in problems], sep="; "))
        return msg


_JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _some(items: list[str], *, sep: str = ", ") -> str:
    """The first few of `items`, and how many more there are."""
    more = f"{sep}and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return sep.join(items[:_SHOWN]) + more


def _refusal(reason: str) -> RemoteProtocolError:
    """The error for `reason`, made one line of bounded length: the peer wrote part of it
    (field names, values quoted back), and it goes to the log as it is."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason[:_MAX_REASON + 1])
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON - 3] + "..."
    return RemoteProtocolError(text)


def _bad_number(data: object) -> str | None:
    """Where parsed JSON holds an integer beyond 64 signed bits or a float that is not
    finite (NaN, Infinity, or a literal too large for a double), and what it is."""
    if _numbers_fit(data):  # the usual case, found without making a path for every value
        return None
    todo: list[tuple[str, object]] = [("", data)]
    while todo:  # a stack, not recursion: Python's own depth is never at stake
        where, value = todo.pop()
        if isinstance(value, dict):
            todo += ((f"{where}.{key}" if where else str(key), item)
                     for key, item in value.items())
        elif isinstance(value, list):
            todo += ((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            digits = len(str(abs(value)))
            return f"{where}: an integer of {digits} digits is beyond 64 bits"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{where}: {value} is not a finite number"
    return None


def _numbers_fit(data: object) -> bool:
    """Whether every number in parsed JSON is one `_bad_number` lets through."""
    todo: list[Any] = [data]
    while todo:
        value = todo.pop()
        kind = type(value)
        if kind is dict:
            todo.extend(value.values())
        elif kind is list:
            todo.extend(value)
        elif kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                return False
        elif kind is float and not math.isfinite(value):
            return False
    return True


class FrameDecoder:
    """Sans-I/O: bytes in, complete frames out. After one error it stays broken.

    Frames decoded before an error in the same `feed` are returned; the error is raised by
    the next `feed` or by `check()`.
    """

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._buf = bytearray()
        self._need: int | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back: non-zero means the peer is mid-frame."""
        return len(self._buf)

    def feed_frames(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[Frame] = []
        try:
            while True:
                if self._need is None:
                    if len(self._buf) < _LENGTH.size:
                        break
                    (size,) = _LENGTH.unpack_from(self._buf)
                    self._codec.check_length(size)  # before waiting for the body
                    del self._buf[:_LENGTH.size]
                    self._need = size
                if len(self._buf) < self._need:
                    break
                payload = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                self._need = None
                frames.append(self._codec.decode_payload(payload))
        except RemoteProtocolError as exc:
            self._error = exc
            if not frames:
                raise
            # Deliver the good frames that came before the bad one; `check()` (or the next
            # feed) raises the error, so the caller decides when to drop the connection.
        return frames

    def check(self) -> None:
        """Raise the error that ended decoding, if any."""
        if self._error is not None:
            raise self._error

    def feed(self, data: bytes) -> list[object]:
        return [f.msg for f in self.feed_frames(data)]

    def truncated(self) -> RemoteProtocolError | None:
        """The error to report when the stream ends now, or None at a frame boundary."""
        if not self._buf and self._need is None:
            return None
        if self._need is None:
            return RemoteProtocolError(
                f"truncated frame: stream ended inside a length prefix ({len(self._buf)} bytes)")
        return RemoteProtocolError(
            f"truncated frame: stream ended after {len(self._buf)} of {self._need} bytes")


#: The registry that messages defined across cloudd register with.
default_codec = Codec()


def register(cls: type[T] | None = None, name: str | None = None) -> Any:
    """Register with the default codec; usable as `@register` or `@register(name="x")`."""
    if cls is None:
        def deco(c: type[T]) -> type[T]:
            return default_codec.register(c, name)
        return deco
    return default_codec.register(cls, name)


async def read_frame(reader: asyncio.StreamReader, codec: Codec = default_codec) -> Frame | None:
    """One frame from a stream; None at a clean end of stream between frames.

    The length is checked before the body is awaited, so a peer announcing 1 GB costs nothing.
    """
    head = await reader.read(_LENGTH.size)
    if not head:
        return None
    try:
        head += await reader.readexactly(_LENGTH.size - len(head))
        (size,) = _LENGTH.unpack(head)
        codec.check_length(size)
        payload = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise RemoteProtocolError(
            f"truncated frame: stream ended after {len(exc.partial)} bytes") from None
    return codec.decode_payload(payload)


async def write_message(writer: asyncio.StreamWriter, msg: object, *,
                        codec: Codec = default_codec) -> None:
    writer.write(codec.encode(msg))
    await writer.drain()
