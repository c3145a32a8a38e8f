"""The agent's network: one mutual-TLS listening port, one persistent connection per peer.

Theory of operation. Each agent listens on one port. To talk to a peer it keeps one outgoing
connection open (a TLS handshake costs milliseconds, a round trip on an open connection a
fraction of one), redialling with exponential backoff and jitter when it drops. Messages to a
peer go on our outgoing connection; messages from it arrive on its outgoing connection, our
inbound one. A request (`request()`) is a frame with an id; its reply comes back on the same
connection with the same id.

Failures are events, not exceptions: `send()` never raises for the network. A failed dial, a
lost connection, or a message dropped because the peer is down is reported to `on_event` as
`PeerUnreachable(peer, reason)` so that the core can react; `PeerConnected(peer)` says a link
is up. Messages queued while dialling are dropped (and reported) if the dial fails: stale
protocol messages delivered late do more harm than good, and the core resends what matters.

Protections on the listening side: a cap on concurrent inbound connections (counted from the
TCP accept, before TLS); TLS plus Hello must complete within `handshake_timeout`, so idle
unauthenticated connections are closed; a frame once started must complete within
`frame_timeout`; any malformed, oversized or unknown frame closes that one connection and
logs `protocol_error` with the peer and the reason. Nothing else changes: in particular a
connection only a peer's dial opened never reports it connected (`PeerConnected` comes from
our own outgoing link), and an outgoing link whose connection ended, for whatever reason, is
DOWN and redialled, never left UP.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd import log
from cloudd.backoff import Backoff
from cloudd.config.agent import TransportSettings
from cloudd.daemon.network.codec import PROTOCOL_VERSION, Codec, Frame, FrameDecoder, default_codec
from cloudd.daemon.network.tls import (
    Hello,
    PeerIdentityError,
    check_hello,
    check_server,
    client_context,
    server_context,
)
from cloudd.errors import ClouddError, PermanentError, RemoteProtocolError, TemporaryError
from cloudd.pki import Identity, PkiFiles

#: Share of a redial delay taken off at random: agents that lost the same peer together
#: (a restarted leader) spread their dials over half the delay instead of arriving at once.
REDIAL_JITTER = 0.5


class LinkState(enum.Enum):
    """Our outgoing connection to one peer: CONNECTING -> UP -> DOWN (backing off, or woken
    at once when the peer dials us) -> CONNECTING ... until the transport closes."""

    CONNECTING = "connecting"
    """Dialling: messages wait in the link's queue (up to `queue_limit`)."""
    UP = "up"
    """Connected and logged in both ways: messages go straight onto the connection."""
    DOWN = "down"
    """The dial failed or the connection dropped: messages are dropped and reported."""


@dataclass(frozen=True)
class PeerConnected:
    peer: str


@dataclass(frozen=True)
class PeerUnreachable:
    peer: str
    reason: str


@dataclass(frozen=True)
class RemoteFailure:
    """The reply sent when a request's handler failed; `request()` raises it again locally."""

    temporary: bool
    message: str
    delay: float = 1.0


default_codec.register(RemoteFailure, "cloudd.remote-failure")

#: `handler(identity, msg)`: every message, with what the sender's certificate says of it.
Handler = Callable[[Identity, object], Awaitable[object | None]]
EventSink = Callable[[PeerConnected | PeerUnreachable], None]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, RemoteProtocolError) else f"{type(exc).__name__}: {text}"


