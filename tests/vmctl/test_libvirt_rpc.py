"""libvirt_rpc's connection against a scripted daemon on a socketpair: replies reach their own
callers in any order, a malformed packet or the daemon's end reaches every waiting caller as one
precise error and the close callback once, PINGs are answered, keepalive gives up on silence."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import libvirt
import pytest

from cloudd.vmctl import libvirt_xdr as xdr
from cloudd.vmctl.libvirt_rpc import Client, libvirtError
from cloudd.vmctl.libvirt_xdr import Header, MessageType, Packer, Proc, ReplyStatus, Unpacker

WAIT = 30.0  # seconds: generous bounds on what should take milliseconds


class Daemon:
    """The far end of the socket: reads the client's packets, sends what a test scripts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._frames = xdr.Deframer()
        self._ready: list[bytes] = []

    def receive(self) -> tuple[Header, Unpacker]:
        while not self._ready:
            data = self.sock.recv(65536)
            assert data, "the client closed the connection"
            self._ready += self._frames.feed(data)
        return xdr.parse(self._ready.pop(0))

    def reply(self, call: Header, payload: bytes = b"",
              status: ReplyStatus = ReplyStatus.OK) -> None:
        self.send(Header(call.prog, call.vers, call.proc, MessageType.REPLY, call.serial, status),
                  payload)

    def send(self, header: Header, payload: bytes = b"") -> None:
        self.sock.sendall(xdr.frame(header, payload))


Pair = tuple[Client, Daemon, "queue.Queue[int]"]


@pytest.fixture
def pair() -> Iterator[Pair]:
    ours, theirs = socket.socketpair()
    client = Client(ours, "test-socket")
    closed: queue.Queue[int] = queue.Queue()
    client.on_close = closed.put
    yield client, Daemon(theirs), closed
    client.close()
    theirs.close()


def call_in_thread(pool: ThreadPoolExecutor, client: Client, proc: Proc,
                   decode: Callable[[Unpacker], object] = Unpacker.i32) -> Future[object]:
    return pool.submit(client.call, proc, b"", decode)


def test_replies_reach_their_own_callers_in_any_order(pair: Pair) -> None:
    client, daemon, _ = pair
    with ThreadPoolExecutor(2) as pool:
        first = call_in_thread(pool, client, Proc.NODE_GET_FREE_MEMORY, Unpacker.u64)
        call1, _ = daemon.receive()
        second = call_in_thread(pool, client, Proc.DOMAIN_IS_ACTIVE)
        call2, _ = daemon.receive()
        daemon.reply(call2, Packer().i32(1).getvalue())
        assert second.result(WAIT) == 1
        assert not first.done()  # still waiting: the other reply was not its own
        daemon.reply(call1, Packer().u64(2**40).getvalue())
        assert first.result(WAIT) == 2**40
    assert (call1.serial, call2.serial) == (1, 2)


def test_an_error_reply_raises_the_daemons_error(pair: Pair) -> None:
    client, daemon, _ = pair
    with ThreadPoolExecutor(1) as pool:
        pending = call_in_thread(pool, client, Proc.DOMAIN_LOOKUP_BY_NAME)
        call, _ = daemon.receive()
        p = Packer().i32(libvirt.VIR_ERR_NO_DOMAIN).i32(libvirt.VIR_FROM_QEMU)
        p.optional("Domain not found", p.string).i32(2).u32(0)
        p.optional("Domain not found: %s", p.string).u32(0).u32(0).i32(-1).i32(-1).u32(0)
        daemon.reply(call, p.getvalue(), ReplyStatus.ERROR)
        with pytest.raises(libvirtError) as caught:
            pending.result(WAIT)
    assert caught.value.err == (42, 10, "Domain not found", 2, "Domain not found: %s", None,
                                None, -1, -1)
    assert str(caught.value) == "Domain not found"
    assert client.alive


@pytest.mark.parametrize(("garbage", "message"), [
    ((xdr.MESSAGE_MAX + 100).to_bytes(4, "big"),
     "malformed packet from libvirtd at test-socket: a packet length of 33554532 bytes is "
     "outside libvirt's bounds (28 to 33554436)"),
    (xdr.frame(Header(0x12345678, 1, 1, MessageType.MESSAGE, 0, ReplyStatus.OK)),
     "malformed packet from libvirtd at test-socket: message procedure 1 (serial 0) is of "
     "unknown program 0x12345678"),
    (xdr.frame(Header(xdr.REMOTE_PROGRAM, 1, Proc.DOMAIN_IS_ACTIVE, MessageType.REPLY, 2,
                      ReplyStatus.OK), b"\0\0"),
     "malformed packet from libvirtd at test-socket: reply REMOTE_PROC_DOMAIN_IS_ACTIVE "
     "(serial 2): truncated at byte 24: an int needs 4 bytes, 2 left"),
    (xdr.frame(Header(xdr.REMOTE_PROGRAM, 1, Proc.DOMAIN_IS_ACTIVE, MessageType.REPLY, 7,
                      ReplyStatus.OK), b"\0\0\0\0"),
     "malformed packet from libvirtd at test-socket: reply REMOTE_PROC_DOMAIN_IS_ACTIVE "
     "(serial 7) answers no call waiting"),
])
def test_a_malformed_packet_ends_the_connection_for_every_caller(
        pair: Pair, garbage: bytes, message: str) -> None:
    client, daemon, closed = pair
    with ThreadPoolExecutor(2) as pool:
        waiting = [call_in_thread(pool, client, Proc.DOMAIN_IS_ACTIVE) for _ in range(2)]
        for _ in waiting:
            daemon.receive()
        daemon.sock.sendall(garbage)
        errors = []
        for f in waiting:
            with pytest.raises(libvirtError) as caught:
                f.result(WAIT)
            errors.append(caught.value)
    assert errors[0] is errors[1]
    assert errors[0].get_error_message() == message
    assert (errors[0].get_error_code(), errors[0].get_error_domain()) == (
        libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC)
    assert closed.get(timeout=WAIT) == libvirt.VIR_CONNECT_CLOSE_REASON_ERROR
    with pytest.raises(libvirtError) as later:
        client.call(Proc.DOMAIN_IS_ACTIVE, b"", Unpacker.i32)
    assert later.value is errors[0]
    assert closed.empty() and not client.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_reader_that_fails_unforeseen_still_ends_every_waiting_call(pair: Pair) -> None:
    """A decoder's bug (here a ValueError) kills the reader thread: the callers, the one whose
    reply was fine included, get an error instead of waiting for a reader that is gone."""
    client, daemon, closed = pair

    def broken(u: Unpacker) -> object:
        u.i32()
        raise ValueError("a decoder's bug")

    with ThreadPoolExecutor(2) as pool:
        fine = call_in_thread(pool, client, Proc.DOMAIN_IS_ACTIVE)
        fine_call, _ = daemon.receive()
        bad = call_in_thread(pool, client, Proc.NODE_GET_FREE_MEMORY, broken)
        bad_call, _ = daemon.receive()
        daemon.reply(bad_call, Packer().i32(1).getvalue())
        for f in (fine, bad):
            with pytest.raises(libvirtError, match="libvirt_wire's reader failed: ValueError"):
                f.result(WAIT)
    assert closed.get(timeout=WAIT) == libvirt.VIR_CONNECT_CLOSE_REASON_ERROR
    assert not client.alive and fine_call.serial != bad_call.serial


