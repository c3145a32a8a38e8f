"""Who may send what, through real agents: every row of the dispatch table, from every kind
of sender, to a pool host, a node and an agent with no cloud yet, with the verdict the trust
model gives; a refused message is logged and changes nothing (leader, term, assignments,
maintenance, reports, manifests installed, what the operator's room was asked, what the
agent sent). Then a node's leader messages: only from the leader its election follows, for
that term, and a newer term makes it ask the pool hosts first.

In process: `Clouds` with a real `CloudMember` (its election running, following pm2 in term
5), a transport that records, the operator's room as a recorder, a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.config.model import Cloud
from cloudd.config.portable import portable_text
from cloudd.config.registry import Change, ManifestEvent
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.clouds import Above, Clouds
from cloudd.daemon.member.manifests import ManifestFolder
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodePhase,
    NodeReport,
    OfferOrigin,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    RoleAssignment,
)
from cloudd.election import messages as em
from cloudd.errors import ClouddError
from cloudd.pki import Identity
from cloudd.vmctl.backend import DomainEvent, DomainEventKind
from cloudd.vmctl.hostagent import HostCommand, Op

from .fakes import DB, MANIFEST, WEB1, FakeNodeSide, host, node, operator, settings, shop

#: The shop cloud with a third pool host: pm2 leads, pm3 is another host.
THREE_HOSTS = MANIFEST.replace(
    '  - {name: pm2, address: 192.0.2.71, fence: ["true"]}\n',
    '  - {name: pm2, address: 192.0.2.71, fence: ["true"]}\n'
    '  - {name: pm3, address: 192.0.2.72}\n')
LEADER, TERM = "pm2", 5

#: Who sends, in the order of the verdict strings below; the deposed leader (pm3, which led
#: term 4) sends its old term, everybody else the current one.
SENDERS: tuple[tuple[str, Identity, int], ...] = (
    ("host in the roster", host("pm3"), TERM),
    ("host not in the roster", host("pm9"), TERM),
    ("node of this cloud", node(WEB1), TERM),
    ("node of another cloud", node(WEB1, "other"), TERM),
    ("node certificate with a host's name", node("pm3"), TERM),
    ("operator", operator(), TERM),
    ("the leader", host(LEADER), TERM),
    ("a deposed leader", host("pm3"), TERM - 1),
)

EVENT = DomainEvent(kind=DomainEventKind.STOPPED, domain=f"shop-{DB}", meta=None, detail="crashed",
                    at=0.0)

Make = Callable[[str, int, str], object]
"""A message from (sender's name, its term, the manifest's portable text)."""

ELECTION: dict[str, Make] = {
    "Ping": lambda n, t, _: em.Ping(1, "pm1", "", 0),
    "Ack": lambda n, t, _: em.Ack(1, n, n, t + 10),
    "PingReq": lambda n, t, _: em.PingReq(1, "pm2"),
    "WhoLeads": lambda n, t, _: em.WhoLeads(t),
    "LeaderIs": lambda n, t, _: em.LeaderIs(n, t + 10),
    "Election": lambda n, t, _: em.Election(t + 10),
    "Answer": lambda n, t, _: em.Answer(t + 10),
    "Coordinator": lambda n, t, _: em.Coordinator(t + 10),
    "Resign": lambda n, t, _: em.Resign(t),
    "LeaseRequest": lambda n, t, _: em.LeaseRequest(t + 10, 1),
    "LeaseRelease": lambda n, t, _: em.LeaseRelease(t),
}
LEASES: dict[str, Make] = {
    "LeaseGrant": lambda n, t, _: em.LeaseGrant(t, 1, 10.0),
    "LeaseReject": lambda n, t, _: em.LeaseReject(1, t + 10, n, n, 10.0, "bound"),
}
VERBS = (OperatorOp.STOP, OperatorOp.CLEANUP, OperatorOp.MAINTENANCE, OperatorOp.PLAN)


def verb(op: OperatorOp) -> Make:
    """An operator's verb, with arguments that would change something if obeyed."""
    args = json.dumps({"on": True, "subject": "shop", "node": DB})
    return lambda n, t, _: OperatorRequest(op, "shop", args)


