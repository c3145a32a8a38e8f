"""The transport against itself, for real: TLS 1.3 on 127.0.0.1 with certificates from a real
cluster CA. Every refused case is followed by a good peer getting through to the same server."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from cloudd.config.agent import TransportSettings, load_agent
from cloudd.daemon.network.codec import PROTOCOL_VERSION, FrameDecoder, default_codec
from cloudd.daemon.network.tls import Hello, server_context
from cloudd.daemon.network.transport import LinkState, PeerConnected, PeerUnreachable, Transport
from cloudd.errors import PermanentError, RemoteProtocolError, TemporaryError
from cloudd.pki import Identity, MemberKind, PkiFiles, init_ca, issue

FAST = TransportSettings(handshake_timeout=1.0, frame_timeout=1.0, max_connections=50,
                         backoff_initial=0.02, backoff_max=0.2, request_timeout=10.0)


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Pong:
    n: int
    by: str


@dataclass(frozen=True)
class Flaky:
    temporary: bool


@dataclass(frozen=True)
class Stall:
    pass


@dataclass(frozen=True)
class Refuse:
    """The handler refuses it on purpose (a `ClouddError`)."""


@dataclass(frozen=True)
class Faulty:
    """Stands for a bug in decoding: building it raises what no codec check expects."""

    n: int

    def __post_init__(self) -> None:
        raise TypeError("a bug in decoding")


for _cls in (Ping, Pong, Flaky, Stall, Refuse, Faulty):
    default_codec.register(_cls, f"test.transport.{_cls.__name__.lower()}")


def _kindless(d: Path, name: str, *, now: dt.datetime) -> None:
    """A certificate from the cluster CA that names a member but no kind (as issued before
    kinds existed): the transport must refuse it."""
    ca_cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"cloudd://member/{name}")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PkiFiles]:
    now = dt.datetime.now(dt.UTC)
    d = tmp_path_factory.mktemp("pki")
    init_ca(d, now=now)
    for name in ("alpha", "beta", "gamma"):
        issue(d, name, now=now, kind=MemberKind.HOST, addresses=["127.0.0.1"])
    issue(d, "web1", now=now, kind=MemberKind.NODE, cloud="shop", addresses=["127.0.0.1"])
    _kindless(d, "nokind", now=now)
    # expired 9 days ago
    issue(d, "old", now=now - dt.timedelta(days=10), kind=MemberKind.HOST, days=1)
    rogue = tmp_path_factory.mktemp("rogue")
    init_ca(rogue, now=now)
    issue(rogue, "beta", now=now, kind=MemberKind.HOST)
    issue(rogue, "alpha", now=now, kind=MemberKind.HOST)
    files = {n: PkiFiles.for_member(d, n)
             for n in ("alpha", "beta", "gamma", "old", "web1", "nokind")}
    files["rogue-beta"] = PkiFiles.for_member(rogue, "beta")
    files["rogue-alpha"] = PkiFiles.for_member(rogue, "alpha")
    return files


class Agent:
    """A real Transport with a recording handler: Ping -> Pong, Flaky -> error."""

    def __init__(self, name: str, files: PkiFiles, settings: TransportSettings = FAST) -> None:
        self.name = name
        self.got: list[tuple[str, object]] = []
        self.events: list[object] = []
        self.release = asyncio.Event()
        self.t = Transport(member=name, files=files, handler=self.handle,
                           on_event=self.events.append, settings=settings)

    async def handle(self, peer: Identity, msg: object) -> object | None:
        self.got.append((peer.name, msg))
        if isinstance(msg, Ping):
            return Pong(msg.n, self.name)
        if isinstance(msg, Flaky):
            if msg.temporary:
                raise TemporaryError("disk busy", delay=2.5)
            raise ValueError("no such domain")
        if isinstance(msg, Stall):
            await self.release.wait()
        if isinstance(msg, Refuse):
            raise PermanentError("not from you")
        return None


@pytest.fixture
async def alpha(pki: dict[str, PkiFiles]) -> AsyncIterator[Agent]:
    agent = Agent("alpha", pki["alpha"])
    await agent.t.start()
    yield agent
    await agent.t.close()


@pytest.fixture
async def beta(pki: dict[str, PkiFiles], alpha: Agent) -> AsyncIterator[Agent]:
    agent = Agent("beta", pki["beta"])
    await agent.t.start()
    agent.t.add_peer("alpha", *alpha.t.address)
    yield agent
    await agent.t.close()


async def eventually(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Poll a condition about real processes with a generous bound, so it cannot hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def good_peer_gets_through(alpha: Agent, beta: Agent, n: int = 1) -> None:
    reply = await beta.t.request("alpha", Ping(n))
    assert reply == Pong(n, "alpha")


def logged(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def open_tls(port: int, files: PkiFiles | None, *, claim: str | None,
                   ca: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made client trusting the cluster CA: TLS with `files` (or no certificate at
    all), then a Hello claiming `claim` (or none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if files is not None:
        ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    if claim is not None:
        writer.write(default_codec.encode(Hello(claim, PROTOCOL_VERSION)))
        await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sent before it closed the connection (bounded wait)."""
    data = b""
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return data