def test_the_daemons_end_is_a_lost_connection_as_the_bindings(pair: Pair) -> None:
    client, daemon, closed = pair
    with ThreadPoolExecutor(1) as pool:
        pending = call_in_thread(pool, client, Proc.DOMAIN_RESET)
        daemon.receive()
        daemon.sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(libvirtError) as caught:
            pending.result(WAIT)
    assert caught.value.get_error_message() == ("connection to libvirtd at test-socket lost: "
                                                "end of file from libvirtd")
    # what cloudd's backend takes for an unavailable libvirtd
    assert (caught.value.get_error_code(), caught.value.get_error_domain()) == (
        libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)
    assert closed.get(timeout=WAIT) == libvirt.VIR_CONNECT_CLOSE_REASON_EOF


def test_the_daemons_pings_are_answered(pair: Pair) -> None:
    _, daemon, _ = pair
    daemon.send(Header(xdr.KEEPALIVE_PROGRAM, 1, xdr.KEEPALIVE_PING, MessageType.MESSAGE, 0,
                       ReplyStatus.OK))
    daemon.sock.settimeout(WAIT)
    pong, body = daemon.receive()
    assert (pong.prog, pong.proc, pong.type) == (xdr.KEEPALIVE_PROGRAM, xdr.KEEPALIVE_PONG,
                                                 MessageType.MESSAGE)
    body.done()


def test_keepalive_pings_then_gives_up_on_a_silent_daemon(pair: Pair) -> None:
    client, daemon, closed = pair
    client.set_keepalive(0.05, 2)
    daemon.sock.settimeout(WAIT)
    pings = [daemon.receive()[0].proc for _ in range(2)]
    assert pings == [xdr.KEEPALIVE_PING] * 2
    assert closed.get(timeout=WAIT) == libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE
    with pytest.raises(libvirtError, match=r"lost: nothing received for 0 s \(2 keepalive PINGs "
                                           r"unanswered, interval 0.05 s\)") as caught:
        client.call(Proc.DOMAIN_IS_ACTIVE, b"", Unpacker.i32)
    assert caught.value.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR


def test_an_answered_ping_keeps_the_connection(pair: Pair) -> None:
    client, daemon, closed = pair
    client.set_keepalive(0.05, 1)
    daemon.sock.settimeout(WAIT)
    for _ in range(3):
        assert daemon.receive()[0].proc == xdr.KEEPALIVE_PING
        daemon.send(Header(xdr.KEEPALIVE_PROGRAM, 1, xdr.KEEPALIVE_PONG, MessageType.MESSAGE, 0,
                           ReplyStatus.OK))
    assert client.alive and closed.empty()


def test_a_call_from_a_callback_raises_instead_of_waiting_forever(pair: Pair) -> None:
    client, daemon, _ = pair
    seen: Future[BaseException] = Future()

    def handler(u: Unpacker) -> Callable[[], None]:
        def deliver() -> None:
            try:
                client.call(Proc.DOMAIN_IS_ACTIVE, b"", Unpacker.i32)
            except libvirtError as e:
                seen.set_result(e)
        return deliver

    client.events[Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE] = handler
    daemon.send(Header(xdr.REMOTE_PROGRAM, 1, Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE,
                       MessageType.MESSAGE, 0, ReplyStatus.OK))
    assert "called from a libvirt_wire event or close callback" in str(seen.result(WAIT))
    assert client.alive


def test_close_ends_waiting_calls_without_the_close_callback(pair: Pair) -> None:
    client, daemon, closed = pair
    with ThreadPoolExecutor(1) as pool:
        pending = call_in_thread(pool, client, Proc.DOMAIN_RESET)
        daemon.receive()
        threading.Thread(target=client.close).start()
        with pytest.raises(libvirtError) as caught:
            pending.result(WAIT)
    assert caught.value.get_error_code() == libvirt.VIR_ERR_INVALID_CONN
    client.close()
    assert closed.empty()