class _Conn:
    """One authenticated connection, in either direction: reads frames and dispatches them."""

    def __init__(self, owner: Transport, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, decoder: FrameDecoder, identity: Identity,
                 pending: dict[int, asyncio.Future[object]]) -> None:
        self.owner, self.reader, self.writer = owner, reader, writer
        self.decoder, self.identity, self.pending = decoder, identity, pending
        self.peer = identity.name
        #: requests from this peer being answered now (bounded: `max_requests_in_flight`)
        self.answering = 0

    def write(self, data: bytes) -> str | None:
        """Queue bytes on the socket; returns why not, if they cannot go."""
        if self.writer.is_closing():
            return "connection closing"
        if self.writer.transport.get_write_buffer_size() > self.owner.settings.max_buffer:
            return "send buffer full"
        self.writer.write(data)
        return None

    async def run(self, frames: list[Frame]) -> str:
        """Serve until the connection ends; returns why it ended."""
        timeout = self.owner.settings.frame_timeout
        try:
            for frame in frames:
                await self._dispatch(frame)
            self.decoder.check()
            while True:
                if self.decoder.pending:
                    try:
                        async with asyncio.timeout(timeout):
                            data = await self.reader.read(1 << 16)
                    except TimeoutError:
                        raise RemoteProtocolError(
                            f"frame not completed within {timeout}s") from None
                else:
                    data = await self.reader.read(1 << 16)
                if not data:
                    truncated = self.decoder.truncated()
                    if truncated is not None:
                        raise truncated
                    return "connection closed by peer"
                for frame in self.decoder.feed_frames(data):
                    await self._dispatch(frame)
                self.decoder.check()
        except RemoteProtocolError as exc:
            self.owner.log.warning("protocol_error", peer=self.peer, reason=str(exc))
            return f"protocol error: {exc}"
        except (OSError, EOFError) as exc:
            return _reason(exc)
        except Exception as exc:  # a bug of ours in decoding: it ends this connection only
            self.owner.log.exception("connection_failed", peer=self.peer, reason=_reason(exc))
            # Said as a failure, so that an outgoing link goes DOWN and redials: a link left
            # UP on a connection nobody reads would take every message and deliver none.
            return f"connection failed: {_reason(exc)}"

    async def _dispatch(self, frame: Frame) -> None:
        if frame.reply:
            future = self.pending.pop(frame.rid, None)
            if future is not None and not future.done():
                future.set_result(frame.msg)
            return  # a late reply to a request that timed out: nobody waits for it
        if frame.request:
            if self.answering >= self.owner.settings.max_requests_in_flight:
                # Refused at once, without spawning anything: the peer's flood costs us a
                # frame's decoding and this reply, nothing that grows.
                busy = RemoteFailure(temporary=True, message=(
                    f"{self.answering} requests from {self.peer} already in flight"))
                self.write(self.owner.codec.encode(busy, rid=frame.rid, reply=True))
                return
            self.answering += 1
            self.owner.spawn(self._answer(frame))
            return
        try:
            await self.owner.handler(self.identity, frame.msg)
        except ClouddError as exc:  # a refusal the handler meant: one line, no traceback
            self.owner.log.warning("message_dropped", peer=self.peer, reason=str(exc))
        except Exception as exc:  # a handler bug must not cut the peer off
            self.owner.log.exception("handler_failed", peer=self.peer, reason=_reason(exc))

    async def _answer(self, frame: Frame) -> None:
        try:
            await self._reply(frame)
        finally:
            self.answering -= 1

    async def _reply(self, frame: Frame) -> None:
        reply: object
        try:
            reply = await self.owner.handler(self.identity, frame.msg)
        except TemporaryError as exc:
            reply = RemoteFailure(temporary=True, message=str(exc), delay=exc.delay)
        except ClouddError as exc:  # a refusal the handler meant (and logged): no traceback
            reply = RemoteFailure(temporary=False, message=str(exc))
        except Exception as exc:
            self.owner.log.exception("handler_failed", peer=self.peer, reason=_reason(exc))
            reply = RemoteFailure(temporary=False, message=_reason(exc))
        if reply is None:
            reply = RemoteFailure(temporary=False,
                                  message=f"no reply to {type(frame.msg).__qualname__}")
        self.write(self.owner.codec.encode(reply, rid=frame.rid, reply=True))


