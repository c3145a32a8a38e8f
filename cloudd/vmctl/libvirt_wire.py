"""The part of libvirt-python's API that cloudd uses, over libvirt's RPC protocol in pure Python.

Why: the binding loads libvirt.so and some fifty shared libraries (GnuTLS, libxml2, ICU,
GLib...), 12-14 MiB of a host agent's resident memory, for the dozen calls a host makes. This
module speaks the daemon's own protocol over its unix socket instead (`libvirt_xdr` the bytes,
`libvirt_rpc` the connection) with the standard library alone, and offers the binding's names,
signatures and return shapes: `open(uri)`, virConnect, virDomain, libvirtError and the VIR_*
constants, so that code written against `libvirt` works against it unchanged.

Local connections only: `qemu:///system` (or `driver+unix:///...`) on libvirtd's socket,
/run/libvirt/libvirt-sock unless the URI's `?socket=` says another. Remote transports (ssh, tcp,
tls) are refused. Event and close callbacks run on the connection's reader thread and must not
call libvirt (the call would wait for the thread that runs it: it raises instead).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

from cloudd.vmctl import libvirt_names as names
from cloudd.vmctl import libvirt_xdr as xdr
from cloudd.vmctl.libvirt_names import *  # noqa: F403 - the binding's constants, re-exported
from cloudd.vmctl.libvirt_rpc import Client
from cloudd.vmctl.libvirt_rpc import libvirtError as libvirtError
from cloudd.vmctl.libvirt_xdr import DomainRef, Packer, Proc, TypedParam, Unpacker

#: libvirtd's socket for privileged connections.
SYSTEM_SOCKET = "/run/libvirt/libvirt-sock"

#: The types libvirt gives the migration parameters (libvirt-domain.h's VIR_MIGRATE_PARAM_*).
MIGRATE_PARAM_TYPES: dict[str, TypedParam] = {
    names.VIR_MIGRATE_PARAM_URI: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_DEST_NAME: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_DEST_XML: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_PERSIST_XML: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_BANDWIDTH: TypedParam.ULLONG,
    names.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY: TypedParam.ULLONG,
    names.VIR_MIGRATE_PARAM_GRAPHICS_URI: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_MIGRATE_DISKS: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_DISKS_PORT: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_DISKS_URI: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_COMPRESSION: TypedParam.STRING,
    names.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_COMPRESSION_XBZRLE_CACHE: TypedParam.ULLONG,
    names.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: TypedParam.INT,
    names.VIR_MIGRATE_PARAM_TLS_DESTINATION: TypedParam.STRING,
}


def _invalid(message: str) -> libvirtError:
    return libvirtError.local(names.VIR_ERR_INVALID_ARG, names.VIR_FROM_REMOTE,
                              f"libvirt_wire: {message}")


def local_target(uri: str) -> tuple[str, str]:
    """The socket to connect to for `uri` and the URI the daemon is to open; libvirtError
    (VIR_ERR_INVALID_ARG) for a URI that is not local."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme:
        raise _invalid(f"{uri!r} is not a libvirt URI (driver:///path)")
    driver, _, transport = scheme.partition("+")
    place, _, query = rest.partition("?")
    host, _, path = place.partition("/")
    if transport not in ("", "unix"):
        raise _invalid(f"transport {transport!r} of {uri!r} is not supported: only local "
                       "connections, on libvirtd's unix socket")
    if host:
        raise _invalid(f"{uri!r} names host {host!r}: only local connections (driver:///path), "
                       "on libvirtd's unix socket, are supported")
    where, kept = SYSTEM_SOCKET, []
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "socket":
            where = value
        else:
            kept.append(item)
    name = f"{driver}:///{path}" + (f"?{'&'.join(kept)}" if kept else "")
    return where, name


def speaks(uri: str) -> bool:
    """Whether this client serves `uri`: a local libvirtd's driver; not libvirt's in-process
    test driver (`test:///`, inside the binding's library: the daemon would open one of its
    own), nor a remote transport."""
    if uri.partition(":")[0] in ("test", "test+unix"):
        return False
    try:
        local_target(uri)
    except libvirtError:
        return False
    return True


