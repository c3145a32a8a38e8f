"""The inspect view and the status, from a member's snapshot: durations on the monotonic
clock, times people read on the wall clock, and where the view came from."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import (
    ElectionState,
    FindingView,
    InspectDoc,
    LivenessView,
    Source,
)
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader.controller import ControllerView
from cloudd.daemon.leader.hooks import HookFailure, HooksView
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import (
    InspectAnswer,
    InspectWanted,
    NodePhase,
    NodeReport,
    ServiceReport,
)
from cloudd.daemon.operator import inspectview
from cloudd.daemon.operator.inspectview import (
    Inspector,
    cloud_view,
    leadership,
    status_of,
)
from cloudd.election.messages import Gossip, Ping
from cloudd.election.swim import Doubt, Status
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Finding
from cloudd.vmctl.backend import Inventory
from cloudd.vmctl.plan import DomainObs, DomainState, FailRecord, Planned, Waiting

from ..member.fakes import DB, LB, MANIFEST, WEB1, Wire, member, shop

GIB = 1024 * 1024
PM2_DEAD = "could not reach it, nor through 1 helper within 0.1 s; no answer in 0.6 s of suspicion"
LB_SUSPECT = "gossip: pm2 suspects it (heard from pm3)"


@dataclasses.dataclass
class Rig:
    snap: MemberSnapshot
    clock: FakeClock
    events: EventLog


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock()
    tmp_path.joinpath("pm1").mkdir()
    events = EventLog.in_state_dir(tmp_path / "pm1")
    m = member(tmp_path, "pm1", wire=Wire(), clock=clock, events=events)
    clock.advance(100.0)  # monotonic 1100, wall 1_700_000_100
    snap = m.snapshot()
    alive = {n: Status.ALIVE for n in snap.members}
    hosts = {
        # pm2 died while it ran the database; pm1 runs it again now
        "pm2": ((DomainObs("pm2", DB, "shop", DomainState.RUNNING, since=500.0),
                 DomainObs("pm2", "x", "other", DomainState.RUNNING)), None),
        "pm1": ((DomainObs("pm1", DB, "shop", DomainState.RUNNING, since=1040.0),
                 DomainObs("pm1", WEB1, "shop", DomainState.SHUTOFF, since=1000.0)),
                Inventory(4 * GIB, 8 * GIB, 4, frozenset())),
    }
    controller = ControllerView(
        hosts=hosts, last_plan=Planned((), (Waiting(LB, "waiting for server"),)),
        node_fails={WEB1: FailRecord(count=3, last=1090.0, not_before=1130.0)}, host_fails={})
    reports = {DB: NodeReport(DB, 4, "g", NodePhase.READY, services=(
        ServiceReport("mariadbd", "running", 42, True, 3, 0, ""),)),
        WEB1: NodeReport(WEB1, 4, "g", NodePhase.CONVERGING, "waiting for mariadbd")}
    snap = dataclasses.replace(snap, leader="pm1", acting=True, term=4, generation=3,
                               maintenance=frozenset({DB, None}),
                               liveness={**alive, "pm2": Status.DEAD, LB: Status.SUSPECT},
                               doubts={"pm2": Doubt(Status.DEAD, 1080.0, PM2_DEAD),
                                       LB: Doubt(Status.SUSPECT, 1095.5, LB_SUSPECT)},
                               controller=controller, reports=reports)
    yield Rig(snap, clock, events)
    events.close()


def test_the_view_of_a_leader(rig: Rig) -> None:
    rig.events.append(LogEvent(1_700_000_050.0, "shop", LogKind.FAILURE, WEB1, "start failed", 4))
    view = cloud_view(rig.snap, events=rig.events, source=Source.LEADER)
    assert view.observed_at == 1_700_000_100.0
    assert view.manifest is not None and view.manifest.generation == 3
    assert view.maintenance == ("(cloud)", DB)
    hosts = {h.name: h for h in view.hosts}
    assert (hosts["pm1"].free_memory_mib, hosts["pm1"].domains) == (4096, 2)
    assert (hosts["pm2"].liveness, hosts["pm2"].reachable) == (LivenessView.DEAD, False)
    nodes = {n.name: n for n in view.nodes}
    # the running copy on the live host wins over the dead host's last report
    assert (nodes[DB].host, nodes[DB].domain_state, nodes[DB].uptime) == ("pm1", "running", 60.0)
    assert nodes[DB].services[0].restarts == 2 and nodes[DB].waiting == ""
    assert (nodes[WEB1].uptime, nodes[WEB1].waiting) == (None, "waiting for mariadbd")
    assert nodes[LB].waiting == "waiting for server" and nodes[LB].domain_state == "none"
    # why pm2 and the balancer's agent are not alive, since when as wall time
    assert (hosts["pm2"].liveness_since, hosts["pm2"].liveness_reason) == (
        1_700_000_080.0, PM2_DEAD)
    assert (hosts["pm1"].liveness_since, hosts["pm1"].liveness_reason) == (None, "")
    assert nodes[LB].agent_liveness is LivenessView.SUSPECT
    assert (nodes[LB].agent_liveness_since, nodes[LB].agent_liveness_reason) == (
        1_700_000_095.5, LB_SUSPECT)
    assert (nodes[DB].agent_liveness_since, nodes[DB].agent_liveness_reason) == (None, "")
    [failed] = view.failed_actions
    assert (failed.subject, failed.fail_count, failed.last_error) == (WEB1, 3, "start failed")
    assert failed.next_retry == 1_700_000_130.0  # 30 s after the snapshot, as wall time
    assert [e.reason for e in view.events] == ["start failed"]


def test_the_providers_findings_and_failing_hooks_show_beside_each_node(rig: Rig) -> None:
    hooks = HooksView(
        findings=(Finding("scheduler", True, "idle", WEB1, state="alloc", jobs=("12",)),
                  Finding("scheduler", False, "unknown to cloudd", "stray-node"),
                  Finding("upstream", True, "matches", LB)),
        failures=(HookFailure("configure", "server", 2, 1120.0, "head unreachable"),
                  HookFailure("stop", "stop", 1, 1110.0, "drain refused")),
        holding=True)
    view = cloud_view(dataclasses.replace(rig.snap, hooks=hooks), events=rig.events,
                      source=Source.LEADER)
    nodes = {n.name: n for n in view.nodes}
    assert nodes[WEB1].findings == (FindingView("scheduler", True, "idle", "alloc", ("12",)),)
    assert nodes[LB].findings == (FindingView("upstream", True, "matches"),)
    assert nodes[DB].findings == ()
    # a finding about a node the manifest does not have is the cloud's
    assert view.findings == (FindingView("scheduler", False, "unknown to cloudd"),)
    assert view.held_for_stop
    hooks_failed = [(f.action, f.subject, f.fail_count, f.last_error, f.next_retry)
                    for f in view.failed_actions if f.action != "reconcile"]
    assert hooks_failed == [
        ("configure", "server", 2, "head unreachable", 1_700_000_120.0),
        ("stop", "shop", 1, "drain refused", 1_700_000_110.0)]


def test_a_stepped_wall_clock_moves_times_people_read_not_durations(rig: Rig) -> None:
    stepped = dataclasses.replace(rig.snap, taken_at=rig.snap.taken_at + 3600.0)
    view = cloud_view(stepped, events=rig.events, source=Source.LEADER)
    nodes = {n.name: n for n in view.nodes}
    assert nodes[DB].uptime == 60.0
    assert view.failed_actions[0].next_retry == 1_700_003_730.0


@pytest.mark.parametrize(("leader", "acting", "dead", "state"), [
    ("", False, set(), ElectionState.ELECTING),
    ("pm1", False, set(), ElectionState.NO_QUORUM),   # leads, but not acting
    ("pm2", False, {"pm1"}, ElectionState.NO_QUORUM),  # its leader reaches too few hosts
    ("pm2", False, set(), ElectionState.STABLE),
    ("pm1", True, set(), ElectionState.STABLE),
])
def test_leadership_state(rig: Rig, leader: str, acting: bool, dead: set[str],
                          state: ElectionState) -> None:
    liveness = {n: Status.DEAD if n in dead else Status.ALIVE for n in rig.snap.members}
    snap = dataclasses.replace(rig.snap, leader=leader, acting=acting, liveness=liveness)
    got = leadership(snap)
    assert got.state is state and got.quorum_needed == 2
    assert got.quorum_reached == 2 - len(dead)


def test_status_is_this_agents_own_view(rig: Rig) -> None:
    assert status_of(None, me="pm1") == {"agent": "pm1", "cloud": None, "events_dropped": 0}
    status = status_of(rig.snap, me="pm1", events_dropped=3)
    assert json.loads(json.dumps(status)) == status
    assert (status["events_dropped"], status["unproven"]) == (3, "")
    assert (status["leader"], status["term"], status["acting"]) == ("pm1", 4, True)
    assert status["members"]["pm2"] == "dead"
    assert status["doubts"] == {
        "pm2": {"status": "dead", "since": 1_700_000_080.0, "reason": PM2_DEAD},
        LB: {"status": "suspect", "since": 1_700_000_095.5, "reason": LB_SUSPECT}}
    assert status["nodes"][DB] == {"phase": "ready", "message": "", "term": 4,
                                   "services": {"mariadbd": "running"}}
    assert status["node"] is None


def inspector(rig: Rig, snap: list[MemberSnapshot | None], answer: Any = None) -> Inspector:
    wire = Wire(answer=answer)
    return Inspector(me="pm1", snapshot=lambda: snap[0], request=wire.request,
                     events=rig.events, clock=rig.clock)


async def test_the_leader_answers_with_its_own_view(rig: Rig) -> None:
    snaps: list[MemberSnapshot | None] = [rig.snap]
    doc = await inspector(rig, snaps).inspect(None)
    assert doc.answered_by == "pm1" and doc.clouds[0].source is Source.LEADER
    with pytest.raises(ApiError, match="unknown cloud 'other': this agent serves shop"):
        await inspector(rig, snaps).inspect("other")
    empty = await inspector(rig, [None]).inspect(None)
    assert empty.clouds == ()
    with pytest.raises(ApiError, match="serves no cloud yet, not 'shop'"):
        await inspector(rig, [None]).inspect("shop")
    with pytest.raises(TemporaryError, match="pm1 has no cloud yet"):
        await inspector(rig, [None]).answer("pm2", InspectWanted("shop"))


async def test_a_follower_shows_the_leaders_view_then_a_stale_one(rig: Rig) -> None:
    leader = inspector(rig, [rig.snap])
    up = [True]

    async def ask(peer: str, msg: Any) -> Any:
        assert peer == "pm2" and isinstance(msg, InspectWanted)
        if not up[0]:
            raise TemporaryError("pm2 cannot be reached")
        return await leader.answer("pm1", msg)

    mine: list[MemberSnapshot | None] = [
        dataclasses.replace(rig.snap, leader="pm2", acting=False)]
    follower = inspector(rig, mine, answer=ask)
    fresh = (await follower.inspect(None)).clouds[0]
    assert fresh.source is Source.LEADER and fresh.leadership.leader == "pm1"
    up[0] = False
    again = (await follower.inspect("shop")).clouds[0]
    assert again.source is Source.LEADER and again.nodes == fresh.nodes
    assert again.leadership.leader == "pm2"  # this agent's own view of who leads
    rig.clock.advance(2 * rig.snap.lease_duration + 0.2)  # more than two leases
    mine[0] = dataclasses.replace(rig.snap, leader="pm2", acting=False,
                                  monotonic=rig.clock.monotonic())
    assert (await follower.inspect(None)).clouds[0].source is Source.STALE


async def test_a_follower_that_never_reached_its_leader_shows_its_own_view(rig: Rig) -> None:
    mine: list[MemberSnapshot | None] = [
        dataclasses.replace(rig.snap, leader="pm2", acting=False)]
    doc = await inspector(rig, mine).inspect(None)
    assert doc.clouds[0].source is Source.LOCAL


async def test_the_answer_to_another_agent_is_the_document_as_json(rig: Rig) -> None:
    snaps: list[MemberSnapshot | None] = [rig.snap]
    answer = await inspector(rig, snaps).answer("pm2", InspectWanted("shop"))
    assert isinstance(answer, InspectAnswer) and answer.cloud == "shop"
    assert json.loads(answer.doc)["answered_by"] == "pm1"
    with pytest.raises(PermanentError, match="pm1 does not serve cloud other"):
        await inspector(rig, snaps).answer("pm2", InspectWanted("other"))


async def test_the_view_a_node_may_ask_for_carries_no_secret_and_no_fence_command(
        rig: Rig, tmp_path: Path) -> None:
    """The dispatch table lets a node of the cloud ask for the view: it must learn nothing
    from it that the roster does not already say."""
    text = MANIFEST.replace('fence: ["true"]', 'fence: ["/sbin/fence-marker", "--pw=hunter2"]')
    (tmp_path / "secret-marker").write_text("the password\n")
    text += f"secrets: {{db_password: {{file: {tmp_path / 'secret-marker'}}}}}\n"
    text = text.replace("settings: {app_port: 8080}",
                        "settings: {app_port: 8080, database_password_ref: db_password}")
    cloud = shop(tmp_path / "secret", text)
    assert cloud.pool[1].fence and cloud.secrets
    snap = dataclasses.replace(rig.snap, cloud=cloud)
    answer = await inspector(rig, [snap]).answer(DB, InspectWanted("shop"))
    assert isinstance(answer, InspectAnswer)
    for secret in ("fence-marker", "hunter2", "secret-marker", "the password", "db_password",
                   "8080"):
        assert secret not in answer.doc
    assert {n["name"] for n in json.loads(answer.doc)["clouds"][0]["nodes"]} == {
        n.name for n in cloud.nodes}


async def test_a_flood_of_inspect_requests_builds_one_answer_off_the_loop(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every asker waits for the one answer being built, in a thread (not the loop's); it is
    reused until ANSWER_REUSE has passed, then built once more."""
    threads: list[str] = []
    real = inspectview.leader_answer

    def counted(*args: Any) -> InspectAnswer:
        threads.append(threading.current_thread().name)
        return real(*args)
    monkeypatch.setattr(inspectview, "leader_answer", counted)
    leader = inspector(rig, [rig.snap])
    answers = await asyncio.gather(*(leader.answer("pm2", InspectWanted("shop"))
                                     for _ in range(50)))
    assert len(threads) == 1 and threads[0] != threading.current_thread().name
    assert all(a is answers[0] for a in answers)
    assert await leader.answer(DB, InspectWanted("shop")) is answers[0]
    rig.clock.advance(inspectview.ANSWER_REUSE)
    assert await leader.answer(DB, InspectWanted("shop")) is not answers[0]
    assert len(threads) == 2


