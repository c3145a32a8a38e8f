"""libvirt's remote RPC protocol as bytes: XDR values, packet headers, frames; no I/O.

`cloudd.vmctl.libvirt_wire` speaks this protocol to libvirtd's unix socket instead of loading
the libvirt binding (libvirt.so and some fifty shared libraries). The numbers and layouts are
those of libvirt's `src/rpc/virnetprotocol.x`, `src/rpc/virkeepaliveprotocol.x` and
`src/remote/remote_protocol.x` (XDR, RFC 4506: big-endian, every item padded to 4 bytes).

A packet is a 4-byte length (counting itself), a 24-byte header (program, version, procedure,
type, serial, status) and the payload. Every decode validates what it reads and raises
XdrError with a sentence saying what was wrong where; the transport closes the connection on it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

REMOTE_PROGRAM = 0x20008086
REMOTE_PROTOCOL_VERSION = 1
KEEPALIVE_PROGRAM = 0x6B656570
KEEPALIVE_PROTOCOL_VERSION = 1
KEEPALIVE_PING = 1
KEEPALIVE_PONG = 2

#: Largest packet libvirt sends or accepts, header included, length word not (libvirt 9).
MESSAGE_MAX = 33554432
LEN_SIZE = 4
HEADER_SIZE = 24
#: remote_nonnull_string's bound.
STRING_MAX = 4194304
DOMAIN_LIST_MAX = 16384
JOB_STATS_MAX = 64
MIGRATE_PARAM_LIST_MAX = 64
MIGRATE_COOKIE_MAX = 4194304
AUTH_TYPE_LIST_MAX = 20
UUID_SIZE = 16
#: remote_auth_type values.
AUTH_NONE = 0
AUTH_POLKIT = 2
#: virDrvFeature asked with CONNECT_SUPPORTS_FEATURE: the daemon then pings the client too.
FEATURE_PROGRAM_KEEPALIVE = 10


class MessageType(enum.IntEnum):
    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5


class ReplyStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    CONTINUE = 2


class Proc(enum.IntEnum):
    """The remote program's procedures this client calls or receives."""

    CONNECT_OPEN = 1
    CONNECT_CLOSE = 2
    NODE_GET_INFO = 6
    DOMAIN_DESTROY = 12
    DOMAIN_GET_XML_DESC = 14
    DOMAIN_LOOKUP_BY_NAME = 23
    DOMAIN_SHUTDOWN = 33
    DOMAIN_UNDEFINE = 35
    CONNECT_SUPPORTS_FEATURE = 60
    AUTH_LIST = 66
    AUTH_POLKIT = 70
    NODE_GET_FREE_MEMORY = 102
    DOMAIN_IS_ACTIVE = 150
    DOMAIN_ABORT_JOB = 164
    DOMAIN_CREATE_WITH_FLAGS = 196
    DOMAIN_GET_STATE = 212
    DOMAIN_GET_CONTROL_INFO = 229
    DOMAIN_UNDEFINE_FLAGS = 231
    DOMAIN_RESET = 245
    DOMAIN_GET_METADATA = 265
    CONNECT_LIST_ALL_DOMAINS = 273
    DOMAIN_GET_JOB_STATS = 298
    DOMAIN_MIGRATE_PERFORM3_PARAMS = 305
    CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY = 316
    CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY = 317
    DOMAIN_EVENT_CALLBACK_LIFECYCLE = 318
    DOMAIN_DEFINE_XML_FLAGS = 350


class TypedParam(enum.IntEnum):
    """virTypedParameterType: the union's discriminant in remote_typed_param."""

    INT = 1
    UINT = 2
    LLONG = 3
    ULLONG = 4
    DOUBLE = 5
    BOOLEAN = 6
    STRING = 7


class XdrError(ValueError):
    """Bytes from the daemon that are not what the protocol says they must be."""


@dataclass(frozen=True)
class Header:
    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int


@dataclass(frozen=True)
class DomainRef:
    """remote_nonnull_domain: how the protocol names a domain (id -1 when it is not running)."""

    name: str
    uuid: bytes
    id: int


@dataclass(frozen=True)
class RemoteError:
    """remote_error, the payload of a failed reply, in the binding's `err` order."""

    code: int
    domain: int
    message: str | None
    level: int
    str1: str | None
    str2: str | None
    str3: str | None
    int1: int
    int2: int


Param = tuple[str, int, int | float | bool | str]

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_HEADER = struct.Struct(">IIiIII")


def _pad(n: int) -> int:
    return -n % 4