class _Link:
    """Our outgoing connection to one peer: dial, serve, redial with backoff, forever."""

    def __init__(self, owner: Transport, name: str, address: tuple[str, int]) -> None:
        self.owner, self.name, self.address = owner, name, address
        self.state = LinkState.CONNECTING
        self.reason = "not connected yet"
        self.queue: deque[bytes] = deque()
        self.conn: _Conn | None = None
        self.pending: dict[int, asyncio.Future[object]] = {}
        #: set when the peer has just dialled us: it is back, so redial now, not after backoff
        self.wake = asyncio.Event()
        self.task = owner.spawn(self._run())

    def offer(self, data: bytes) -> bool:
        why: str | None = None
        if self.state is LinkState.DOWN:
            why = self.reason
        elif self.conn is not None:
            why = self.conn.write(data)
        elif len(self.queue) >= self.owner.settings.queue_limit:
            why = "send queue full while connecting"
        else:
            self.queue.append(data)
        if why is not None:
            self.owner.report(PeerUnreachable(self.name, why))
        return why is None

    async def _run(self) -> None:
        failures = 0
        redial = self.owner.redial
        while True:
            self.state = LinkState.CONNECTING
            try:
                conn, frames = await self.owner.dial(self.name, self.address, self.pending)
            except Exception as exc:  # whatever the reason, the peer is unreachable for now
                failures += 1
                self._down(_reason(exc), report=failures == 1)
            else:
                failures = 1  # a connection that drops is redialled after a short pause
                self.conn, self.state = conn, LinkState.UP
                self.owner.report(PeerConnected(self.name))
                while self.queue:
                    conn.write(self.queue.popleft())
                reason = await conn.run(frames)
                self.conn = None
                conn.writer.transport.abort()
                self._down(reason, report=True)
            self.wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # arrives together with the wake-up, and close() would wait for this task.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(redial.delay(failures, self.owner.rng.random())):
                    await self.wake.wait()
            if self.wake.is_set():
                failures = 0

    def _down(self, reason: str, *, report: bool) -> None:
        self.state, self.reason = LinkState.DOWN, reason
        dropped = len(self.queue)
        self.queue.clear()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(TemporaryError(f"{self.name} unreachable: {reason}"))
        self.pending.clear()
        if report or dropped:
            self.owner.report(PeerUnreachable(self.name, reason), dropped=dropped)