OTHERS: dict[str, Make] = {
    "HostCommand": lambda n, t, _: HostCommand(Op.LIST, t),
    "DomainEventNote (its own)": lambda n, t, _: DomainEventNote(n, EVENT),
    "DomainEventNote (another host's)": lambda n, t, _: DomainEventNote("pm1", EVENT),
    "RoleAssignment": lambda n, t, _: RoleAssignment(t, "shop", DB, "database", "192.0.2.9",
                                                     "g"),
    "NodeReport (its own)": lambda n, t, _: NodeReport(n, t, "g", NodePhase.READY),
    "NodeReport (another node's)": lambda n, t, _: NodeReport(DB, t, "g", NodePhase.FAILED),
    "ManifestOffer (leader)": lambda n, t, text: ManifestOffer(
        "shop", "d", text + "# generation 2\n", OfferOrigin.LEADER, t),
    "ManifestOffer (seed)": lambda n, t, text: ManifestOffer("shop", "d", text,
                                                             OfferOrigin.SEED, t),
    "ManifestWanted": lambda n, t, _: ManifestWanted("shop"),
    "InspectWanted": lambda n, t, _: InspectWanted("shop"),
    "OperatorRequest (apply)": lambda n, t, text: OperatorRequest(
        OperatorOp.APPLY, "shop", json.dumps({"text": text})),
    **{f"OperatorRequest ({op})": verb(op) for op in VERBS},
    "OperatorRequest (cleanup-service)": lambda n, t, _: OperatorRequest(
        OperatorOp.CLEANUP_SERVICE, "shop", json.dumps({"service": "mariadbd"})),
}
ROWS: dict[str, Make] = {**ELECTION, **LEASES, **OTHERS}

NOBODY, ONLY_LEADER = "--------", "------+-"
MEMBERS, HOSTS, INSPECTORS = "+-+---++", "+-----++", "+-+--+++"

#: The verdicts, per receiver and row, one character per sender of `SENDERS` (+ taken).
HOST_TAKES = {
    **dict.fromkeys(ELECTION, MEMBERS), **dict.fromkeys(LEASES, HOSTS),
    "HostCommand": ONLY_LEADER,
    "DomainEventNote (its own)": HOSTS,
    "DomainEventNote (another host's)": NOBODY,
    "RoleAssignment": NOBODY,  # to nodes only
    "NodeReport (its own)": "--+-----",
    "NodeReport (another node's)": NOBODY,
    "ManifestOffer (leader)": ONLY_LEADER,
    "ManifestOffer (seed)": NOBODY,  # this agent has its cloud
    "ManifestWanted": MEMBERS,
    "InspectWanted": INSPECTORS,
    "OperatorRequest (apply)": "+----+++",
    **{f"OperatorRequest ({op})": HOSTS for op in VERBS},
    "OperatorRequest (cleanup-service)": NOBODY,  # to nodes only
}
NODE_TAKES = {
    **HOST_TAKES,
    "HostCommand": NOBODY,  # to pool hosts only
    "RoleAssignment": ONLY_LEADER,
    "OperatorRequest (apply)": NOBODY,  # a node has no operator verbs
    **{f"OperatorRequest ({op})": NOBODY for op in VERBS},
    "OperatorRequest (cleanup-service)": ONLY_LEADER,
}
NEWCOMER_TAKES = {
    **dict.fromkeys(ROWS, NOBODY),
    # a seed only from a host of the offered manifest's pool (pm9 is not in it)
    "ManifestOffer (seed)": "+-----++",
    "OperatorRequest (apply)": "-----+--",
    "InspectWanted": "-----+--",
}
TAKES = {"pool host": HOST_TAKES, "node": NODE_TAKES, "no cloud yet": NEWCOMER_TAKES}


