"""Abuse against a running agent: three real agents in network namespaces, and a hostile client
in the root namespace dialling one follower's agent port (IP:7760) through the lab's bridge.

Each case must be refused (the server closes that connection, and its log says why, with the
peer), and must change nothing else: the agent process stays up, its local API answers, and
the cloud keeps exactly one leader. After all of it, kill -9 the leader: a failover still
succeeds. The cases are crafted by hand from the wire format (`tls.py`, `codec.py`): TLS 1.3
with or without a client certificate, then `Hello{member, version}`, then length-prefixed
frames `version u8 | flags u8 | request id u32 | tag length u8 | tag | JSON body`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import selectors
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab

from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    InspectAnswer,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodePhase,
    NodeReport,
    OfferOrigin,
    OperatorOp,
    OperatorRequest,
    RoleAssignment,
    register_all,
)
from cloudd.daemon.network.codec import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, default_codec
from cloudd.daemon.network.tls import Hello
from cloudd.daemon.network.transport import RemoteFailure
from cloudd.election.messages import Coordinator, Gossip, LeaseRequest, Ping
from cloudd.pki import MemberKind, PkiFiles, init_ca, issue
from cloudd.vmctl.backend import DomainEvent, DomainEventKind
from cloudd.vmctl.hostagent import HostCommand, Op

pytestmark = pytest.mark.netns

PORT = 7760
#: Generous bound on every wait for the real processes (the machine is shared).
BOUND = 30.0
#: A member listed in the lab's manifest that runs no agent: its certificate (from the
#: cluster CA) authenticates the hostile client without disturbing a live agent's links.
INSIDER = "lab-balancer-1"
IDLE_CONNECTIONS = 1000


# -- a hand-made client -----------------------------------------------------------------------

def context(ca: Path, files: PkiFiles | None) -> ssl.SSLContext:
    """Trusts the cluster CA (so the client itself gets past the server's certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if files is not None:
        ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    return ctx


def dial(ip: str, ctx: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((ip, PORT), timeout=BOUND)
    if ctx is None:
        return sock
    try:
        return ctx.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def hello(member: str) -> bytes:
    return default_codec.encode(Hello(member, PROTOCOL_VERSION))


def frame(tag: str, body: bytes, *, version: int = PROTOCOL_VERSION) -> bytes:
    raw = tag.encode("ascii")
    payload = struct.pack(">BBIB", version, 0, 0, len(raw)) + raw + body
    return struct.pack(">I", len(payload)) + payload


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send; the server may already have closed the connection (that is a refusal too)."""
    with contextlib.suppress(OSError, ssl.SSLError):
        sock.sendall(data)


def closed_by_server(sock: socket.socket) -> bytes:
    """Read until the server closes the connection (bounded); returns what it still sent."""
    data = b""
    sock.settimeout(BOUND)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {BOUND} s") from None
    except (OSError, ssl.SSLError):
        pass  # a reset or a TLS alert: closed
    finally:
        sock.close()
    return data


def authenticated(ip: str, ca: Path, files: PkiFiles, member: str) -> ssl.SSLSocket:
    """A connection that passed TLS and the Hello check, as `member`."""
    sock = dial(ip, context(ca, files))
    assert isinstance(sock, ssl.SSLSocket)
    sock.sendall(hello(member))
    decoder = FrameDecoder(default_codec)
    got: list[object] = []
    while not got:
        chunk = sock.recv(65536)
        assert chunk, "the server closed an authenticated connection before its Hello"
        got = decoder.feed(chunk)
    assert isinstance(got[0], Hello), got
    return sock


# -- the lab and its checks -------------------------------------------------------------------

class Abuse:
    """The lab, the abused follower, and the credentials the cases use."""

    def __init__(self, lab: AgentLab, tmp: Path) -> None:
        self.lab = lab
        self.everyone = list(lab.agents)
        self.leader, self.term = lab.wait_for(
            "a first leader", lambda: lab.one_leader(self.everyone), timeout=BOUND)
        self.target = next(n for n in self.everyone if n != self.leader)
        self.ip = lab.agents[self.target].ns.ip
        pki = lab.root / "pki"
        self.ca = pki / "ca.crt"
        self.insider = PkiFiles.for_member(pki, INSIDER)
        now = dt.datetime.now(dt.UTC)
        # an expired certificate from the cluster CA (a copy of it, so the lab stays as made)
        own = tmp / "own"
        own.mkdir()
        shutil.copy(pki / "ca.crt", own / "ca.crt")
        shutil.copy(pki / "ca.key", own / "ca.key")
        self.expired = issue(own, INSIDER, now=now - dt.timedelta(days=10), days=1,
                             kind=MemberKind.NODE, cloud=lab.cloud_name)
        # a certificate for the same member name, from another CA
        rogue = tmp / "rogue"
        init_ca(rogue, now=now)
        self.rogue = issue(rogue, INSIDER, now=now, kind=MemberKind.NODE, cloud=lab.cloud_name)

    def still_fine(self, case: str, names: list[str] | None = None) -> tuple[str, int]:
        """The abused agent runs and answers; the cloud (`names`, default: every agent) has
        exactly one leader, which every one of them follows."""
        names = names or self.everyone
        proc = self.lab.agents[self.target].proc
        assert proc is not None and proc.poll() is None, f"{case}: the agent died"
        assert self.lab.status(self.target) is not None, f"{case}: its API does not answer"
        found: tuple[str, int] = self.lab.wait_for(
            f"one leader after {case}", lambda: self.lab.one_leader(names),
            timeout=BOUND)
        return found

    def logged(self, event: str, reason: str, *, since: float) -> dict[str, Any]:
        """The abused agent's `event` about our client (by its address before the Hello, by
        the member its certificate names after), whose reason contains `reason`, logged
        after `since` (waited for, bounded)."""
        return self.logged_by(self.target, event, reason, since=since)

    def logged_by(self, agent: str, event: str, reason: str, *,
                  since: float) -> dict[str, Any]:
        """`logged`, by any agent of the lab."""
        host = self.lab.net.host_ip

        def find() -> dict[str, Any] | None:
            for e in self.lab.log_events():
                if (e["agent"] == agent and e.get("event") == event
                        and e["at"] >= since and (str(e.get("peer", "")).startswith(
                            f"{host}:") or e.get("peer") == INSIDER)
                        and reason in str(e.get("reason", ""))):
                    return e
            return None
        end = time.monotonic() + BOUND
        while (found := find()) is None:
            if time.monotonic() > end:
                recent = [(e.get("event"), e.get("reason")) for e in self.lab.log_events()
                          if e["agent"] == agent and e["at"] >= since
                          and e.get("level") != "info"]
                raise AssertionError(f"no {event} ({reason}) in {agent}'s log within "
                                     f"{BOUND} s; its warnings since: {recent}")
            time.sleep(0.05)
        return found


@pytest.fixture
def abuse(tmp_path: Path) -> Iterator[Abuse]:
    with AgentLab("h14ab", hosts=3, subnet="10.234.147.0/24") as lab:
        lab.start_all()
        yield Abuse(lab, tmp_path)


# -- the cases ------------------------------------------------------------------------------

def no_client_certificate(a: Abuse) -> None:
    sock = dial(a.ip, context(a.ca, None))
    send_quietly(sock, hello(INSIDER))
    assert closed_by_server(sock) == b""


def another_ca(a: Abuse) -> None:
    sock = dial(a.ip, context(a.ca, a.rogue))
    send_quietly(sock, hello(INSIDER))
    assert closed_by_server(sock) == b""


def expired_certificate(a: Abuse) -> None:
    sock = dial(a.ip, context(a.ca, a.expired))
    send_quietly(sock, hello(INSIDER))
    assert closed_by_server(sock) == b""


def another_name(a: Abuse) -> None:
    sock = dial(a.ip, context(a.ca, a.insider))  # a good certificate, for INSIDER...
    send_quietly(sock, hello(a.leader))  # ...claiming to be the leader
    assert closed_by_server(sock) == b"", "the server answered a Hello it should refuse"


def garbage_before_tls(a: Abuse) -> None:
    sock = dial(a.ip, None)
    send_quietly(sock, random.Random(14).randbytes(4096))
    closed_by_server(sock)


def garbage_frame(a: Abuse) -> None:
    sock = authenticated(a.ip, a.ca, a.insider, INSIDER)
    junk = random.Random(3).randbytes(200)
    send_quietly(sock, struct.pack(">I", len(junk)) + b"\xfe" + junk[1:])
    closed_by_server(sock)


def one_gigabyte_frame(a: Abuse) -> None:
    sock = authenticated(a.ip, a.ca, a.insider, INSIDER)
    send_quietly(sock, struct.pack(">I", 1 << 30) + b"\x01\x00" * 8)
    closed_by_server(sock)


def truncated_frame(a: Abuse) -> None:
    sock = authenticated(a.ip, a.ca, a.insider, INSIDER)
    whole = frame("cloudd.hello", b'{"member": "x", "version": 1}')
    send_quietly(sock, whole[: len(whole) // 2])
    assert isinstance(sock, ssl.SSLSocket)
    raw = sock.unwrap()  # a clean end of stream (close_notify) in the middle of the frame
    closed_by_server(raw)


def stalled_frame(a: Abuse) -> None:
    sock = authenticated(a.ip, a.ca, a.insider, INSIDER)
    whole = frame("cloudd.hello", b'{"member": "x", "version": 1}')
    send_quietly(sock, whole[:10])  # and then nothing: the frame timeout ends it
    closed_by_server(sock)


def unknown_message_type(a: Abuse) -> None:
    sock = authenticated(a.ip, a.ca, a.insider, INSIDER)
    send_quietly(sock, frame("evil.unknown", b"{}"))
    closed_by_server(sock)


#: case, then the log event and a piece of its reason that prove the refusal.
CASES: list[tuple[Callable[[Abuse], None], str, str]] = [
    (no_client_certificate, "handshake_failed", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    (another_ca, "handshake_failed", "unable to get local issuer certificate"),
    (expired_certificate, "handshake_failed", "certificate has expired"),
    (another_name, "peer_refused", f"certificate names '{INSIDER}' but Hello claims"),
    (garbage_before_tls, "handshake_failed", "WRONG_VERSION_NUMBER"),
    (garbage_frame, "protocol_error", "protocol version 254 not supported"),
    (one_gigabyte_frame, "protocol_error",
     f"frame of {1 << 30} bytes exceeds the maximum of {MAX_FRAME}"),
    (truncated_frame, "protocol_error", "truncated frame"),
    (stalled_frame, "protocol_error", "frame not completed within"),
    (unknown_message_type, "protocol_error", "unknown message type 'evil.unknown'"),
]


def idle_connections(a: Abuse, count: int) -> None:
    """Open `count` TCP connections and send nothing; while they are held the agent answers
    and the cloud has one leader; the server must close every one of them by itself."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            s.connect_ex((a.ip, PORT))
            sel.register(s, selectors.EVENT_READ)
        a.still_fine(f"{count} connections opened")
        # A member dialling afresh during the flood gets in: the cap counts only
        # unauthenticated connections and a new one drops the oldest (a SYN cache).
        authenticated(a.ip, a.ca, a.insider, INSIDER).close()
        open_ = set(socks)
        end = time.monotonic() + BOUND
        while open_ and time.monotonic() < end:
            for key, _ in sel.select(timeout=0.5):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # reset: closed by the server
                if not data:
                    sel.unregister(conn)
                    open_.discard(conn)
        assert not open_, f"{len(open_)} of {count} idle connections still open after {BOUND} s"
    finally:
        sel.close()
        for s in socks:
            s.close()


def test_abuse_is_refused_and_the_cloud_keeps_working(abuse: Abuse) -> None:
    a = abuse
    print(f"\nleader {a.leader} (term {a.term}); abusing {a.target} at {a.ip}:{PORT}")
    for case, event, reason in CASES:
        t0 = time.time()
        case(a)
        seen = a.logged(event, reason, since=t0)
        after = a.still_fine(case.__name__)
        print(f"{case.__name__:<24} refused in {seen['at'] - t0:6.3f} s: {event}: "
              f"{seen['reason'][:70]}; leader {after}")

    t0 = time.time()
    idle_connections(a, IDLE_CONNECTIONS)
    refused = a.logged("connection_refused", "too many unauthenticated connections",
                       since=t0)
    timed_out = a.logged("handshake_failed", "no TLS handshake and Hello within", since=t0)
    leader, term = a.still_fine("idle connections closed")
    counts = {name: sum(1 for e in a.lab.log_events() if e["agent"] == a.target
                        and e["at"] >= t0 and e.get("event") == name)
              for name in (refused["event"], timed_out["event"])}
    print(f"{IDLE_CONNECTIONS} idle connections all closed by the agent after "
          f"{time.time() - t0:.2f} s ({counts}); leader {leader}")

    # a failover still works after all of it
    a.lab.kill(leader)
    t0 = time.monotonic()
    rest = [n for n in a.everyone if n != leader]
    new, new_term = a.lab.wait_for("a new leader after kill -9", lambda: a.lab.one_leader(rest),
                                   timeout=BOUND)
    print(f"kill -9 {leader} -> {new} acting in term {new_term} after "
          f"{time.monotonic() - t0:.2f} s")
    assert new != leader and new_term > term
    if leader != a.target:
        a.still_fine("the failover", rest)


# -- an insider: a real node certificate of this cloud, speaking out of turn ---------------

def exchange(a: Abuse, target: str, msg: object, *, request: bool) -> object | None:
    """Send `msg` as the insider node to `target`'s agent; the reply for a request."""
    ip = a.lab.agents[target].ns.ip
    sock = authenticated(ip, a.ca, a.insider, INSIDER)
    try:
        sock.sendall(default_codec.encode(msg, rid=7, request=True) if request
                     else default_codec.encode(msg))
        if not request:
            return None
        decoder = FrameDecoder(default_codec)
        sock.settimeout(BOUND)
        while True:
            chunk = sock.recv(65536)
            assert chunk, f"{target} closed the connection instead of answering"
            frames = [f for f in decoder.feed_frames(chunk) if f.reply and f.rid == 7]
            if frames:
                return frames[0].msg
    finally:
        sock.close()


def on_disk(a: Abuse) -> dict[str, str]:
    """Every agent's persisted terms (the election's, and a host's highest term)."""
    out = {}
    for name in a.everyone:
        state = a.lab.root / name / "state"
        for path in sorted(state.rglob("*")):
            if path.is_file() and path.name in ("term", "highest-term"):
                out[str(path.relative_to(a.lab.root))] = path.read_text()
    return out


def terms_kept(a: Abuse, before: dict[str, str], label: str) -> None:
    """No persisted term moved past the term in force (a host writes its highest term when
    the real leader's first command reaches it: that is the leader's term, never more)."""
    now = on_disk(a)
    for path, text in now.items():
        assert int(text) <= a.term, f"{label}: {path} holds {text.strip()} > term {a.term}"
        assert path not in before or before[path] == text, f"{label}: {path} changed"


def views(a: Abuse) -> dict[str, tuple[Any, ...]]:
    """What each agent says of the cloud: leader, term, maintenance, and whether it believes
    dead any member that runs an agent (the roster's other nodes run none: their suspect/dead
    cycle is SWIM's own business, not something the insider did)."""
    out = {}
    for name in a.everyone:
        s = a.lab.status(name)
        assert s is not None, f"{name} does not answer"
        # suspect comes and goes with a probe late on a busy machine; dead would be a kill
        live = {m: v == "dead" for m, v in s.get("members", {}).items() if m in a.everyone}
        out[name] = (s.get("leader"), s.get("term"), s.get("maintenance"),
                     tuple(sorted(live.items())))
    return out


def insider_cases(a: Abuse) -> list[tuple[str, str, object, bool, str]]:
    """(label, target, message, as a request?, what the refusal says)."""
    cloud = a.lab.cloud_name
    other_host = next(n for n in a.everyone if n not in (a.target, a.leader))
    secret_manifest = a.lab.manifest(a.lab.members).replace(
        "roles:", "roles:\n  balancer: {addresses_file: /root/.ssh/id_rsa, "
                  "images_file: /etc/shadow}\n  ignored:", 1)
    assignment = RoleAssignment(term=a.term + 1, cloud=cloud, node=a.target, role="server",
                                address=ip_address(a.lab.agents[a.target].ns.ip),
                                generation="x")
    event = DomainEvent(kind=DomainEventKind.STOPPED, domain=f"{cloud}-lab-server-1",
                        meta=None, detail="destroyed", at=0.0)
    report = NodeReport(node=other_host, term=a.term, generation="x",
                        phase=NodePhase.FAILED, message="forged")
    return [
        ("apply with file references", a.target, OperatorRequest(
            OperatorOp.APPLY, cloud, json.dumps({"text": secret_manifest})), True,
         "only a pool host or an operator certificate may send it"),
        ("maintenance on", a.target, OperatorRequest(
            OperatorOp.MAINTENANCE, cloud, json.dumps({"on": True})), True,
         "only a pool host may send it"),
        ("stop the cloud", a.leader, OperatorRequest(OperatorOp.STOP, cloud, "{}"), True,
         "only a pool host may send it"),
        ("host command with a huge term", a.target, HostCommand(Op.LIST, term=2**60), True,
         "only the leader of the current term may send it"),
        ("host command to the leader's host", a.leader, HostCommand(Op.LIST, term=a.term),
         True, "only the leader of the current term may send it"),
        ("role assignment", a.target, assignment, False,
         "only the leader of the current term may send it"),
        ("the leader's manifest offer", a.target, ManifestOffer(
            cloud, "x" * 64, secret_manifest, OfferOrigin.LEADER, a.term + 1), False,
         "only the leader of the current term may send it"),
        ("another host's domain event", a.leader, DomainEventNote(other_host, event), False,
         "only a pool host and the member the message names"),
        ("another node's report", a.leader, report, False,
         "the member the message names"),
        ("cleanup-service", a.target, OperatorRequest(
            OperatorOp.CLEANUP_SERVICE, cloud, json.dumps({"service": "x"})), True,
         "only the leader of the current term may send it"),
        ("coordinator of a higher term", a.target, Coordinator(a.term + 5), False, ""),
        ("lease request", a.target, LeaseRequest(a.term + 5, 1), False, ""),
        # gossip travels on probes: a probe of the leader carrying "a live host is dead"
        ("gossip: a live host dead", a.leader,
         Ping(seq=1, target=a.leader, leader=a.leader, term=a.term,
              gossip=(Gossip("dead", other_host, 1000, INSIDER),)), False, ""),
    ]


FLOOD_REQUESTS = 3000


def flood(a: Abuse, target: str, count: int) -> None:
    """`count` requests a node may send, pipelined on one connection without waiting; every
    one is answered (an answer, or "busy" once too many are in flight)."""
    ip = a.lab.agents[target].ns.ip
    sock = authenticated(ip, a.ca, a.insider, INSIDER)
    asks = [InspectWanted(a.lab.cloud_name), ManifestWanted(a.lab.cloud_name)]
    try:
        sock.sendall(b"".join(default_codec.encode(asks[i % 2], rid=i + 1, request=True)
                              for i in range(count)))
        decoder = FrameDecoder(default_codec)
        answered: dict[str, int] = {}
        sock.settimeout(BOUND)
        while sum(answered.values()) < count:
            chunk = sock.recv(1 << 20)
            assert chunk, f"{target} closed the connection after {answered}"
            for f in decoder.feed_frames(chunk):
                kind = ("busy" if isinstance(f.msg, RemoteFailure) and f.msg.temporary
                        else type(f.msg).__name__)
                answered[kind] = answered.get(kind, 0) + 1
        print(f"flood of {count} requests at {target}: {answered}")
        assert answered.get("busy", 0) < count, "nothing was answered"
    finally:
        sock.close()


def test_an_insider_node_certificate_is_refused_everything_a_node_may_not_do(
        abuse: Abuse) -> None:
    """A node's real certificate (of this cloud, listed in its roster, running no agent)
    sends every kind of message a node may not send: each is refused with a log line naming
    it and the reason, and nothing changes: leader, terms on disk, maintenance, liveness.
    Then the cloud still fails over."""
    a = abuse
    register_all(default_codec)
    # the cloud settled first: every agent follows one leader and believes nobody dead
    a.lab.wait_for("every agent sees every agent", lambda: all(
        not any(dead for _, dead in v[3]) for v in views(a).values()), timeout=BOUND)
    before_views, before_disk = views(a), on_disk(a)
    for label, target, msg, request, reason in insider_cases(a):
        t0 = time.time()
        reply = exchange(a, target, msg, request=request)
        if request:
            assert isinstance(reply, RemoteFailure) and not reply.temporary, \
                f"{label}: {target} answered {reply!r}"
            assert reason in reply.message, f"{label}: {reply.message}"
        if reason:
            seen = a.logged_by(target, "message_refused", reason, since=t0)
            print(f"{label:<36} refused by {target}: {seen['reason'][:90]}")
        time.sleep(0.5)  # anything it changed would show by now (leases renew every 0.1 s)
        assert views(a) == before_views, f"{label}: an agent's view changed"
        terms_kept(a, before_disk, label)
    # The election core's own refusals (a node claiming a term, a lease, a host's death)
    # are checked by what did not change above, across several lease periods:
    time.sleep(3.0)
    assert views(a) == before_views
    terms_kept(a, before_disk, "the election's refusals")
    inspect = exchange(a, a.leader, InspectWanted(a.lab.cloud_name), request=True)
    assert isinstance(inspect, InspectAnswer), inspect
    assert "fence" not in inspect.doc and "secret" not in inspect.doc
    # A flood of what a node may ask (inspect views, the manifest) at the leader, as fast as
    # one connection carries them: answered or turned away "busy", and the leader renews its
    # leases throughout (same leader, same term, nobody believed dead).
    flood(a, a.leader, FLOOD_REQUESTS)
    assert views(a) == before_views
    terms_kept(a, before_disk, "the flood")
    # a failover still works after all of it
    a.lab.kill(a.leader)
    rest = [n for n in a.everyone if n != a.leader]
    new, new_term = a.lab.wait_for("a new leader after kill -9",
                                   lambda: a.lab.one_leader(rest), timeout=BOUND)
    assert new != a.leader and new_term > a.term