class Packer:
    """Builds an XDR payload, item by item."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def i32(self, v: int) -> Packer:
        self._parts.append(_I32.pack(v))
        return self

    def u32(self, v: int) -> Packer:
        self._parts.append(_U32.pack(v))
        return self

    def i64(self, v: int) -> Packer:
        self._parts.append(_I64.pack(v))
        return self

    def u64(self, v: int) -> Packer:
        self._parts.append(_U64.pack(v))
        return self

    def f64(self, v: float) -> Packer:
        self._parts.append(_F64.pack(v))
        return self

    def opaque(self, data: bytes) -> Packer:
        """Variable-length opaque: its length, the bytes, padding."""
        self.u32(len(data))
        return self.fixed(data)

    def fixed(self, data: bytes) -> Packer:
        self._parts.append(data + b"\0" * _pad(len(data)))
        return self

    def string(self, s: str) -> Packer:
        return self.opaque(s.encode())

    def optional(self, value: T | None, pack: Callable[[T], object]) -> Packer:
        """XDR's `*`: a boolean, then the value when there is one."""
        self.u32(value is not None)
        if value is not None:
            pack(value)
        return self

    def domain(self, dom: DomainRef) -> Packer:
        if len(dom.uuid) != UUID_SIZE:
            raise ValueError(f"a domain's UUID is {UUID_SIZE} bytes, not {len(dom.uuid)}")
        return self.string(dom.name).fixed(dom.uuid).i32(dom.id)

    def typed_params(self, params: Iterable[Param]) -> Packer:
        items = list(params)
        self.u32(len(items))
        for name, kind, value in items:
            self.string(name).i32(kind)
            _PARAM_PACK[TypedParam(kind)](self, value)
        return self


_PARAM_PACK: dict[TypedParam, Callable[[Packer, Any], object]] = {
    TypedParam.INT: lambda p, v: p.i32(int(v)),
    TypedParam.UINT: lambda p, v: p.u32(int(v)),
    TypedParam.LLONG: lambda p, v: p.i64(int(v)),
    TypedParam.ULLONG: lambda p, v: p.u64(int(v)),
    TypedParam.DOUBLE: lambda p, v: p.f64(float(v)),
    TypedParam.BOOLEAN: lambda p, v: p.i32(1 if v else 0),
    TypedParam.STRING: lambda p, v: p.string(str(v)),
}


class Unpacker:
    """Reads XDR items from `data` in order; `what` names the payload in error messages."""

    def __init__(self, data: bytes, what: str, offset: int = 0) -> None:
        self._data = data
        self._at = offset
        self.what = what

    def _take(self, n: int, item: str) -> bytes:
        left = len(self._data) - self._at
        if n > left:
            raise XdrError(f"{self.what}: truncated at byte {self._at}: {item} needs {n} bytes, "
                           f"{left} left")
        chunk = self._data[self._at:self._at + n]
        self._at += n
        return chunk

    def i32(self) -> int:
        v: int = _I32.unpack(self._take(4, "an int"))[0]
        return v

    def u32(self) -> int:
        v: int = _U32.unpack(self._take(4, "an unsigned int"))[0]
        return v

    def i64(self) -> int:
        v: int = _I64.unpack(self._take(8, "a hyper"))[0]
        return v

    def u64(self) -> int:
        v: int = _U64.unpack(self._take(8, "an unsigned hyper"))[0]
        return v

    def f64(self) -> float:
        v: float = _F64.unpack(self._take(8, "a double"))[0]
        return v

    def flag(self) -> bool:
        v = self.i32()
        if v not in (0, 1):
            raise XdrError(f"{self.what}: a boolean at byte {self._at - 4} is {v}, not 0 or 1")
        return v == 1

    def length(self, limit: int, item: str) -> int:
        n = self.u32()
        if n > limit:
            raise XdrError(f"{self.what}: {item} of {n} items at byte {self._at - 4} is over "
                           f"its limit of {limit}")
        return n

    def fixed(self, n: int, item: str = "fixed opaque") -> bytes:
        chunk = self._take(n, item)
        self._take(_pad(n), f"the padding of {item}")
        return chunk

    def opaque(self, limit: int, item: str = "an opaque") -> bytes:
        return self.fixed(self.length(limit, item), item)

    def string(self, limit: int = STRING_MAX) -> str:
        raw = self.opaque(limit, "a string")
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise XdrError(f"{self.what}: a string before byte {self._at} is not UTF-8: {e}") \
                from None

    def optional(self, unpack: Callable[[], T]) -> T | None:
        return unpack() if self.flag() else None

    def array(self, limit: int, unpack: Callable[[], T], item: str = "an array") -> list[T]:
        return [unpack() for _ in range(self.length(limit, item))]

    def uuid(self) -> bytes:
        return self.fixed(UUID_SIZE, "a UUID")

    def domain(self) -> DomainRef:
        return DomainRef(name=self.string(), uuid=self.uuid(), id=self.i32())

    def typed_params(self, limit: int) -> list[Param]:
        return self.array(limit, self._typed_param, "typed parameters")

    def _typed_param(self) -> Param:
        name = self.string()
        kind = self.i32()
        read = _PARAM_UNPACK.get(kind)
        if read is None:
            raise XdrError(f"{self.what}: typed parameter {name!r} has unknown type {kind}")
        return name, kind, read(self)

    def remote_error(self) -> RemoteError:
        code, domain = self.i32(), self.i32()
        message = self.optional(self.string)
        level = self.i32()
        self.optional(self.domain)  # remote_error.dom: unused by libvirt
        str1, str2, str3 = (self.optional(self.string) for _ in range(3))
        int1, int2 = self.i32(), self.i32()
        self.optional(lambda: (self.string(), self.uuid()))  # remote_error.net: unused
        return RemoteError(code=code, domain=domain, message=message, level=level, str1=str1,
                           str2=str2, str3=str3, int1=int1, int2=int2)

    def done(self) -> None:
        """Every byte read: a payload longer than its struct is malformed too."""
        left = len(self._data) - self._at
        if left:
            raise XdrError(f"{self.what}: {left} bytes left over after byte {self._at}")