async def test_a_failed_answer_or_a_new_term_is_built_anew(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = inspectview.leader_answer, []

    def failing_once(*args: Any) -> InspectAnswer:
        calls.append(args[1].term)
        if len(calls) == 1:
            raise PermanentError("the event log is closed")
        return real(*args)
    monkeypatch.setattr(inspectview, "leader_answer", failing_once)
    snaps: list[MemberSnapshot | None] = [rig.snap]
    leader = inspector(rig, snaps)
    with pytest.raises(PermanentError, match="closed"):
        await leader.answer("pm2", InspectWanted("shop"))
    first = await leader.answer("pm2", InspectWanted("shop"))
    assert await leader.answer("pm2", InspectWanted("shop")) is first
    snaps[0] = dataclasses.replace(rig.snap, term=5)
    assert await leader.answer("pm2", InspectWanted("shop")) is not first
    assert calls == [4, 4, 5]


async def test_an_asker_that_goes_away_does_not_cancel_the_others_answer(rig: Rig) -> None:
    leader = inspector(rig, [rig.snap])
    first = asyncio.create_task(leader.answer("pm2", InspectWanted("shop")))
    second = asyncio.create_task(leader.answer(DB, InspectWanted("shop")))
    await asyncio.sleep(0)
    first.cancel()
    answer = await second
    assert isinstance(answer, InspectAnswer) and json.loads(answer.doc)["answered_by"] == "pm1"


async def test_a_leaders_answer_without_the_cloud_leaves_the_follower_its_own_view(
        rig: Rig) -> None:
    async def other(peer: str, msg: Any) -> Any:
        return InspectAnswer("shop", json.dumps(InspectDoc(answered_by="pm2",
                                                           generated_at=1.0).to_json()))
    mine: list[MemberSnapshot | None] = [
        dataclasses.replace(rig.snap, leader="pm2", acting=False)]
    doc = await inspector(rig, mine, answer=other).inspect(None)
    assert doc.clouds[0].source is Source.LOCAL


def test_a_members_snapshot_carries_its_cores_reasons(tmp_path: Path) -> None:
    """From the election core through the member's snapshot to the view: why and since."""
    clock = FakeClock()
    tmp_path.joinpath("pm1").mkdir()
    events = EventLog.in_state_dir(tmp_path / "pm1")
    m = member(tmp_path, "pm1", wire=Wire(), clock=clock, events=events)
    m.election.start()
    clock.advance(5.0)
    m.election.receive("pm2", Ping(1, "pm1", "", 0, gossip=(Gossip("suspect", LB, 0, "pm2"),)))
    clock.advance(2.0)
    snap = m.snapshot()
    assert snap.status(LB) is Status.SUSPECT
    assert snap.doubts == {LB: Doubt(Status.SUSPECT, 1005.0, "gossip: pm2 suspects it")}
    assert snap.doubt(DB) is None
    view = cloud_view(snap, events=events, source=Source.LOCAL)
    lb = next(n for n in view.nodes if n.name == LB)
    assert (lb.agent_liveness_since, lb.agent_liveness_reason) == (
        1_700_000_005.0, "gossip: pm2 suspects it")
    events.close()