def test_the_verdicts_cover_every_row_and_sender() -> None:
    for takes in TAKES.values():
        assert set(takes) == set(ROWS)
        assert all(len(v) == len(SENDERS) and set(v) <= {"+", "-"} for v in takes.values())


class Wire:
    """The transport, as far as the agent uses it here: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, peer: str, msg: Any) -> None:
        self.sent.append((peer, msg))

    async def request(self, peer: str, msg: Any) -> Any:
        raise ClouddError(f"{peer} is not reachable in this test")

    def add_peer(self, name: str, address: str, port: int) -> None:
        pass


class Room:
    """The operator's room: records what it is asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []

    async def record(self, peer: str, msg: Any) -> Any:
        self.asked.append((peer, msg))
        return OperatorAnswer(True, "{}")

    async def hand_over(self, cloud: Cloud, text: str) -> None:
        pass

    def above(self) -> Above:
        return Above(operator_request=self.record, inspect_wanted=self.record,
                     hand_over=self.hand_over)


@dataclasses.dataclass
class Agent:
    clouds: Clouds
    wire: Wire
    room: Room
    events: EventLog
    heard: list[Any]
    election: asyncio.Task[None] | None

    async def close(self) -> None:
        if self.election is not None:
            self.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.election
        self.events.close()

    def state(self) -> dict[str, Any]:
        """Everything a message could change."""
        c, m = self.clouds, self.clouds.member
        folder = c.settings.manifest_dir
        out: dict[str, Any] = {
            "member": m is not None,
            "manifests": {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}
            if folder.exists() else {},
            "installed": dict(c._installed),
            "asked": list(self.room.asked),
            # asking the pool hosts who leads is not a change: it is how a node checks
            "sent": [(p, msg) for p, msg in self.wire.sent if not isinstance(msg, em.WhoLeads)],
            "heard": list(self.heard),
        }
        if m is not None:
            term_file = m.state_dir / "term"
            out.update(
                leader=m.election.leader, term=m.election.term,
                term_on_disk=term_file.read_text() if term_file.exists() else None,
                maintenance=m.maintenance.held, reports=dict(m.reports),
                assigned=list(m.node_side.assigned) if isinstance(m.node_side, FakeNodeSide)
                else None,
                cleaned=list(m.node_side.cleaned) if isinstance(m.node_side, FakeNodeSide)
                else None)
        return out


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Cloud:
    return shop(tmp_path_factory.mktemp("shop"), THREE_HOSTS)


@pytest.fixture
async def made() -> AsyncIterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for a in agents:
        await a.close()


async def start(tmp_path: Path, made: list[Agent], cloud: Cloud, receiver: str) -> Agent:
    """A fresh agent: pm1 (a pool host) or DB (a node), following pm2 in term 5; or pm1
    with no cloud yet."""
    name = DB if receiver == "node" else "pm1"
    home = tmp_path / f"agent{len(made)}"
    me = settings(home, name)
    me.state_dir.mkdir(parents=True)
    events = EventLog.in_state_dir(me.state_dir)
    manifests = ManifestFolder(me.manifest_dir, locate=lambda c: None, rescan=lambda: None)
    clouds = Clouds(me, events=events, manifests=manifests, clock=FakeClock(),
                    node_side_factory=FakeNodeSide,
                    identity=node(DB) if receiver == "node" else host("pm1"))
    wire, room = Wire(), Room()
    clouds.transport = wire  # type: ignore[assignment]
    clouds._above = room.above()
    agent = Agent(clouds, wire, room, events, [], None)
    made.append(agent)
    if receiver != "no cloud yet":
        clouds.on_manifest(ManifestEvent(Change.LOADED, cloud.source, cloud))
        m = clouds.member
        assert m is not None
        m.controller.domain_event = lambda h, e: agent.heard.append((h, e))  # type: ignore
        agent.election = asyncio.create_task(m.election.run())
        await asyncio.sleep(0)
        await clouds._handle(host(LEADER), em.Coordinator(TERM))
        assert (m.election.leader, m.election.term) == (LEADER, TERM)
        wire.sent.clear()
    return agent