_PARAM_UNPACK: dict[int, Callable[[Unpacker], int | float | bool | str]] = {
    TypedParam.INT: Unpacker.i32,
    TypedParam.UINT: Unpacker.u32,
    TypedParam.LLONG: Unpacker.i64,
    TypedParam.ULLONG: Unpacker.u64,
    TypedParam.DOUBLE: Unpacker.f64,
    TypedParam.BOOLEAN: lambda u: u.i32() != 0,
    TypedParam.STRING: Unpacker.string,
}


def frame(header: Header, payload: bytes = b"") -> bytes:
    """A whole packet: length word, header, payload."""
    size = LEN_SIZE + HEADER_SIZE + len(payload)
    if size - LEN_SIZE > MESSAGE_MAX:
        raise ValueError(f"a packet of {size} bytes is over libvirt's limit of "
                         f"{MESSAGE_MAX + LEN_SIZE}")
    return _U32.pack(size) + _HEADER.pack(header.prog, header.vers, header.proc, header.type,
                                          header.serial, header.status) + payload


def parse(packet: bytes) -> tuple[Header, Unpacker]:
    """A packet without its length word: its header, and an Unpacker over its payload."""
    if len(packet) < HEADER_SIZE:
        raise XdrError(f"a packet of {len(packet)} bytes is shorter than a header "
                       f"({HEADER_SIZE} bytes)")
    header = Header(*_HEADER.unpack_from(packet))
    return header, Unpacker(packet, describe(header), HEADER_SIZE)


def describe(header: Header) -> str:
    """How error messages name a packet: its procedure, type and serial."""
    try:
        proc = (f"REMOTE_PROC_{Proc(header.proc).name}" if header.prog == REMOTE_PROGRAM
                else f"procedure {header.proc}")
    except ValueError:
        proc = f"procedure {header.proc}"
    try:
        kind = MessageType(header.type).name.lower()
    except ValueError:
        kind = f"type {header.type}"
    return f"{kind} {proc} (serial {header.serial})"


class Deframer:
    """Cuts the byte stream from the daemon into packets (without their length words).

    Refuses a length word outside libvirt's bounds as soon as it arrives, before waiting for
    (or allocating) the body it announces."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= LEN_SIZE:
            size = _U32.unpack_from(self._buf)[0]
            if not LEN_SIZE + HEADER_SIZE <= size <= LEN_SIZE + MESSAGE_MAX:
                raise XdrError(f"a packet length of {size} bytes is outside libvirt's bounds "
                               f"({LEN_SIZE + HEADER_SIZE} to {LEN_SIZE + MESSAGE_MAX})")
            if len(self._buf) < size:
                break
            out.append(bytes(self._buf[LEN_SIZE:size]))
            del self._buf[:size]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole packet yet."""
        return len(self._buf)


def uuid_string(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