def open(uri: str) -> virConnect:
    """Connect to libvirtd's socket and open `uri` there, as libvirt.open does."""
    where, name = local_target(uri)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(where)
    except OSError as e:
        sock.close()
        raise libvirtError.local(names.VIR_ERR_SYSTEM_ERROR, names.VIR_FROM_RPC,
                                 f"Failed to connect socket to '{where}': "
                                 f"{e.strerror or e}") from None
    client = Client(sock, where)
    try:
        _authenticate(client, uri)
        # asked as libvirt's remote driver does: the daemon then keeps us alive from its side
        client.call(Proc.CONNECT_SUPPORTS_FEATURE,
                    Packer().i32(xdr.FEATURE_PROGRAM_KEEPALIVE).getvalue(), Unpacker.i32)
        args = Packer()
        client.call(Proc.CONNECT_OPEN, args.optional(name, args.string).u32(0).getvalue(), _void)
    except BaseException:
        client.close()
        raise
    return virConnect(client, uri)


def _authenticate(client: Client, uri: str) -> None:
    types = client.call(Proc.AUTH_LIST, b"",
                        lambda u: u.array(xdr.AUTH_TYPE_LIST_MAX, u.i32, "auth types"))
    if not types or xdr.AUTH_NONE in types:
        return
    if xdr.AUTH_POLKIT in types:
        client.call(Proc.AUTH_POLKIT, b"", Unpacker.i32)
        return
    raise libvirtError.local(names.VIR_ERR_AUTH_FAILED, names.VIR_FROM_REMOTE,
                             f"libvirt_wire: libvirtd at {client.where} offers only "
                             f"authentication types {types} for {uri!r}; only none and "
                             "polkit are implemented")


def _void(u: Unpacker) -> None:
    return None


def _int(u: Unpacker) -> int:
    return u.i32()


def _string(u: Unpacker) -> str:
    return u.string()


class virConnect:
    """A connection to libvirtd, with the binding's methods."""

    def __init__(self, client: Client, uri: str) -> None:
        self._client = client
        self._uri = uri
        self._close_cb: tuple[Callable[..., Any], Any] | None = None
        self._callbacks: dict[int, tuple[Callable[..., Any], Any]] = {}
        self._closed = False
        client.events[Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE] = self._lifecycle
        client.on_close = self._on_close

    def _call(self, proc: Proc, args: bytes = b"",
              decode: Callable[[Unpacker], Any] = _void) -> Any:
        if self._closed:
            raise libvirtError.local(names.VIR_ERR_INVALID_CONN, names.VIR_FROM_RPC,
                                     f"libvirt_wire: connection to {self._uri} is closed")
        return self._client.call(proc, args, decode)

    def _domain(self, ref: DomainRef) -> virDomain:
        return virDomain(self, ref)

    def getURI(self) -> str:
        return self._uri

    def isAlive(self) -> int:
        return int(self._client.alive and not self._closed)

    def listAllDomains(self, flags: int = 0) -> list[virDomain]:
        refs = self._call(Proc.CONNECT_LIST_ALL_DOMAINS, Packer().i32(1).u32(flags).getvalue(),
                          lambda u: (u.array(xdr.DOMAIN_LIST_MAX, u.domain, "domains"), u.u32())[0])
        return [self._domain(r) for r in refs]

    def lookupByName(self, name: str) -> virDomain:
        ref = self._call(Proc.DOMAIN_LOOKUP_BY_NAME, Packer().string(name).getvalue(),
                         Unpacker.domain)
        return self._domain(ref)

    def defineXMLFlags(self, xml: str, flags: int = 0) -> virDomain:
        ref = self._call(Proc.DOMAIN_DEFINE_XML_FLAGS, Packer().string(xml).u32(flags).getvalue(),
                         Unpacker.domain)
        return self._domain(ref)

    def getInfo(self) -> list[Any]:
        """[model, memory in MiB, cpus, MHz, NUMA nodes, sockets, cores, threads]."""
        def decode(u: Unpacker) -> list[Any]:
            # `char model[32]`: an XDR array of chars, four bytes each
            model = bytes(u.i32() & 0xFF for _ in range(32)).split(b"\0")[0].decode()
            return [model, u.u64() >> 10, *(u.i32() for _ in range(6))]

        info: list[Any] = self._call(Proc.NODE_GET_INFO, b"", decode)
        return info

    def getFreeMemory(self) -> int:
        free: int = self._call(Proc.NODE_GET_FREE_MEMORY, b"", Unpacker.u64)
        return free

    def setKeepAlive(self, interval: int, count: int) -> int:
        self._client.set_keepalive(interval, count)
        return 0

    def registerCloseCallback(self, cb: Callable[[virConnect, int, Any], None],
                              opaque: Any) -> int:
        self._close_cb = (cb, opaque)
        return 0

    def unregisterCloseCallback(self) -> None:
        self._close_cb = None

    def _on_close(self, reason: int) -> None:
        registered = self._close_cb
        if registered is not None:
            cb, opaque = registered
            cb(self, reason, opaque)

    def domainEventRegisterAny(self, dom: virDomain | None, eventID: int,
                               cb: Callable[..., Any], opaque: Any) -> int:
        if eventID != names.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
            raise libvirtError.local(
                names.VIR_ERR_ARGUMENT_UNSUPPORTED, names.VIR_FROM_REMOTE,
                f"libvirt_wire: domain event {eventID} is not supported; only "
                f"VIR_DOMAIN_EVENT_ID_LIFECYCLE ({names.VIR_DOMAIN_EVENT_ID_LIFECYCLE}) is")

        def registered(u: Unpacker) -> int:
            # on the reader thread, before it reads the next packet: maybe the first event
            callback_id = u.i32()
            self._callbacks[callback_id] = (cb, opaque)
            return callback_id

        args = Packer().i32(eventID)
        args.optional(dom, lambda d: args.domain(d._ref))
        callback_id: int = self._call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                                      args.getvalue(), registered)
        return callback_id

    def domainEventDeregisterAny(self, callbackID: int) -> int:
        self._call(Proc.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
                   Packer().i32(callbackID).getvalue())
        self._callbacks.pop(callbackID, None)
        return 0

    def _lifecycle(self, u: Unpacker) -> Callable[[], None] | None:
        callback_id, ref, event, detail = u.i32(), u.domain(), u.i32(), u.i32()
        u.done()
        registered = self._callbacks.get(callback_id)
        if registered is None:
            return None  # deregistered while the event was on its way
        cb, opaque = registered
        return lambda: cb(self, self._domain(ref), event, detail, opaque)

    def close(self) -> int:
        """Close the connection (CONNECT_CLOSE, then the socket); safe twice."""
        if self._closed:
            return 0
        # the daemon hangs up after its reply: an end this client asked for, no close callback
        self._client.closing()
        try:
            if self._client.alive:
                self._call(Proc.CONNECT_CLOSE)
        except libvirtError:
            pass  # the daemon went away first: closed all the same
        finally:
            self._closed = True
            self._client.close()
        return 0