async def verdict(agent: Agent, sender: Identity, msg: object) -> bool:
    """Deliver; True when the dispatch took it (whatever its handler then made of it)."""
    with capture_logs() as logs, contextlib.suppress(ClouddError):
        await agent.clouds._handle(sender, msg)
    refused = [e for e in logs if e["event"] == "message_refused"
               and e.get("component") != "election"]
    assert all(e["peer"] == sender.name and e["reason"] for e in refused), refused
    return not refused


@pytest.mark.parametrize("receiver", list(TAKES))
@pytest.mark.parametrize("row", list(ROWS))
async def test_who_may_send_what(tmp_path: Path, made: list[Agent], cloud: Cloud,
                                 receiver: str, row: str) -> None:
    text = portable_text(cloud, cloud.text)
    expected = TAKES[receiver][row]
    got = ""
    agent: Agent | None = None
    for _, sender, term in SENDERS:
        if agent is None:
            agent = await start(tmp_path, made, cloud, receiver)
        before = agent.state()
        taken = await verdict(agent, sender, ROWS[row](sender.name, term, text))
        got += "+" if taken else "-"
        if taken:
            agent = None  # it may have changed things: the next sender gets a fresh agent
        else:
            assert agent.state() == before, f"{row} from {sender} was refused but changed"
    assert got == expected, "\n".join(
        f"{who:<36} {'taken' if g == '+' else 'refused'}"
        f"{'' if g == w else '   <- expected the other'}"
        for (who, _, _), g, w in zip(SENDERS, got, expected, strict=True))


async def test_a_node_follows_only_the_leader_the_hosts_name(tmp_path: Path, made: list[Agent],
                                                             cloud: Cloud) -> None:
    agent = await start(tmp_path, made, cloud, "node")
    m = agent.clouds.member
    assert m is not None and isinstance(m.node_side, FakeNodeSide)
    role = RoleAssignment(6, "shop", DB, "database", "192.0.2.177", "g")
    # pm3 claims term 6, which this node has not heard of: refused, and the hosts are asked
    assert not await verdict(agent, host("pm3"), role)
    asked = [(p, msg) for p, msg in agent.wire.sent if isinstance(msg, em.WhoLeads)]
    assert asked == [("pm1", em.WhoLeads(TERM)), ("pm2", em.WhoLeads(TERM)),
                     ("pm3", em.WhoLeads(TERM))]
    # asked once per second at most, however often it is told
    assert not await verdict(agent, host("pm3"), dataclasses.replace(role, term=7))
    assert len([msg for _, msg in agent.wire.sent if isinstance(msg, em.WhoLeads)]) == 3
    # the hosts answer that pm3 leads term 6: the node follows it, and takes its assignment
    await agent.clouds._handle(host("pm1"), em.LeaderIs("pm3", 6))
    assert (m.election.leader, m.election.term) == ("pm3", 6)
    assert await verdict(agent, host("pm3"), role)
    assert m.node_side.assigned == [role]
    # the deposed leader still reaches the node: it cannot re-role it, in any term
    for term in (5, 6, 7):
        stale = RoleAssignment(term, "shop", DB, "web", "192.0.2.9", "g0")
        assert not await verdict(agent, host("pm2"), stale)
    service = OperatorRequest(OperatorOp.CLEANUP_SERVICE, "shop", '{"service": "mariadbd"}')
    assert not await verdict(agent, host("pm2"), service)
    assert m.node_side.assigned == [role] and m.node_side.cleaned == []


async def test_a_leaders_term_cannot_be_poisoned_through_a_host(tmp_path: Path,
                                                                made: list[Agent],
                                                                cloud: Cloud) -> None:
    agent = await start(tmp_path, made, cloud, "pool host")
    before = agent.state()
    for sender in (host(LEADER), node(WEB1), host("pm3")):
        assert not await verdict(agent, sender, HostCommand(Op.LIST, 2**60))
    assert agent.state() == before
