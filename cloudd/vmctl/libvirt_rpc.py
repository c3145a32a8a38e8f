"""One connection to libvirtd's socket: calls from many threads, one reader thread, keepalive.

Theory of operation. A caller packs its arguments, takes the next serial, records a Pending
under it and sends the packet (one send lock keeps packets whole). The reader thread owns the
receiving side: it cuts the stream into packets, hands each reply to the Pending of its serial
(decoding the payload there, on the reader, so that a callback registration is in place before
the next packet, maybe its first event, is read), passes events to their handler, answers the
daemon's keepalive PINGs and sends our own. Each caller waits on its own Pending, so a call that
the daemon holds (a reset on a stopped qemu) blocks only its own thread.

The connection ends once, with one libvirtError: end of file, a failed read or write, keepalive
silence, or a packet that breaks the protocol. Every waiting caller gets that error, every later
call too, and the close callback runs once (not when the client closes the connection itself).
Lost connections raise VIR_ERR_SYSTEM_ERROR from VIR_FROM_RPC, as the binding's do, so cloudd's
backend treats them as an unavailable libvirtd; protocol violations raise VIR_ERR_RPC.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cloudd.vmctl import libvirt_names as names
from cloudd.vmctl import libvirt_xdr as xdr

T = TypeVar("T")

#: Bytes asked of the socket per read.
READ_SIZE = 65536


class libvirtError(Exception):
    """A failed libvirt call, as the binding's: `err` is (code, domain, message, level, str1,
    str2, str3, int1, int2), or None for an error raised with a message alone."""

    def __init__(self, defmsg: str, err: tuple[int, int, str | None, int, str | None,
                                               str | None, str | None, int, int] | None = None
                 ) -> None:
        super().__init__(err[2] if err is not None and err[2] else defmsg)
        self.err = err

    @classmethod
    def local(cls, code: int, domain: int, message: str) -> libvirtError:
        """An error of this client's own making (its message also in `str1`, as libvirt's)."""
        return cls(message, (code, domain, message, names.VIR_ERR_ERROR, message, None, None,
                             -1, -1))

    @classmethod
    def remote(cls, e: xdr.RemoteError, what: str) -> libvirtError:
        return cls(f"{what} failed", (e.code, e.domain, e.message, e.level, e.str1, e.str2,
                                      e.str3, e.int1, e.int2))

    # the binding's readers of `err` that cloudd calls (it has more: level, str1-3, int1-2)
    def get_error_code(self) -> int | None:
        return None if self.err is None else self.err[0]

    def get_error_domain(self) -> int | None:
        return None if self.err is None else self.err[1]

    def get_error_message(self) -> str | None:
        return None if self.err is None else self.err[2]


def lost(where: str, why: str) -> libvirtError:
    return libvirtError.local(names.VIR_ERR_SYSTEM_ERROR, names.VIR_FROM_RPC,
                              f"connection to libvirtd at {where} lost: {why}")


class Beat(enum.Enum):
    """What keepalive asks for at a given moment."""

    WAIT = "wait"
    PING = "ping"
    DEAD = "dead"


@dataclass
class Keepalive:
    """libvirt's keepalive, as a pure state machine fed with `now`.

    After `interval` seconds with nothing received, a PING; another every `interval` seconds
    while the silence lasts; once `count` PINGs went unanswered and `interval` more seconds pass
    (silence of interval * (count + 1) seconds, as libvirt's virConnectSetKeepAlive says), the
    peer is dead. Anything received (a PONG, a reply, an event) starts over."""

    interval: float
    count: int
    last: float
    pings: int = 0

    def received(self, now: float) -> None:
        self.last, self.pings = now, 0

    def deadline(self) -> float:
        return self.last + self.interval * (self.pings + 1)

    def tick(self, now: float) -> Beat:
        if now < self.deadline():
            return Beat.WAIT
        if self.pings >= self.count:
            return Beat.DEAD
        self.pings += 1
        return Beat.PING

    def silence(self, now: float) -> str:
        return (f"nothing received for {now - self.last:.0f} s ({self.pings} keepalive PINGs "
                f"unanswered, interval {self.interval:g} s)")


class _Pending:
    """One call waiting for its reply; filled by the reader thread."""

    def __init__(self, proc: int, decode: Callable[[xdr.Unpacker], object]) -> None:
        self.proc = proc
        self.decode = decode
        self.done = threading.Event()
        self.result: object = None
        self.error: libvirtError | None = None

    def fail(self, error: libvirtError) -> None:
        self.error = error
        self.done.set()


CloseHandler = Callable[[int], None]
EventHandler = Callable[[xdr.Unpacker], Callable[[], None] | None]


class Client:
    """The connection: `call` from any thread; handlers run on the reader thread."""

    def __init__(self, sock: socket.socket, where: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self._sock = sock
        self._clock = clock
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._serial = 0
        self._pending: dict[int, _Pending] = {}
        self._dead: libvirtError | None = None
        self._closing = False
        self._keepalive: Keepalive | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.on_close: CloseHandler | None = None
        self.events: dict[int, EventHandler] = {}
        self._reader = threading.Thread(target=self._read, name="libvirt-wire", daemon=True)
        self._reader.start()

    # -- calls ------------------------------------------------------------------------------

    def call(self, proc: xdr.Proc, args: bytes, decode: Callable[[xdr.Unpacker], T]) -> T:
        """Call `proc` of the remote program and wait for its reply, decoded by `decode`."""
        if threading.current_thread() is self._reader:
            raise libvirtError.local(
                names.VIR_ERR_OPERATION_INVALID, names.VIR_FROM_RPC,
                f"REMOTE_PROC_{proc.name} called from a libvirt_wire event or close callback: "
                "its reply would have to be read by the thread waiting for it")
        pending = _Pending(proc, decode)
        with self._lock:
            if self._dead is not None:
                raise self._dead
            self._serial += 1
            serial = self._serial
        try:  # framed before it waits: a packet too long to send leaves no call waiting
            packet = xdr.frame(xdr.Header(xdr.REMOTE_PROGRAM, xdr.REMOTE_PROTOCOL_VERSION, proc,
                                          xdr.MessageType.CALL, serial, xdr.ReplyStatus.OK),
                               args)
        except ValueError as e:
            raise libvirtError.local(names.VIR_ERR_INVALID_ARG, names.VIR_FROM_RPC,
                                     f"REMOTE_PROC_{proc.name}: {e}") from None
        with self._lock:
            if self._dead is not None:
                raise self._dead
            self._pending[serial] = pending
        self._send(packet)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _send(self, packet: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(packet)
        except OSError as e:
            self._end(lost(self.where, f"cannot write: {e.strerror or e}"),
                      names.VIR_CONNECT_CLOSE_REASON_ERROR)
            with self._lock:
                assert self._dead is not None
                raise self._dead from None

    def set_keepalive(self, interval: float, count: int) -> None:
        """Keepalive every `interval` s, dead after `count` unanswered; off for interval <= 0."""
        with self._lock:
            self._keepalive = (Keepalive(interval, count, self._clock()) if interval > 0
                               else None)
            if self._wake_w >= 0:
                os.write(self._wake_w, b"k")  # the reader recomputes how long it may sleep

    @property
    def alive(self) -> bool:
        return self._dead is None

    def closing(self) -> None:
        """The client is about to close: the end that follows calls no close callback."""
        with self._lock:
            self._closing = True

    def close(self, *, reason: str = "closed by the client") -> None:
        """Stop the reader; waiting callers get INVALID_CONN. No close callback. Safe twice."""
        self.closing()
        self._end(libvirtError.local(names.VIR_ERR_INVALID_CONN, names.VIR_FROM_RPC,
                                     f"connection to libvirtd at {self.where} {reason}"), None)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    # -- the reader thread ------------------------------------------------------------------

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        frames = xdr.Deframer()
        try:
            while self._dead is None:
                with self._lock:
                    ka = self._keepalive
                wait = None if ka is None else max(0.0, ka.deadline() - self._clock())
                ready = dict(poller.poll(None if wait is None else int(wait * 1000) + 1))
                if self._wake_r in ready:
                    os.read(self._wake_r, 512)
                if self._sock.fileno() in ready:
                    data = self._sock.recv(READ_SIZE)
                    if not data:
                        self._end(lost(self.where, "end of file from libvirtd"),
                                  names.VIR_CONNECT_CLOSE_REASON_EOF)
                        break
                    packets = frames.feed(data)
                    if packets and ka is not None:
                        ka.received(self._clock())
                    for packet in packets:
                        self._dispatch(packet)
                if ka is not None and self._dead is None:
                    self._beat(ka)
        except xdr.XdrError as e:
            self._end(libvirtError.local(names.VIR_ERR_RPC, names.VIR_FROM_RPC,
                                         f"malformed packet from libvirtd at {self.where}: {e}"),
                      names.VIR_CONNECT_CLOSE_REASON_ERROR)
        except OSError as e:
            self._end(lost(self.where, f"cannot read: {e.strerror or e}"),
                      names.VIR_CONNECT_CLOSE_REASON_ERROR)
        except libvirtError:
            pass  # a PING or PONG that could not be written: the connection has ended already
        except BaseException as e:
            # a bug of this module's (a decoder's), or memory: the callers must not wait for a
            # reader that is gone
            self._end(libvirtError.local(names.VIR_ERR_INTERNAL_ERROR, names.VIR_FROM_RPC,
                                         f"libvirt_wire's reader failed: {e!r}"),
                      names.VIR_CONNECT_CLOSE_REASON_ERROR)
            raise
        finally:
            self._sock.close()
            with self._lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1

    def _beat(self, ka: Keepalive) -> None:
        now = self._clock()
        beat = ka.tick(now)
        if beat is Beat.PING:
            self._keepalive_message(xdr.KEEPALIVE_PING)
        elif beat is Beat.DEAD:
            self._end(lost(self.where, ka.silence(now)), names.VIR_CONNECT_CLOSE_REASON_KEEPALIVE)

    def _keepalive_message(self, proc: int) -> None:
        self._send(xdr.frame(xdr.Header(xdr.KEEPALIVE_PROGRAM, xdr.KEEPALIVE_PROTOCOL_VERSION,
                                        proc, xdr.MessageType.MESSAGE, 0, xdr.ReplyStatus.OK)))

    def _dispatch(self, packet: bytes) -> None:
        header, body = xdr.parse(packet)
        if header.prog == xdr.KEEPALIVE_PROGRAM:
            if header.proc not in (xdr.KEEPALIVE_PING, xdr.KEEPALIVE_PONG) \
                    or header.type != xdr.MessageType.MESSAGE:
                raise xdr.XdrError(f"keepalive {body.what} is neither a PING nor a PONG")
            body.done()
            if header.proc == xdr.KEEPALIVE_PING:
                self._keepalive_message(xdr.KEEPALIVE_PONG)
            return
        if header.prog != xdr.REMOTE_PROGRAM:
            raise xdr.XdrError(f"{body.what} is of unknown program {header.prog:#010x}")
        if header.vers != xdr.REMOTE_PROTOCOL_VERSION:
            raise xdr.XdrError(f"{body.what} is of protocol version {header.vers}, "
                               f"not {xdr.REMOTE_PROTOCOL_VERSION}")
        if header.type == xdr.MessageType.MESSAGE:
            handler = self.events.get(header.proc)
            deliver = handler(body) if handler is not None else None  # others: not asked for
            if deliver is not None:
                self._deliver(deliver)
        elif header.type == xdr.MessageType.REPLY:
            self._reply(header, body)
        else:
            raise xdr.XdrError(f"{body.what}: a client receives replies and events only")

    def _reply(self, header: xdr.Header, body: xdr.Unpacker) -> None:
        with self._lock:
            pending = self._pending.pop(header.serial, None)
        if pending is None:
            raise xdr.XdrError(f"{body.what} answers no call waiting")
        if pending.proc != header.proc:
            self._pending_again(header.serial, pending)
            raise xdr.XdrError(f"{body.what} answers a call of "
                               f"REMOTE_PROC_{xdr.Proc(pending.proc).name}")
        if header.status == xdr.ReplyStatus.OK:
            try:
                pending.result = pending.decode(body)
                body.done()
            except BaseException:  # malformed, or a decoder's bug: the connection's end fails it
                self._pending_again(header.serial, pending)
                raise
            pending.done.set()
        elif header.status == xdr.ReplyStatus.ERROR:
            try:
                error = body.remote_error()
                body.done()
            except BaseException:
                self._pending_again(header.serial, pending)
                raise
            pending.fail(libvirtError.remote(error, f"REMOTE_PROC_{xdr.Proc(header.proc).name}"))
        else:
            self._pending_again(header.serial, pending)
            raise xdr.XdrError(f"{body.what} has status {header.status}, not OK or ERROR")

    def _pending_again(self, serial: int, pending: _Pending) -> None:
        # back among the waiting, so that the connection's end reaches its caller too (or
        # that end itself, when it came first: then nobody would fail it)
        with self._lock:
            dead = self._dead
            if dead is None:
                self._pending[serial] = pending
        if dead is not None:
            pending.fail(dead)

    @staticmethod
    def _deliver(callback: Callable[[], None]) -> None:
        # A callback's bug must not end the connection or the reader: reported, then on.
        try:
            callback()
        except Exception:
            sys.excepthook(*sys.exc_info())

    def _end(self, error: libvirtError, reason: int | None) -> None:
        """End the connection with `error` for every caller; the close callback once."""
        with self._lock:
            if self._dead is not None:
                return
            self._dead = error
            waiting, self._pending = self._pending, {}
            quiet = self._closing
        for pending in waiting.values():
            pending.fail(error)
        # wakes the reader (its poll sees the socket hang up), which closes the socket: closing
        # it here could hand its number to another file while the reader still polls it
        with contextlib.suppress(OSError):  # not connected any more: what we wanted
            self._sock.shutdown(socket.SHUT_RDWR)
        handler = self.on_close
        if handler is not None and reason is not None and not quiet:
            self._deliver(lambda: handler(reason))
