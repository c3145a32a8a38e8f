"""CloudMember's wiring, in process: every message through the table to its duty, the
snapshot it publishes, maintenance, new generations and the tasks it owns. A fake wire and a
fake clock; no transport, no libvirt, no real time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from cloudd.config.model import Cloud, Ensure
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.controller import policy_of
from cloudd.daemon.leader.fencing import JOIN_GRACE
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.clouds import timing_for
from cloudd.daemon.member.dispatch import Duty, InForce
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    ManifestOffer,
    ManifestWanted,
    NodePhase,
    NodeReport,
    OfferOrigin,
    OperatorAnswer,
    RoleAssignment,
)
from cloudd.election.messages import Coordinator
from cloudd.election.swim import Status
from cloudd.errors import PermanentError, TemporaryError
from cloudd.pki import MemberKind
from cloudd.vmctl.backend import DomainEvent, DomainEventKind, FakeBackend
from cloudd.vmctl.hostagent import CommandOutcome, HostCommand, Op
from cloudd.vmctl.metadata import CloudMeta

from .fakes import DB, MANIFEST, WEB1, FakeNodeSide, Wire, host, node, settings, shop


@dataclasses.dataclass
class Rig:
    member: CloudMember
    wire: Wire
    clock: FakeClock
    events: EventLog
    cloud: Cloud
    election: asyncio.Task[None] | None = None


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        if rig.election is not None:
            rig.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rig.election
        rig.events.close()


async def follow(r: Rig, leader: str, term: int) -> None:
    """Start the member's election (it cannot lead: no host quorum) and have it follow."""
    r.election = asyncio.create_task(r.member.election.run())
    await asyncio.sleep(0)
    await r.member.handle(host(leader), Coordinator(term=term))
    assert (r.member.election.leader, r.member.election.term) == (leader, term)


def rig(tmp_path: Path, rigs: list[Rig], name: str, *, backend: FakeBackend | None = None,
        cloud: Cloud | None = None) -> Rig:
    cloud = cloud or shop(tmp_path / "manifests")
    wire, clock = Wire(), FakeClock()
    agent = settings(tmp_path, name)
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog.in_state_dir(agent.state_dir)

    async def open_backend(uri: str) -> FakeBackend:
        assert backend is not None
        return backend

    member = CloudMember(settings=agent, cloud=cloud, timing=timing_for(agent), send=wire.send,
                         request=wire.request, events=events, clock=clock,
                         open_backend=open_backend if backend is not None else None,
                         node_side=FakeNodeSide)
    made = Rig(member, wire, clock, events, cloud)
    rigs.append(made)
    return made


def report(node: str, phase: NodePhase = NodePhase.READY) -> NodeReport:
    return NodeReport(node=node, term=1, generation="g", phase=phase)


async def test_a_stranger_cannot_be_a_member(tmp_path: Path, rigs: list[Rig]) -> None:
    with pytest.raises(PermanentError, match="agent pm9 is not a member of cloud shop"):
        rig(tmp_path, rigs, "pm9")


async def test_the_member_serves_its_duties_and_no_other(tmp_path: Path,
                                                         rigs: list[Rig]) -> None:
    pm1, db = rig(tmp_path, rigs, "pm1"), rig(tmp_path, rigs, DB)
    assert set(pm1.member.handlers) == set(db.member.handlers) == {
        Duty.ELECTION, Duty.HOST_COMMAND, Duty.DOMAIN_EVENT, Duty.ROLE_ASSIGNMENT,
        Duty.NODE_ACTION, Duty.NODE_REPORT, Duty.MANIFEST_WANTED, Duty.RECORD_WRITE,
        Duty.RECORD_GATHER}
    assert pm1.member.node_side is None and isinstance(db.member.node_side, FakeNodeSide)
    await follow(db, "pm2", 1)
    await follow(pm1, "pm2", 1)
    # the leader's host command goes to pool hosts only, its assignments to nodes only
    with pytest.raises(PermanentError, match="to a pool host, and this agent is a node"):
        await db.member.handle(host("pm2"), HostCommand(Op.LIST, 1))
    a = RoleAssignment(1, "shop", "pm1", "web", "a", "g")
    assert await pm1.member.handle(host("pm2"), a) is None
    with pytest.raises(PermanentError, match="pm1 has no use for OperatorAnswer"):
        await pm1.member.handle(host("pm2"), OperatorAnswer(True, "{}"))