async def authenticated(alpha: Agent, pki: dict[str, PkiFiles]
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_tls(alpha.t.address[1], pki["gamma"], claim="gamma",
                                    ca=pki["alpha"].ca)
    frames = FrameDecoder(default_codec).feed(await reader.read(65536))
    assert frames == [Hello("alpha", PROTOCOL_VERSION)]
    return reader, writer


# -- good traffic ------------------------------------------------------------------------


async def test_exchange_both_ways(alpha: Agent, beta: Agent) -> None:
    alpha.t.add_peer("beta", *beta.t.address)
    beta.t.send("alpha", Ping(1))
    await good_peer_gets_through(alpha, beta, 2)
    assert alpha.got == [("beta", Ping(1)), ("beta", Ping(2))]  # in order, named by cert
    assert await alpha.t.request("beta", Ping(3)) == Pong(3, "beta")
    assert beta.got == [("alpha", Ping(3))]
    assert (alpha.t.link_state("beta"), beta.t.link_state("alpha")) == (LinkState.UP,) * 2
    assert PeerConnected("alpha") in beta.events and PeerConnected("beta") in alpha.events
    for i in range(200):  # one connection, kept open
        alpha.t.send("beta", Ping(100 + i))
    await eventually(lambda: len(beta.got) == 201)
    assert [m for _, m in beta.got[1:]] == [Ping(100 + i) for i in range(200)]


async def test_concurrent_requests_get_their_own_replies(alpha: Agent, beta: Agent) -> None:
    for _ in range(10):
        within = FAST.max_requests_in_flight
        replies = await asyncio.gather(*(beta.t.request("alpha", Ping(i)) for i in range(within)))
        assert replies == [Pong(i, "alpha") for i in range(within)]


async def test_requests_in_flight_from_one_peer_are_bounded(
        pki: dict[str, PkiFiles], alpha: Agent, beta: Agent) -> None:
    gamma = Agent("gamma", pki["gamma"])
    await gamma.t.start()
    gamma.t.add_peer("alpha", *alpha.t.address)
    bound = FAST.max_requests_in_flight
    stalled = [asyncio.ensure_future(beta.t.request("alpha", Stall())) for _ in range(bound)]
    await eventually(lambda: sum(isinstance(m, Stall) for _, m in alpha.got) == bound)
    # One more from the same peer is turned away at once, without reaching the handler...
    with pytest.raises(TemporaryError, match=f"{bound} requests from beta already in flight"):
        await beta.t.request("alpha", Ping(1))
    assert not any(isinstance(m, Ping) for _, m in alpha.got)
    # ...while another member is served as usual.
    assert await gamma.t.request("alpha", Ping(2)) == Pong(2, "alpha")
    alpha.release.set()
    for future in stalled:
        with pytest.raises(PermanentError, match="no reply to Stall"):
            await future
    assert await beta.t.request("alpha", Ping(3)) == Pong(3, "alpha")
    await gamma.t.close()


async def test_the_handler_hears_what_the_certificate_says(pki: dict[str, PkiFiles],
                                                           alpha: Agent) -> None:
    heard: list[Identity] = []

    async def note(peer: Identity, msg: object) -> None:
        heard.append(peer)

    node = Transport(member="web1", files=pki["web1"], handler=note, settings=FAST)
    await node.start()
    node.add_peer("alpha", *alpha.t.address)
    assert await node.request("alpha", Ping(1)) == Pong(1, "alpha")
    assert alpha.got == [("web1", Ping(1))]
    alpha.t.add_peer("web1", *node.address)
    alpha.t.send("web1", Ping(2))
    await eventually(lambda: bool(heard))
    assert heard == [Identity("alpha", MemberKind.HOST)]
    await node.close()


async def test_handler_failures_come_back_as_errors(alpha: Agent, beta: Agent) -> None:
    with pytest.raises(TemporaryError, match="alpha: disk busy") as info:
        await beta.t.request("alpha", Flaky(temporary=True))
    assert info.value.delay == 2.5
    with pytest.raises(PermanentError, match="alpha: ValueError: no such domain"):
        await beta.t.request("alpha", Flaky(temporary=False))
    with pytest.raises(PermanentError, match="alpha: no reply to Stall"):
        alpha.release.set()
        await beta.t.request("alpha", Stall())
    await good_peer_gets_through(alpha, beta)


async def test_a_refusal_the_handler_means_is_one_line_without_a_traceback(
        alpha: Agent, beta: Agent) -> None:
    """A request is answered with the refusal; a one-way message is dropped with one warning.
    Only a handler's bug (any other exception) is logged with its traceback."""
    with capture_logs() as logs:
        with pytest.raises(PermanentError, match="alpha: not from you"):
            await beta.t.request("alpha", Refuse())
        beta.t.send("alpha", Refuse())
        beta.t.send("alpha", Flaky(temporary=False))
        await eventually(lambda: logged(logs, "handler_failed") != [])
        await good_peer_gets_through(alpha, beta)
    assert [e["reason"] for e in logged(logs, "message_dropped")] == ["not from you"]
    [failed] = logged(logs, "handler_failed")
    assert failed["reason"] == "ValueError: no such domain" and failed["exc_info"]
    assert [type(m) for _, m in alpha.got] == [Refuse, Refuse, Flaky, Ping]


async def test_request_timeout_then_late_reply_is_harmless(alpha: Agent, beta: Agent) -> None:
    await good_peer_gets_through(alpha, beta)
    with pytest.raises(TemporaryError, match=r"no reply from alpha within 0.2s"):
        await beta.t.request("alpha", Stall(), within=0.2)
    alpha.release.set()  # the late reply arrives and is dropped quietly
    await good_peer_gets_through(alpha, beta, 5)


async def test_unreachable_peer_is_an_event_not_an_exception(beta: Agent) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens on `port` now
    beta.t.add_peer("nobody", "127.0.0.1", port)
    beta.t.send("nobody", Ping(1))  # does not raise
    await eventually(lambda: any(isinstance(e, PeerUnreachable) and e.peer == "nobody"
                                 for e in beta.events))
    event = next(e for e in beta.events if isinstance(e, PeerUnreachable))
    assert "ConnectionRefusedError" in event.reason
    await eventually(lambda: beta.t.link_state("nobody") is LinkState.DOWN)
    assert beta.t.link_state("alpha") is None  # nothing sent to it yet: no link
    with pytest.raises(TemporaryError, match="nobody unreachable"):
        await beta.t.request("nobody", Ping(2))
    beta.t.send("stranger", Ping(3))
    assert PeerUnreachable("stranger", "no address known") in beta.events


async def test_a_peer_down_for_good_is_logged_once_and_reported_every_time(
        beta: Agent) -> None:
    """Every failed send is an event for the election; the log says it once, when the
    peer's reachability changes (a member whose VM never exists would fill the log)."""
    with capture_logs() as logs:
        for n in range(5):
            beta.t.send("stranger", Ping(n))
    assert beta.events.count(PeerUnreachable("stranger", "no address known")) == 5
    assert [e["peer"] for e in logged(logs, "peer_unreachable")] == ["stranger"]


async def test_a_peer_that_comes_back_and_goes_again_is_logged_again(
        pki: dict[str, PkiFiles], alpha: Agent, beta: Agent) -> None:
    """down (logged) -> up (logged) -> down again (logged again, once)."""
    host, port = alpha.t.address
    await alpha.t.close()
    with capture_logs() as logs:
        beta.t.send("alpha", Ping(1))
        await eventually(lambda: beta.t.link_state("alpha") is LinkState.DOWN)
        for n in range(5):  # dropped while down: each one an event, none a log line
            beta.t.send("alpha", Ping(n))
        assert len(logged(logs, "peer_unreachable")) == 1
        failures = sum(isinstance(e, PeerUnreachable) for e in beta.events)
        assert failures >= 6
        again = Agent("alpha", pki["alpha"])
        await again.t.start(host, port)
        try:
            await eventually(lambda: PeerConnected("alpha") in beta.events, within=30)
            assert len(logged(logs, "peer_connected")) == 1
        finally:
            await again.t.close()
        await eventually(lambda: sum(isinstance(e, PeerUnreachable)
                                     for e in beta.events) > failures)
        for n in range(5):
            beta.t.send("alpha", Ping(n))
    assert [e["peer"] for e in logged(logs, "peer_unreachable")] == ["alpha", "alpha"]


async def test_backoff_max_from_agent_yaml_bounds_the_redial(pki: dict[str, PkiFiles],
                                                            tmp_path: Path) -> None:
    """Two transports lose the same dead peer, both redialling from 10 ms on: the one whose
    agent.yaml caps the redial at 10 ms keeps dialling, the one capped at 10 s backs off."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens on `port` now
    dials = {0.01: 0, 10.0: 0}
    transports = []

    async def ignore(peer: Identity, msg: object) -> None:
        return None

    for cap in dials:
        path = tmp_path / f"agent-{cap}.yaml"
        path.write_text(f"name: beta\ntransport: {{backoff_initial: 0.01, backoff_max: {cap}}}\n")
        t = Transport(member="beta", files=pki["beta"], handler=ignore,
                      settings=load_agent(path).transport)
        real_dial = t.dial

        async def counting(*args: Any, _dial: Any = real_dial, _cap: float = cap) -> Any:
            dials[_cap] += 1
            return await _dial(*args)

        t.dial = counting  # type: ignore[method-assign]
        t.add_peer("nobody", "127.0.0.1", port)
        t.send("nobody", Ping(1))
        transports.append(t)
    try:
        await eventually(lambda: dials[0.01] >= 40)
        # Redialling from 10 ms, doubling, at least half of each delay waited: a 12th dial
        # would come more than 10 s after the first, while the other made its 40 in less.
        assert 1 <= dials[10.0] <= 12
    finally:
        for t in transports:
            await t.close()


async def test_client_checks_the_server_is_who_it_dialled(alpha: Agent, beta: Agent) -> None:
    beta.t.add_peer("gamma", *alpha.t.address)  # wrong address: alpha answers
    beta.t.send("gamma", Ping(1))
    await eventually(lambda: any(isinstance(e, PeerUnreachable) for e in beta.events))
    event = next(e for e in beta.events if isinstance(e, PeerUnreachable))
    assert event == PeerUnreachable("gamma", "dialled 'gamma' but the server is 'alpha'")
    assert alpha.got == []


async def test_client_refuses_a_server_from_another_ca(pki: dict[str, PkiFiles],
                                                       beta: Agent) -> None:
    rogue = Agent("alpha", pki["rogue-alpha"])
    await rogue.t.start()
    try:
        beta.t.add_peer("alpha", *rogue.t.address)
        beta.t.send("alpha", Ping(1))
        await eventually(lambda: any(isinstance(e, PeerUnreachable) for e in beta.events))
        event = next(e for e in beta.events if isinstance(e, PeerUnreachable))
        assert "certificate verify failed" in event.reason
        assert rogue.got == []
    finally:
        await rogue.t.close()


async def test_reconnects_after_the_peer_restarts(pki: dict[str, PkiFiles], alpha: Agent,
                                                  beta: Agent) -> None:
    await good_peer_gets_through(alpha, beta)
    host, port = alpha.t.address
    await alpha.t.close()
    await alpha.t.close()  # safe twice
    await eventually(lambda: any(isinstance(e, PeerUnreachable) for e in beta.events))
    again = Agent("alpha", pki["alpha"])
    await again.t.start(host, port)
    try:
        async def through() -> bool:
            try:
                return await beta.t.request("alpha", Ping(9)) == Pong(9, "alpha")
            except TemporaryError:
                return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await through():
            assert loop.time() < deadline, "beta never reconnected"
            await asyncio.sleep(0.05)
        assert beta.events.count(PeerConnected("alpha")) == 2
    finally:
        await again.t.close()


async def test_a_restarted_peer_that_dials_in_is_redialled_at_once(
        pki: dict[str, PkiFiles]) -> None:
    """Replies to a restarted agent must not wait out our redial backoff: its own dial to us
    says it is back. With an hour of backoff, only that can bring the link up in time."""
    patient = TransportSettings(handshake_timeout=1.0, frame_timeout=1.0,
                                backoff_initial=3600.0, backoff_max=3600.0)
    beta = Agent("beta", pki["beta"], patient)
    await beta.t.start()
    alpha = Agent("alpha", pki["alpha"])
    host, port = await alpha.t.start()
    beta.t.add_peer("alpha", host, port)
    alpha.t.add_peer("beta", *beta.t.address)
    again: Agent | None = None
    try:
        assert await beta.t.request("alpha", Ping(1)) == Pong(1, "alpha")
        await alpha.t.close()
        await eventually(lambda: any(isinstance(e, PeerUnreachable) for e in beta.events))
        again = Agent("alpha", pki["alpha"])
        await again.t.start(host, port)
        again.t.add_peer("beta", *beta.t.address)
        again.t.send("beta", Ping(2))  # the restarted agent speaks first
        await eventually(lambda: beta.events.count(PeerConnected("alpha")) == 2)
        assert await beta.t.request("alpha", Ping(3)) == Pong(3, "alpha")
    finally:
        for agent in (beta, again):
            if agent is not None:
                await agent.t.close()


# -- refused at the handshake ------------------------------------------------------------


@pytest.mark.parametrize(("who", "claim", "reason"), [
    (None, "beta", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("rogue-beta", "beta", "certificate verify failed"),
    ("old", "old", "certificate has expired"),
], ids=["no-client-cert", "other-ca", "expired"])
async def test_handshake_refuses(pki: dict[str, PkiFiles], alpha: Agent, beta: Agent,
                                 who: str | None, claim: str, reason: str) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki[who] if who else None,
                                        claim=claim, ca=pki["alpha"].ca)
        assert await closed_by_server(reader) == b""  # not even the server's Hello
        writer.close()
        await eventually(lambda: bool(logged(logs, "handshake_failed")))
    assert reason in logged(logs, "handshake_failed")[0]["reason"]
    assert alpha.got == []
    await good_peer_gets_through(alpha, beta)


async def test_certificate_for_another_name_than_claimed(pki: dict[str, PkiFiles],
                                                         alpha: Agent, beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki["gamma"], claim="beta",
                                        ca=pki["alpha"].ca)
        writer.write(default_codec.encode(Ping(1)))
        assert await closed_by_server(reader) == b""
        writer.close()
    refused = logged(logs, "peer_refused")
    assert len(refused) == 1
    assert refused[0]["reason"] == "certificate names 'gamma' but Hello claims 'beta'"
    assert refused[0]["peer"].startswith("127.0.0.1:")
    assert alpha.got == []
    await good_peer_gets_through(alpha, beta)


async def test_a_certificate_without_a_kind_gets_no_connection(
        pki: dict[str, PkiFiles], alpha: Agent, beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki["nokind"], claim="nokind",
                                        ca=pki["alpha"].ca)
        writer.write(default_codec.encode(Ping(1)))
        assert await closed_by_server(reader) == b""
        writer.close()
    refused = logged(logs, "peer_refused")
    assert len(refused) == 1 and "names no kind of cloudd member" in refused[0]["reason"]
    assert alpha.got == []
    await good_peer_gets_through(alpha, beta)


async def test_garbage_instead_of_tls(alpha: Agent, beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(*alpha.t.address)
        writer.write(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
        assert await closed_by_server(reader) == b""
        writer.close()
        await eventually(lambda: bool(logged(logs, "handshake_failed")))
    assert "SSL" in logged(logs, "handshake_failed")[0]["reason"]
    await good_peer_gets_through(alpha, beta)


async def test_first_frame_must_be_hello(pki: dict[str, PkiFiles], alpha: Agent,
                                         beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki["gamma"], claim=None,
                                        ca=pki["alpha"].ca)
        writer.write(default_codec.encode(Ping(1)))
        assert await closed_by_server(reader) == b""
        writer.close()
    assert [e["reason"] for e in logged(logs, "protocol_error")] == [
        "expected Hello first, got Ping"]
    assert alpha.got == []
    await good_peer_gets_through(alpha, beta)


async def test_tls_without_hello_is_closed_after_the_timeout(pki: dict[str, PkiFiles],
                                                             alpha: Agent,
                                                             beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki["gamma"], claim=None,
                                        ca=pki["alpha"].ca)
        assert await closed_by_server(reader) == b""
        writer.close()
    assert [e["reason"] for e in logged(logs, "handshake_failed")] == [
        "no TLS handshake and Hello within 1.0s"]
    await good_peer_gets_through(alpha, beta)


async def test_hello_for_another_protocol_version(pki: dict[str, PkiFiles], alpha: Agent,
                                                  beta: Agent) -> None:
    with capture_logs() as logs:
        reader, writer = await open_tls(alpha.t.address[1], pki["gamma"], claim=None,
                                        ca=pki["alpha"].ca)
        writer.write(default_codec.encode(Hello("gamma", PROTOCOL_VERSION + 1)))
        assert await closed_by_server(reader) == b""
        writer.close()
    assert [e["reason"] for e in logged(logs, "protocol_error")] == [
        f"Hello for protocol version {PROTOCOL_VERSION + 1}, this agent speaks "
        f"{PROTOCOL_VERSION}"]
    await good_peer_gets_through(alpha, beta)


# -- refused after authentication: the connection is closed, nothing else changes ----------


def frame(tag: str, body: bytes) -> bytes:
    payload = struct.pack(">BBIB", PROTOCOL_VERSION, 0, 0, len(tag)) + tag.encode() + body
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize(("data", "close", "reason"), [
    (b"\x00\x00\x00\x10garbage-garbage!", False,
     f"protocol version 103 not supported (this agent speaks {PROTOCOL_VERSION})"),
    (struct.pack(">I", 1 << 30) + b"xxxx", False,
     "frame of 1073741824 bytes exceeds the maximum of 1048576"),
    (frame("test.transport.ping", b'{"n": 1}')[:-3], True,
     "truncated frame: stream ended after 31 of 34 bytes"),
    (frame("test.transport.ping", b'{"n": 1}')[:-3], False,
     "frame not completed within 1.0s"),
    (frame("x.unknown", b"{}"), False, "unknown message type 'x.unknown'"),
    (frame("test.transport.ping", b'{"n": "one"}'), False,
     "test.transport.ping: n: Input should be a valid integer"),
], ids=["garbage", "1GB-length", "truncated", "stalled-frame", "unknown-type", "bad-field"])
async def test_bad_frames_close_that_connection_only(pki: dict[str, PkiFiles], alpha: Agent,
                                                     beta: Agent, data: bytes, close: bool,
                                                     reason: str) -> None:
    await good_peer_gets_through(alpha, beta)  # beta is connected before, and stays so
    with capture_logs() as logs:
        reader, writer = await authenticated(alpha, pki)
        writer.write(frame("test.transport.ping", b'{"n": 41}') + data)
        await writer.drain()
        if close:
            writer.close()
        await closed_by_server(reader)
        writer.close()
        await eventually(lambda: bool(logged(logs, "protocol_error")))
    errors = logged(logs, "protocol_error")
    assert [(e["peer"], e["reason"]) for e in errors] == [("gamma", reason)]
    assert alpha.got == [("beta", Ping(1)), ("gamma", Ping(41))]  # the frame before it counts
    await good_peer_gets_through(alpha, beta, 2)
    assert beta.events == [PeerConnected("alpha")]  # beta's connection was never disturbed


# -- mutated frames: refused, and nobody marked up because of them -----------------------------


def mutated_frames(seed: int, count: int) -> list[tuple[bytes, str]]:
    """`count` frames of this file's messages with bytes flipped, cut, duplicated or inserted
    (seeded), each one the codec refuses on its own, with the reason it gives."""
    rng = random.Random(seed)
    good = [default_codec.encode(m, rid=rng.randrange(1 << 32), request=rng.random() < 0.5)
            for m in (Ping(41), Pong(7, "gamma"), Flaky(True), Hello("gamma", PROTOCOL_VERSION))]
    out: list[tuple[bytes, str]] = []
    while len(out) < count:
        data = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            at, size = rng.randrange(len(data)), rng.randint(1, 8)
            kind = rng.choice(("flip", "cut", "duplicate", "insert"))
            if kind == "flip":
                data[at] ^= rng.randint(1, 255)
            elif kind == "cut":
                del data[at:at + size]
            elif kind == "duplicate":
                data[at:at] = data[at:at + size]
            else:
                data[at:at] = rng.randbytes(size)
        try:
            FrameDecoder(default_codec).feed(bytes(data))
        except RemoteProtocolError as exc:
            out.append((bytes(data), str(exc)))
    return out


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_mutated_frames_from_a_member_are_refused_and_mark_it_nothing(
        pki: dict[str, PkiFiles], alpha: Agent, beta: Agent) -> None:
    """gamma, on alpha's address book but not listening (its link DOWN), dials in with a
    valid certificate and sends mutated frames: each connection is closed with one
    `protocol_error`, beta is answered all along, and gamma is never reported connected
    (its dial wakes alpha's redial, which fails again)."""
    await good_peer_gets_through(alpha, beta)
    alpha.t.add_peer("gamma", "127.0.0.1", unused_port())
    alpha.t.send("gamma", Ping(0))
    await eventually(lambda: alpha.t.link_state("gamma") is LinkState.DOWN)
    cases = mutated_frames(23, 12)
    with capture_logs() as logs:
        for n, (data, _) in enumerate(cases, start=2):
            reader, writer = await authenticated(alpha, pki)
            writer.write(data)
            await writer.drain()
            assert await closed_by_server(reader) == b""
            writer.close()
            await good_peer_gets_through(alpha, beta, n)
        await eventually(lambda: len(logged(logs, "protocol_error")) == len(cases))
        await eventually(lambda: alpha.t.connection_count == 1)  # beta's, nothing of gamma's
        await eventually(lambda: alpha.t.link_state("gamma") is LinkState.DOWN)
    assert [(e["peer"], e["reason"]) for e in logged(logs, "protocol_error")] == [
        ("gamma", reason) for _, reason in cases]
    assert not logged(logs, "connection_failed") and not logged(logs, "task_failed")
    assert [msg for peer, msg in alpha.got if peer == "gamma"] == []
    assert PeerConnected("gamma") not in alpha.events
    assert beta.events == [PeerConnected("alpha")]


async def hostile_gamma(pki: dict[str, PkiFiles], frames: list[bytes]
                        ) -> tuple[asyncio.Server, list[int]]:
    """A server holding gamma's certificate: it answers each dial with gamma's Hello and then
    the next of `frames`, and keeps the connection until the dialler drops it. On the first
    dial it waits for a frame from the dialler before the bad one, so that the bad frame
    surely reaches a connection that is UP. The list it returns counts the dials answered."""
    dials: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(default_codec)
        got: list[object] = []
        while len(got) < (1 if dials else 2):
            got += decoder.feed(await reader.read(65536))
            if not dials and len(got) == 1:
                writer.write(default_codec.encode(Hello("gamma", PROTOCOL_VERSION)))
        assert got[0] == Hello("alpha", PROTOCOL_VERSION)
        writer.write((default_codec.encode(Hello("gamma", PROTOCOL_VERSION)) if dials else b"")
                     + frames[len(dials) % len(frames)])
        dials.append(len(dials))
        await closed_by_server(reader)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                        ssl=server_context(pki["gamma"]))
    return server, dials


@pytest.mark.parametrize("bug", [False, True], ids=["mutated", "decoding-bug"])
async def test_a_link_to_a_peer_that_sends_bad_frames_goes_down_and_redials(
        pki: dict[str, PkiFiles], alpha: Agent, bug: bool) -> None:
    """Our own link to gamma: a connection comes UP (gamma's Hello is good), the bad frame
    after it ends that connection, and the link goes DOWN and redials; it is never left UP
    on a connection nobody reads, not even when decoding fails in a way no check foresaw
    (it must not end the link's task, nor leave the link UP)."""
    cases = ([(frame("test.transport.faulty", b'{"n": 1}'),
               "connection failed: TypeError: a bug in decoding")] if bug
             else [(data, f"protocol error: {why}") for data, why in mutated_frames(32, 3)])
    server, dials = await hostile_gamma(pki, [data for data, _ in cases])

    def gamma() -> list[object]:
        return [e for e in alpha.events if getattr(e, "peer", None) == "gamma"]

    with capture_logs() as logs:
        alpha.t.add_peer("gamma", *server.sockets[0].getsockname()[:2])
        alpha.t.send("gamma", Ping(1))
        await eventually(lambda: len(dials) >= 3)  # it redialled, twice at least
        server.close()
        await eventually(lambda: alpha.t.link_state("gamma") is LinkState.DOWN
                         and isinstance(gamma()[-1], PeerUnreachable))
    events = gamma()
    assert events[:2] == [PeerConnected("gamma"), PeerUnreachable("gamma", cases[0][1])]
    # each later dial came up and went down again, or failed within its handshake (the Hello
    # and the bad frame read together): never two ups in a row, and never up at the end
    assert all(isinstance(later, PeerUnreachable)
               for earlier, later in itertools.pairwise(events)
               if isinstance(earlier, PeerConnected))
    kind = "connection_failed" if bug else "protocol_error"
    assert [e["peer"] for e in logged(logs, kind)] == ["gamma"] * events.count(
        PeerConnected("gamma"))
    assert not logged(logs, "task_failed")
    assert alpha.got == []


async def test_a_thousand_idle_connections(pki: dict[str, PkiFiles], beta: Agent) -> None:
    # A fresh alpha on beta's address book, with a timeout long enough that the burst is
    # surely all dialled before the first held connections time out.
    settings = TransportSettings(handshake_timeout=3.0, max_connections=50)
    alpha = Agent("alpha", pki["alpha"], settings)
    host, port = await alpha.t.start()
    beta.t.add_peer("alpha", host, port)
    try:
        with capture_logs() as logs:
            conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(10):
                conns += await asyncio.gather(
                    *(asyncio.open_connection(host, port) for _ in range(100)))
            # while the flood holds every unauthenticated slot, a member still gets in
            await good_peer_gets_through(alpha, beta)
            # each is closed by the server: at once beyond the cap, the rest after the timeout
            leftovers = await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
            assert leftovers == [b""] * 1000
            for _, w in conns:
                w.close()
            # only the member's own connection is left
            await eventually(lambda: alpha.t.connection_count == 1)
        refused = [e["reason"] for e in logged(logs, "connection_refused")]
        timed_out = [e["reason"] for e in logged(logs, "handshake_failed")]
        # every idle one either made room for a newer one or timed out
        assert len(refused) + len(timed_out) == 1000
        assert len(refused) >= 1000 - 2 * settings.max_connections
        # never more unauthenticated connections held than the cap
        assert set(refused) == {"too many unauthenticated connections (50): the oldest was "
                                "dropped"}
        assert set(timed_out) == {"no TLS handshake and Hello within 3.0s"}
        await good_peer_gets_through(alpha, beta)
    finally:
        await alpha.t.close()


def test_the_same_on_uvloop(pki: dict[str, PkiFiles]) -> None:
    """uvloop's TLS differs from asyncio's in places the transport relies on (when it starts
    reading an accepted socket, what connect_accepted_socket returns): run a good exchange,
    refusals and bad frames on it too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        alpha = Agent("alpha", pki["alpha"])
        beta = Agent("beta", pki["beta"])
        await alpha.t.start()
        await beta.t.start()
        try:
            beta.t.add_peer("alpha", *alpha.t.address)
            alpha.t.add_peer("beta", *beta.t.address)
            beta.t.send("alpha", Ping(1))
            await good_peer_gets_through(alpha, beta, 2)
            assert await alpha.t.request("beta", Ping(3)) == Pong(3, "beta")
            with capture_logs() as logs:
                reader, writer = await open_tls(alpha.t.address[1], None, claim="beta",
                                                ca=pki["alpha"].ca)
                assert await closed_by_server(reader) == b""
                writer.close()
                reader, writer = await authenticated(alpha, pki)
                writer.write(frame("x.unknown", b"{}"))
                assert await closed_by_server(reader) == b""
                writer.close()
                await eventually(lambda: bool(logged(logs, "handshake_failed"))
                                 and bool(logged(logs, "protocol_error")))
            assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in \
                logged(logs, "handshake_failed")[0]["reason"]
            assert logged(logs, "protocol_error")[0]["reason"] == \
                "unknown message type 'x.unknown'"
            await good_peer_gets_through(alpha, beta, 4)
            assert alpha.got == [("beta", Ping(1)), ("beta", Ping(2)), ("beta", Ping(4))]
        finally:
            await beta.t.close()
            await alpha.t.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