class Transport:
    """One agent's endpoint. `await start()`, then `send`/`request`; `await close()` at the end.

    `handler(identity, msg)` receives every message with what the sender's certificate says
    of it (name, kind of member, a node's cloud); for a request, what it returns is the reply
    (raise `TemporaryError` to say "try later"). `on_event` receives `PeerConnected` and
    `PeerUnreachable`. Neither may block the loop.
    """

    def __init__(self, *, member: str, files: PkiFiles, handler: Handler,
                 on_event: EventSink | None = None,
                 peers: Mapping[str, tuple[str, int]] | None = None,
                 settings: TransportSettings | None = None, codec: Codec = default_codec,
                 rng: random.Random | None = None) -> None:
        self.settings = settings or TransportSettings()
        #: how long a lost link waits before the next dial (ValueError here if nonsense)
        self.redial = Backoff(base=self.settings.backoff_initial, cap=self.settings.backoff_max,
                              jitter=REDIAL_JITTER)
        self.member, self.handler, self.codec = member, handler, codec
        codec.register(Hello, "cloudd.hello")
        codec.register(RemoteFailure, "cloudd.remote-failure")
        self.rng = rng or random.Random()
        self.log = log.get("transport", node=member)
        self._on_event = on_event
        self._server_ctx = server_context(files)
        self._client_ctx = client_context(files)
        self._peers: dict[str, tuple[str, int]] = dict(peers or {})
        self._links: dict[str, _Link] = {}
        #: peers whose unreachability is logged already, until they next connect
        self._unreachable: set[str] = set()
        self._inbound: dict[str, _Conn] = {}
        # inbound sockets not yet closed -> whether the loop's TLS layer owns them yet
        self._accepting: dict[socket.socket, bool] = {}
        # inbound sockets whose peer has logged in (a subset of _accepting's keys)
        self._authenticated: set[socket.socket] = set()
        # the task serving each inbound socket, oldest first
        self._handshaking: dict[socket.socket, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: socket.socket | None = None
        self._next_rid = 0
        self._closed = False

    # -- public API -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port) and dial every known peer."""
        # Accepting by hand (not loop.create_server) lets the cap act at accept, before any
        # TLS work, and hands the untouched socket to the loop's TLS layer; upgrading a
        # stream with start_tls can lose a ClientHello already read (uvloop reads early).
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(info[0], socket.SOCK_STREAM, info[2])
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(info[4])
            listener.listen(self.settings.backlog)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        sockname = listener.getsockname()
        self.address: tuple[str, int] = (str(sockname[0]), int(sockname[1]))
        self.spawn(self._accept_loop(listener))
        self.log.info("listening", host=self.address[0], port=self.address[1])
        for name in self._peers:
            self._link(name)
        return self.address

    def add_peer(self, name: str, host: str, port: int) -> None:
        """Learn (or change) a peer's address; a changed address is redialled."""
        if self._peers.get(name) == (host, port):
            return
        self._peers[name] = (host, port)
        old = self._links.pop(name, None)
        if old is not None:
            old.task.cancel()
            if old.conn is not None:
                old.conn.writer.transport.abort()
            old._down("peer address changed", report=False)

    def link_state(self, peer: str) -> LinkState | None:
        """Where our outgoing connection to `peer` is; None before anything was sent to it."""
        link = self._links.get(peer)
        return None if link is None else link.state

    @property
    def connection_count(self) -> int:
        """Inbound connections held now, authenticated or still handshaking."""
        return len(self._accepting)

    def send(self, peer: str, msg: object) -> None:
        """Send one message; never raises for the network (failures go to `on_event`)."""
        data = self.codec.encode(msg)  # an unregistered message is our bug: that raises
        link = self._link(peer)
        if link is not None:
            link.offer(data)

    async def request(self, peer: str, msg: object, *, within: float | None = None) -> object:
        """Send `msg` and wait for the reply. Raises `TemporaryError` when the peer cannot be
        reached or does not answer in time, and the peer's own error if its handler failed."""
        self._next_rid = self._next_rid % 0xFFFFFFFF + 1
        rid = self._next_rid
        data = self.codec.encode(msg, rid=rid, request=True)
        link = self._link(peer)
        if link is None:
            raise TemporaryError(f"{peer} unreachable: no address known")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        link.pending[rid] = future
        if not link.offer(data):
            link.pending.pop(rid, None)
            raise TemporaryError(f"{peer} unreachable: {link.reason}")
        wait = self.settings.request_timeout if within is None else within
        try:
            async with asyncio.timeout(wait):
                reply = await future
        except TimeoutError:
            raise TemporaryError(f"no reply from {peer} within {wait}s") from None
        finally:
            link.pending.pop(rid, None)
        if isinstance(reply, RemoteFailure):
            if reply.temporary:
                raise TemporaryError(f"{peer}: {reply.message}", delay=reply.delay)
            raise PermanentError(f"{peer}: {reply.message}")
        return reply

    async def close(self) -> None:
        """Stop listening, drop every connection, cancel every task. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for link in self._links.values():
            link.task.cancel()
            if link.conn is not None:
                link.conn.writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:  # after the accept loop stopped waiting on it
            self._listener.close()
        for link in self._links.values():
            link._down("transport closed", report=False)
        self.log.info("closed")

    # -- used by _Conn and _Link ---------------------------------------------------------

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # a bug on our side: say so loudly, the agent carries on
            self.log.error("task_failed", task=task.get_name(), reason=_reason(exc),
                           exc_info=exc)

    def report(self, event: PeerConnected | PeerUnreachable, *, dropped: int = 0) -> None:
        """Hand `event` to `on_event`, every time: the election counts each failed send.
        The log says only when a peer's reachability changes: its first failure ever, or the
        first after a connection (a member down for good, e.g. an unused candidate node of an
        elastic role, would otherwise log a line on every message sent to it)."""
        if isinstance(event, PeerConnected):
            self._unreachable.discard(event.peer)
            self.log.info("peer_connected", peer=event.peer)
        elif event.peer not in self._unreachable:
            self._unreachable.add(event.peer)
            self.log.info("peer_unreachable", peer=event.peer, reason=event.reason,
                          dropped=dropped)
        if self._on_event is not None:
            self._on_event(event)

    def _link(self, peer: str) -> _Link | None:
        link = self._links.get(peer)
        if link is None and not self._closed:
            address = self._peers.get(peer)
            if address is None:
                self.report(PeerUnreachable(peer, "no address known"))
                return None
            link = self._links[peer] = _Link(self, peer, address)
        return link

    async def dial(self, peer: str, address: tuple[str, int],
                   pending: dict[int, asyncio.Future[object]]) -> tuple[_Conn, list[Frame]]:
        """TCP, TLS, Hello both ways, all within the handshake timeout."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                reader, writer = await asyncio.open_connection(
                    address[0], address[1], ssl=self._client_ctx, server_hostname=peer)
                writer.write(self.codec.encode(Hello(self.member, PROTOCOL_VERSION)))
                decoder = FrameDecoder(self.codec)
                frames = await _first_frames(reader, decoder)
                identity = check_server(writer.get_extra_info("ssl_object"), frames[0].msg,
                                        peer)
        except TimeoutError:
            if writer is not None:
                writer.transport.abort()
            raise TimeoutError(
                f"no TLS handshake and Hello within {self.settings.handshake_timeout}s"
            ) from None
        except BaseException:
            if writer is not None:
                writer.transport.abort()
            raise
        return (_Conn(self, reader, writer, decoder=decoder, identity=identity,
                      pending=pending), frames[1:])

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: say so, pause, and keep serving
                self.log.error("accept_failed", reason=_reason(exc))
                await asyncio.sleep(0.1)
                continue
            where = f"{address[0]}:{address[1]}"
            pending = [t for k, t in self._handshaking.items()
                       if k not in self._authenticated and not t.cancelling()]
            if len(pending) >= self.settings.max_connections:
                # Like a SYN cache: the oldest connection still handshaking makes room. A
                # member's handshake takes milliseconds, so idle floods cannot lock it out.
                pending[0].cancel()
                self.log.warning("connection_refused", peer=where, reason=(
                    f"too many unauthenticated connections ({len(pending)}): "
                    "the oldest was dropped"))
            # Small frames must leave at once: without this, Nagle and delayed ACKs add
            # 40 ms to the Hello exchange (asyncio sets it only on sockets it recognises).
            with contextlib.suppress(OSError):  # already reset by the peer: fails below
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepting[sock] = False
            task = self.spawn(self._serve_inbound(sock, where))
            self._handshaking[sock] = task
            task.add_done_callback(functools.partial(self._release, sock))

    def _release(self, sock: socket.socket, _: object) -> None:
        self._authenticated.discard(sock)
        self._handshaking.pop(sock, None)
        if not self._accepting.pop(sock, True):
            sock.close()  # cancelled before the loop took it over: nobody else will close it

    async def _serve_inbound(self, sock: socket.socket, where: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        decoder = FrameDecoder(self.codec)
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.settings.handshake_timeout):
                    # From here the loop owns the socket: it closes it if the handshake fails.
                    self._accepting[sock] = True
                    # (uvloop returns its own SSL protocol as the second item: ignore it)
                    protocol = asyncio.StreamReaderProtocol(reader)
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol, sock, ssl=self._server_ctx)
                    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                    frames = await _first_frames(reader, decoder)
                    identity = check_hello(writer.get_extra_info("ssl_object"), frames[0].msg)
                    member = identity.name
                    writer.write(self.codec.encode(Hello(self.member, PROTOCOL_VERSION)))
                    await writer.drain()
            except TimeoutError:
                self.log.warning("handshake_failed", peer=where, reason=(
                    f"no TLS handshake and Hello within {self.settings.handshake_timeout}s"))
                return
            except PeerIdentityError as exc:
                self.log.warning("peer_refused", peer=where, reason=str(exc))
                return
            except RemoteProtocolError as exc:
                self.log.warning("protocol_error", peer=where, reason=str(exc))
                return
            except (OSError, EOFError) as exc:
                self.log.warning("handshake_failed", peer=where, reason=_reason(exc))
                return
            self._authenticated.add(sock)
            link = self._links.get(member)
            if link is not None and link.state is LinkState.DOWN:
                # A restarted peer dials us first: answer it now, not after our backoff.
                link.wake.set()
            conn = _Conn(self, reader, writer, decoder=decoder, identity=identity, pending={})
            old = self._inbound.get(member)
            if old is not None:  # the peer redialled: its old connection is dead or dying
                old.writer.transport.abort()
            self._inbound[member] = conn
            self.log.debug("peer_accepted", peer=member, address=where)
            try:
                reason = await conn.run(frames[1:])
                self.log.debug("peer_disconnected", peer=member, reason=reason)
            finally:
                if self._inbound.get(member) is conn:
                    del self._inbound[member]
        finally:
            if writer is not None:
                writer.transport.abort()


async def _first_frames(reader: asyncio.StreamReader, decoder: FrameDecoder) -> list[Frame]:
    """Read until at least one whole frame has arrived (the Hello), and return all of them."""
    while True:
        data = await reader.read(1 << 16)
        if not data:
            truncated = decoder.truncated()
            raise truncated or ConnectionResetError("connection closed before Hello")
        frames = decoder.feed_frames(data)
        if frames:
            return frames