async def test_the_leader_is_followed_and_named_in_the_senders(tmp_path: Path,
                                                               rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    assert pm1.member.in_force().leader == ""
    await follow(pm1, "pm2", 5)
    assert pm1.member.in_force() == InForce(
        cloud="shop", hosts=frozenset({"pm1", "pm2"}),
        nodes=frozenset({DB, WEB1, "shop-server-2", "shop-balancer-1"}), leader="pm2",
        term=5, me=MemberKind.HOST)
    assert rig(tmp_path, rigs, DB).member.in_force().me is MemberKind.NODE


async def test_a_node_takes_its_assignment_and_reports_to_its_leader(
        tmp_path: Path, rigs: list[Rig]) -> None:
    db = rig(tmp_path, rigs, DB)
    side = db.member.node_side
    assert isinstance(side, FakeNodeSide)
    a = RoleAssignment(5, "shop", DB, "database", "192.0.2.177", "g")
    assert await db.member.handle(host("pm2"), a) is None  # no leader followed yet: refused
    side.report(report(DB))  # no leader yet: kept
    assert db.wire.of(NodeReport) == [] and db.member.reports == {} and side.assigned == []
    await follow(db, "pm2", 5)
    await db.member.handle(host("pm2"), a)
    assert side.assigned == [a]
    side.report(report(DB))
    assert db.wire.of(NodeReport) == [("pm2", report(DB))]


async def test_reports_are_kept_only_from_the_node_they_name(tmp_path: Path,
                                                             rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    assert await pm1.member.handle(node(DB), report(DB)) is None
    assert await pm1.member.handle(node(WEB1), report(DB, NodePhase.FAILED)) is None
    assert await pm1.member.handle(host(DB), report(DB, NodePhase.FAILED)) is None
    assert dict(pm1.member.reports) == {DB: report(DB)}
    assert pm1.member.snapshot().reports == {DB: report(DB)}


async def test_a_host_answers_the_leaders_commands_and_forwards_its_events(
        tmp_path: Path, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    backend = FakeBackend(clock=clock.monotonic)
    pm1 = rig(tmp_path, rigs, "pm1", backend=backend)
    assert pm1.member.host is not None
    await follow(pm1, "pm2", 5)
    # pm2 holds this host's lease for term 5 (the election's answer, stood in for here)
    monkeypatch.setattr(pm1.member.host, "holds_lease", lambda m, t: (m, t) == ("pm2", 5))
    task = asyncio.create_task(pm1.member.host.run())
    try:
        for _ in range(100):
            if pm1.member.host.agent is not None:
                break
            await asyncio.sleep(0)
        result = await pm1.member.handle(host("pm2"), HostCommand(Op.LIST, 5))
        assert result.outcome is CommandOutcome.DONE
        # a domain event of this cloud goes to the leader at once; another cloud's does not
        meta = CloudMeta(cloud="shop", node=DB, role="database", term=5)
        pm1.member.host.forward(DomainEvent(DomainEventKind.STOPPED, "shop-x", meta,
                                            "crashed", 0.0))
        pm1.member.host.forward(DomainEvent(DomainEventKind.STOPPED, "other-x",
                                            dataclasses.replace(meta, cloud="other"),
                                            "crashed", 0.0))
        [(peer, note)] = pm1.wire.of(DomainEventNote)
        assert peer == "pm2" and note.host == "pm1" and note.event.meta == meta
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pm1.member.host.agent is None


async def test_a_host_runs_commands_for_its_lease_holder_and_for_itself_while_it_acts(
        tmp_path: Path, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the host asks before a command: did it grant the sender its lease for exactly
    that term, or is the sender this agent itself, acting in that term (it may lead on the
    other hosts' leases while its own is still bound elsewhere)."""
    pm1 = rig(tmp_path, rigs, "pm1", backend=FakeBackend(clock=FakeClock().monotonic))
    duties = pm1.member.host
    assert duties is not None
    # the election's answer (pm2 holds this host's lease for term 5), stood in for here
    monkeypatch.setattr(pm1.member.election, "holds_lease", lambda m, t: (m, t) == ("pm2", 5))
    assert duties.holds_lease("pm2", 5)
    assert not duties.holds_lease("pm2", 6) and not duties.holds_lease("pm1", 5)
    monkeypatch.setattr(pm1.member, "acting_term", lambda: 7)
    assert duties.holds_lease("pm1", 7)
    assert not duties.holds_lease("pm1", 6) and not duties.holds_lease("pm1", 8)
    assert not duties.holds_lease("pm2", 7)  # this agent's acting speaks for itself only


async def test_a_domain_event_from_a_host_reaches_the_controller(
        tmp_path: Path, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    heard: list[tuple[str, DomainEvent]] = []
    monkeypatch.setattr(pm1.member.controller, "domain_event",
                        lambda h, e: heard.append((h, e)))
    meta = CloudMeta(cloud="shop", node=DB, role="database", term=5)
    event = DomainEvent(DomainEventKind.STOPPED, f"shop-{DB}", meta, "crashed", 0.0)
    assert await pm1.member.handle(host("pm2"), DomainEventNote("pm2", event)) is None
    assert heard == [("pm2", event)]


async def test_a_booting_node_gets_the_manifest_from_any_member(tmp_path: Path,
                                                                rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    offer = await pm1.member.handle(node(DB), ManifestWanted("shop"))
    assert isinstance(offer, ManifestOffer)
    assert (offer.cloud, offer.digest, offer.origin) == ("shop", pm1.cloud.digest,
                                                        OfferOrigin.SEED)
    # a node's view: self-contained, without the template, the pool's fence commands or
    # libvirt URIs
    view = yaml.safe_load(offer.text)
    assert view["self_contained"] is True
    assert "fence" in pm1.cloud.text
    assert all("fence" not in h and "libvirt_uri" not in h for h in view["pool"])
    assert {"domain_template", "domain_template_text"}.isdisjoint(view)
    for_host = await pm1.member.handle(host("pm2"), ManifestWanted("shop"))
    assert isinstance(for_host, ManifestOffer) and "fence" in for_host.text
    assert yaml.safe_load(for_host.text)["domain_template_text"] == pm1.cloud.template_text
    with pytest.raises(PermanentError, match="pm1 does not serve cloud other"):
        await pm1.member.handle(node(DB), ManifestWanted("other"))


async def test_the_snapshot_is_what_the_member_knows(tmp_path: Path, rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    pm1.clock.advance(5.0)
    snap = pm1.member.snapshot()
    # no record yet: the generation in force has no number here
    assert (snap.me, snap.cloud, snap.generation, snap.term) == ("pm1", pm1.cloud, 0, 0)
    assert snap.loaded_at == 1_700_000_000.0 and snap.taken_at == 1_700_000_005.0
    assert snap.monotonic == 1005.0 and snap.wall_of(1010.0) == 1_700_000_010.0
    assert (snap.leader, snap.acting, snap.quorum, snap.hosts) == (
        "", False, 2, frozenset({"pm1", "pm2"}))
    assert snap.members[:2] == ("pm1", "pm2") and snap.status("pm1") is Status.ALIVE
    assert snap.node is None and snap.maintenance == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.term = 9  # type: ignore[misc]


async def test_a_node_holds_stand_ins_that_answer_as_a_host_that_does_not_lead(
        tmp_path: Path, rigs: list[Rig]) -> None:
    """A node builds none of the leader's parts (`standins`): what its snapshot and its
    member ask of them is what the real parts answer on a pool host that does not lead."""
    from cloudd.daemon.leader.controller import Controller
    from cloudd.daemon.leader.hooks import ProviderHooks
    from cloudd.daemon.member.standins import IdleController, IdleElastic, IdleHooks

    pm1, web = rig(tmp_path, rigs, "pm1"), rig(tmp_path, rigs, WEB1)
    await follow(pm1, "pm2", 3)
    await follow(web, "pm2", 3)
    assert isinstance(pm1.member.controller, Controller)
    assert isinstance(pm1.member.hooks, ProviderHooks)
    assert isinstance(web.member.controller, IdleController)
    assert isinstance(web.member.hooks, IdleHooks)
    assert isinstance(web.member.elastic, IdleElastic)
    assert web.member.host is None and pm1.member.leading_term() is None
    at_host, at_node = pm1.member.snapshot(), web.member.snapshot()
    assert at_node.controller == at_host.controller
    assert at_node.hooks == at_host.hooks
    assert at_node.timings == at_host.timings == ()
    assert web.member.hooks.holding() is pm1.member.hooks.holding() is False
    assert web.member.controller.fenced == pm1.member.controller.fenced == set()
    assert web.member.elastic.findings() == pm1.member.elastic.findings() == ()


async def test_reconcile_settings_build_the_controllers_backoff(tmp_path: Path,
                                                                rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    expected = policy_of(pm1.member.settings.reconcile)
    assert pm1.member.controller.node_fails.policy == expected
    assert pm1.member.controller.host_fails.policy == expected
    assert expected.base == 0.1 and expected.cap == 5.0 and expected.stable == 10.0


async def test_a_new_generation_is_recorded_and_a_stop_is_an_owned_task(
        tmp_path: Path, rigs: list[Rig]) -> None:
    node = rig(tmp_path, rigs, DB)
    side = node.member.node_side
    assert isinstance(side, FakeNodeSide)
    node.member.update(node.cloud)  # the same digest: nothing
    assert node.member.generation == 0  # a node knows the number from its leader's offer
    node.clock.advance(60.0)
    stopped = dataclasses.replace(node.cloud, ensure=Ensure.STOPPED, digest="g2")
    node.member.record.offered = 2
    node.member.update(stopped)
    snap = node.member.snapshot()
    assert (snap.generation, snap.loaded_at, snap.cloud) == (2, 1_700_000_060.0, stopped)
    [event] = node.events.query(kind=LogKind.COMMAND)
    assert event.reason == "manifest generation 2 in force" and event.time == snap.loaded_at
    assert side.cloud is stopped and side.stopped == 0  # not running yet: started by run()
    task = asyncio.create_task(node.member.run())
    for _ in range(100):
        if side.stopped and side.running:
            break
        await asyncio.sleep(0)
    assert side.stopped == 1 and side.running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not side.running  # every task of the member ends with it


async def test_the_operator_reaches_the_node_side_and_the_controller(
        tmp_path: Path, rigs: list[Rig]) -> None:
    pm1, node = rig(tmp_path, rigs, "pm1"), rig(tmp_path, rigs, DB)
    await node.member.cleanup_service("mariadbd")
    assert isinstance(node.member.node_side, FakeNodeSide)
    assert node.member.node_side.cleaned == ["mariadbd"]
    with pytest.raises(PermanentError, match="pm1 runs no services"):
        await pm1.member.cleanup_service("mariadbd")
    pm1.member.controller.node_fails.failed(DB, now=1.0)
    pm1.member.reset_failures(DB)
    assert pm1.member.snapshot().controller.node_fails == {}


async def test_a_new_generation_changes_who_is_a_member(tmp_path: Path,
                                                        rigs: list[Rig]) -> None:
    """A node dropped from the manifest gets nothing but refusals from the generation on; an
    added node is a member like any other; the followed leader and term stay."""
    pm2 = rig(tmp_path, rigs, "pm2")
    await follow(pm2, "pm1", 3)
    grown = MANIFEST.replace("    - {address: 192.0.2.178, image: /img/web2.qcow2}\n",
                             "    - {address: 192.0.2.178, image: /img/web2.qcow2}\n"
                             "    - {address: 192.0.2.179, image: /img/web3.qcow2}\n")
    assert grown != MANIFEST
    pm2.member.update(shop(tmp_path / "grown", grown))
    web3 = "shop-server-3"
    await pm2.member.handle(node(web3), report(web3))
    assert web3 in pm2.member.reports
    with capture_logs() as logs:
        pm2.member.update(shop(tmp_path / "dropped", MANIFEST))  # server-3 goes again
        await pm2.member.handle(node(web3), report(web3, NodePhase.FAILED))
    assert web3 not in pm2.member.reports  # its report went with it, and the refused one
    assert web3 not in pm2.member.snapshot().reports  # changed nothing
    assert [e["peer"] for e in logs if e["event"] == "message_refused"] == [web3]
    assert web3 not in pm2.member.election.roster and DB in pm2.member.election.roster
    assert (pm2.member.election.leader, pm2.member.election.term) == ("pm1", 3)


async def test_a_new_pool_starts_the_election_over(tmp_path: Path, rigs: list[Rig]) -> None:
    pm2 = rig(tmp_path, rigs, "pm2")
    await follow(pm2, "pm1", 3)
    three = MANIFEST.replace('  - {name: pm2, address: 192.0.2.71, fence: ["true"]}\n',
                             '  - {name: pm2, address: 192.0.2.71, fence: ["true"]}\n'
                             '  - {name: pm3, address: 192.0.2.72}\n')
    with capture_logs() as logs:
        pm2.member.update(shop(tmp_path / "three", three))
    assert [e["reason"] for e in logs if e["event"] == "election_restarted"] == [
        "the new manifest generation changes the pool hosts"]
    assert "pm3" in pm2.member.election.roster.hosts
    assert pm2.member.election.leader == ""  # asking the hosts again, as after a restart
    await pm2.member.handle(host("pm3"), Coordinator(term=4))
    assert (pm2.member.election.leader, pm2.member.election.term) == ("pm3", 4)


async def test_a_host_added_to_the_pool_is_not_fenced_while_it_joins(
        tmp_path: Path, rigs: list[Rig]) -> None:
    """Its agent answers nobody until a pool host hands it the manifest: the leader's fence of
    a dead host whose domains it never listed waits for it (`JOIN_GRACE`); a host of the pool
    from before is fenced at once, and one dropped forgets its grace."""
    marker = tmp_path / "pm3-off"
    pm1 = rig(tmp_path, rigs, "pm1")
    hosts = '  - {name: pm2, address: 192.0.2.71, fence: ["true"]}\n'
    pm3 = f'  - {{name: pm3, address: 192.0.2.72, fence: ["touch", "{marker}"]}}\n'
    pm1.clock.advance(100)
    pm1.member.update(shop(tmp_path / "three", MANIFEST.replace(hosts, hosts + pm3)))
    fencer = pm1.member.controller.fencer
    assert fencer is not None
    await fencer.fence("pm2")
    pm1.clock.advance(JOIN_GRACE - 1)
    with pytest.raises(TemporaryError, match=r"^pm3 has just joined the pool"):
        await fencer.fence("pm3")
    assert not marker.exists()
    pm1.clock.advance(1)
    await fencer.fence("pm3")
    assert marker.exists()
    # dropped, then added again: a new grace
    pm1.member.update(shop(tmp_path / "two", MANIFEST))
    pm1.member.update(shop(tmp_path / "again", MANIFEST.replace(hosts, hosts + pm3)))
    with pytest.raises(TemporaryError, match=r"^pm3 has just joined the pool"):
        await fencer.fence("pm3")