class virDomain:
    """A domain of a connection, with the binding's methods."""

    def __init__(self, conn: virConnect, ref: DomainRef) -> None:
        self._conn = conn
        self._ref = ref

    def _call(self, proc: Proc, tail: Callable[[Packer], object] = lambda p: None,
              decode: Callable[[Unpacker], Any] = _void) -> Any:
        args = Packer().domain(self._ref)
        tail(args)
        return self._conn._call(proc, args.getvalue(), decode)

    def _ok(self, proc: Proc, *flags: int) -> int:
        self._call(proc, lambda p: [p.u32(f) for f in flags])
        return 0

    def _running_as(self, ref: DomainRef) -> None:
        self._ref = DomainRef(self._ref.name, self._ref.uuid, ref.id)

    def connect(self) -> virConnect:
        return self._conn

    def name(self) -> str:
        return self._ref.name

    def UUID(self) -> bytes:
        return self._ref.uuid

    def UUIDString(self) -> str:
        return xdr.uuid_string(self._ref.uuid)

    def ID(self) -> int:
        return self._ref.id

    def state(self, flags: int = 0) -> list[int]:
        state: list[int] = self._call(Proc.DOMAIN_GET_STATE, lambda p: p.u32(flags),
                                      lambda u: [u.i32(), u.i32()])
        return state

    def controlInfo(self, flags: int = 0) -> list[int]:
        info: list[int] = self._call(Proc.DOMAIN_GET_CONTROL_INFO, lambda p: p.u32(flags),
                                     lambda u: [u.u32(), u.u32(), u.u64()])
        return info

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        def decode(u: Unpacker) -> dict[str, Any]:
            kind = u.i32()
            stats: dict[str, Any] = {n: v for n, _, v in u.typed_params(xdr.JOB_STATS_MAX)}
            stats["type"] = kind
            return stats

        stats: dict[str, Any] = self._call(Proc.DOMAIN_GET_JOB_STATS, lambda p: p.u32(flags),
                                           decode)
        return stats

    def metadata(self, type: int, uri: str | None, flags: int = 0) -> str:
        text: str = self._call(Proc.DOMAIN_GET_METADATA,
                               lambda p: p.i32(type).optional(uri, p.string).u32(flags), _string)
        return text

    def XMLDesc(self, flags: int = 0) -> str:
        xml: str = self._call(Proc.DOMAIN_GET_XML_DESC, lambda p: p.u32(flags), _string)
        return xml

    def create(self) -> int:
        return self.createWithFlags(0)

    def createWithFlags(self, flags: int = 0) -> int:
        self._running_as(self._call(Proc.DOMAIN_CREATE_WITH_FLAGS, lambda p: p.u32(flags),
                                    Unpacker.domain))
        return 0

    def destroy(self) -> int:
        self._ok(Proc.DOMAIN_DESTROY)
        self._running_as(DomainRef(self._ref.name, self._ref.uuid, -1))
        return 0

    def shutdown(self) -> int:
        return self._ok(Proc.DOMAIN_SHUTDOWN)

    def reset(self, flags: int = 0) -> int:
        return self._ok(Proc.DOMAIN_RESET, flags)

    def undefine(self) -> int:
        return self._ok(Proc.DOMAIN_UNDEFINE)

    def undefineFlags(self, flags: int = 0) -> int:
        return self._ok(Proc.DOMAIN_UNDEFINE_FLAGS, flags)

    def isActive(self) -> int:
        active: int = self._call(Proc.DOMAIN_IS_ACTIVE, decode=_int)
        return active

    def abortJob(self) -> int:
        return self._ok(Proc.DOMAIN_ABORT_JOB)

    def migrateToURI3(self, dconnuri: str, params: Mapping[str, Any], flags: int = 0) -> int:
        """Peer-to-peer migration (VIR_MIGRATE_PEER2PEER): this domain's libvirtd connects to
        the one at `dconnuri` itself; `params` by the VIR_MIGRATE_PARAM_* names."""
        if not flags & names.VIR_MIGRATE_PEER2PEER:
            raise libvirtError.local(
                names.VIR_ERR_ARGUMENT_UNSUPPORTED, names.VIR_FROM_REMOTE,
                "libvirt_wire: migrateToURI3 is implemented for peer-to-peer migration only "
                "(VIR_MIGRATE_PEER2PEER in flags)")
        if _is_local(dconnuri):
            # refused before any call, as libvirt's virDomainMigrateCheckNotLocal does
            raise libvirtError("migrateToURI3 failed", (
                names.VIR_ERR_INVALID_ARG, names.VIR_FROM_DOMAIN,
                "Attempt to migrate guest to the same host", names.VIR_ERR_ERROR,
                "virDomainMigrateCheckNotLocal", "dconnuri", None, 0, 0))
        typed = [(key, _migrate_param_type(key, value), value) for key, value in params.items()]
        self._call(Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS,
                   lambda p: p.optional(dconnuri, p.string).typed_params(typed).opaque(b"")
                   .u32(flags),
                   lambda u: u.opaque(xdr.MIGRATE_COOKIE_MAX, "the migration cookie"))
        return 0


def _is_local(uri: str) -> bool:
    """Whether `uri` names this host (no server, or one named localhost...), as libvirt sees it
    (virDomainMigrateCheckNotLocal): a unix socket, by its transport or a `socket=`, is taken
    for another daemon's, whoever names it knowing what they do."""
    scheme, _, rest = uri.partition("://")
    query = rest.partition("?")[2]
    if "unix" in scheme or any(item.partition("=")[0] == "socket"
                               for item in query.split("&")):
        return False
    authority = rest.partition("/")[0].rpartition("@")[2]
    server = authority.partition("]")[0][1:] if authority.startswith("[") \
        else authority.partition(":")[0]
    return not server or server.startswith("localhost")


def _migrate_param_type(key: str, value: object) -> int:
    kind = MIGRATE_PARAM_TYPES.get(key)
    if kind is None:
        raise _invalid(f"migration parameter {key!r} is unknown to libvirt_wire (known: "
                       f"{', '.join(sorted(MIGRATE_PARAM_TYPES))})")
    wanted = str if kind is TypedParam.STRING else int
    if not isinstance(value, wanted) or isinstance(value, bool):
        raise _invalid(f"migration parameter {key!r} takes a {wanted.__name__}, "
                       f"not {value!r}")
    return kind
