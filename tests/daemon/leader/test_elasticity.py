"""The leader's elastic loop against a scripted scheduler: the nodes in use written to the
record, drains asked of the scheduler, every change logged with its reason, and a scheduler
that cannot answer changing nothing but the minimum."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.leader.drain import Drains
from cloudd.daemon.leader.elasticity import ElasticLoop
from cloudd.daemon.network.catalogue import Drain
from cloudd.errors import TemporaryError
from cloudd.providers.base import ClusterView, Demand, NodeUse, Provider, Release
from cloudd.providers.catalog import CATALOG

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: hpc
type: slurm
domain_template: t.xml
pool:
  - {name: pm1, address: 192.0.2.70}
roles:
  head:
    - {address: 192.0.2.20, image: /var/lib/cloudd/images/head.qcow2}
  compute:
    elastic: {min: 1, max: 3, idle_after: 60, cooldown: 30}
    template: {image: "/var/lib/cloudd/images/{name}.qcow2", vcpus: 2}
    addresses: 192.0.2.30-192.0.2.33
settings: {partition: main}
"""


@dataclass
class Scheduler(Provider):
    """Answers `demand` from what the test sets; records drains and resumes."""

    cloud_type = "slurm"
    demand_now: Demand = field(default_factory=Demand)
    down: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    asked: int = 0

    async def demand(self, cluster: ClusterView, role: str) -> Demand:
        self.asked += 1
        if self.down:
            raise TemporaryError("slurmctld on hpc-head-1 did not answer")
        return self.demand_now

    async def release(self, cluster: ClusterView, role: str, node: str,
                      why: Release = Release.LEAVE) -> None:
        self.calls.append(("release" if why is Release.LEAVE else "move", node))

    async def keep(self, cluster: ClusterView, role: str, node: str) -> None:
        self.calls.append(("keep", node))


@dataclass
class Loop:
    loop: ElasticLoop
    sched: Scheduler
    active: set[str]
    clock: FakeClock
    events: EventLog
    term: list[int | None] = field(default_factory=lambda: [3])
    where: dict[str, str] = field(default_factory=dict)
    drains: list[Drains] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events.query(cloud="hpc")]


@pytest.fixture
def loop(tmp_path: Path) -> Loop:
    (tmp_path / "t.xml").write_text("<domain/>")
    (tmp_path / "hpc.yaml").write_text(MANIFEST)
    cloud: Cloud = load_cloud(tmp_path / "hpc.yaml", CATALOG)
    active: set[str] = set()

    async def set_active(names: Collection[str]) -> None:
        active.clear()
        active.update(names)

    sched, clock = Scheduler(), FakeClock()
    events = EventLog(tmp_path / "events.sqlite3")
    term: list[int | None] = [3]
    cluster = ClusterView(cloud="hpc", nodes=())
    where: dict[str, str] = {}
    drains: list[Drains] = [Drains()]
    ready: set[str] = set()
    el = ElasticLoop(cloud=lambda: cloud, active=lambda: active, set_active=set_active,
                     term=lambda: term[0], cluster=lambda: cluster,
                     provider=lambda _: sched, events=events, drains=lambda: drains[0],
                     where=lambda: where, ready=lambda: frozenset(ready), clock=clock)
    return Loop(el, sched, active, clock, events, term, where, drains, ready)


def use(**nodes: NodeUse) -> Mapping[str, NodeUse]:
    return {name.replace("_", "-"): u for name, u in nodes.items()}


IDLE, BUSY = NodeUse(ready=True), NodeUse(ready=True, busy=True)


async def test_a_new_cloud_gets_its_minimum_even_before_its_scheduler_answers(
        loop: Loop) -> None:
    loop.sched.down = True
    await loop.loop.step()
    assert loop.active == {"hpc-compute-1"}
    assert loop.reasons() == ["take hpc-compute-1: below the role's minimum of 1"]
    [finding] = loop.loop.findings()
    assert (finding.check, finding.ok, finding.message) == (
        "elastic compute", False, "1 node(s) in use, of 1 to 3")
    assert finding.state == ("no word from the scheduler: slurmctld on hpc-head-1 did not "
                             "answer")


async def test_a_burst_grows_then_idleness_drains_and_removes(loop: Loop) -> None:
    await loop.loop.step()
    loop.sched.demand_now = Demand(2, 2, 4, use(hpc_compute_1=BUSY))
    await loop.loop.step()
    assert loop.active == {"hpc-compute-1", "hpc-compute-2", "hpc-compute-3"}
    assert loop.reasons()[-1] == ("take hpc-compute-3: 2 job(s) wait for nodes, asking 2 "
                                  "node(s) and 4 CPU(s)")
    # The jobs run, then end: after idle_after (and the cool-down) the newest drain first.
    everyone = use(hpc_compute_1=IDLE, hpc_compute_2=IDLE, hpc_compute_3=IDLE)
    loop.sched.demand_now = Demand(use=everyone)
    await loop.loop.step()
    loop.clock.advance(61)
    await loop.loop.step()
    assert loop.sched.calls == [("release", "hpc-compute-3"), ("release", "hpc-compute-2")]
    assert loop.active == {"hpc-compute-1", "hpc-compute-2", "hpc-compute-3"}
    [finding] = loop.loop.findings()
    assert finding.state == "draining to leave: hpc-compute-2, hpc-compute-3"
    # Drained by the scheduler, no job left: they leave the nodes in use.
    loop.sched.demand_now = Demand(use=use(
        hpc_compute_1=IDLE, hpc_compute_2=NodeUse(released=True),
        hpc_compute_3=NodeUse(released=True)))
    await loop.loop.step()
    assert loop.active == {"hpc-compute-1"}
    assert loop.reasons()[-2:] == [
        "leave hpc-compute-2: drained in the scheduler, no job left",
        "leave hpc-compute-3: drained in the scheduler, no job left"]


async def test_plan_shows_each_role_s_state_and_the_last_decisions(loop: Loop) -> None:
    await loop.loop.step()
    loop.clock.advance(5)
    loop.sched.demand_now = Demand(1, 1, 2, use(hpc_compute_1=BUSY))
    await loop.loop.step()
    view = loop.loop.view()
    assert [(f.check, f.message, f.state) for f in view.roles] == [
        ("elastic compute", "2 node(s) in use, of 1 to 3", "following the queue")]
    assert [(d.term, d.change.what, d.change.node, d.change.reason) for d in view.decisions] == [
        (3, "take", "hpc-compute-1", "below the role's minimum of 1"),
        (3, "take", "hpc-compute-2", "1 job(s) wait for nodes, asking 1 node(s) and 2 CPU(s)")]
    assert view.decisions[1].at - view.decisions[0].at == 5
    # Not leading: no role state; the decisions made while it led stay for the operator.
    loop.term[0] = None
    assert loop.loop.view().roles == () and len(loop.loop.view().decisions) == 2


async def test_a_batch_node_on_a_drained_host_is_drained_to_move_then_resumed(
        loop: Loop) -> None:
    await loop.loop.step()  # the minimum: hpc-compute-1, on pm1
    loop.where["hpc-compute-1"] = "pm1"
    loop.sched.demand_now = Demand(use=use(hpc_compute_1=BUSY))
    loop.drains[0] = Drains((Drain("pm1"),))
    await loop.loop.step()
    assert loop.sched.calls == [("move", "hpc-compute-1")]
    assert loop.loop.emptied() == frozenset()  # its job still runs
    loop.sched.demand_now = Demand(use=use(hpc_compute_1=NodeUse(moving=True)))
    await loop.loop.step()
    assert loop.loop.emptied() == {"hpc-compute-1"}  # the planner may move it now
    # moved to pm2 and ready there: its drain is undone; nothing more to do
    loop.where["hpc-compute-1"] = "pm2"
    loop.ready.add("hpc-compute-1")
    await loop.loop.step()
    assert loop.sched.calls[-1] == ("keep", "hpc-compute-1")
    assert loop.loop.emptied() == frozenset()
    assert loop.reasons()[-2:] == [
        "drain hpc-compute-1: on a drained host: its jobs end before it moves",
        "keep hpc-compute-1: moved off its drained host (or the host undrained): it takes "
        "jobs again"]
    # the elastic role's accounting never took the moving node for one leaving
    assert loop.active == {"hpc-compute-1"}


async def test_a_moved_node_is_resumed_even_after_a_pass_the_scheduler_missed(
        loop: Loop) -> None:
    await loop.loop.step()
    loop.where["hpc-compute-1"] = "pm1"
    loop.drains[0] = Drains((Drain("pm1"),))
    loop.sched.demand_now = Demand(use=use(hpc_compute_1=NodeUse(moving=True)))
    await loop.loop.step()
    assert loop.loop.emptied() == {"hpc-compute-1"}
    # moved, the host undrained; the scheduler misses a pass; then answers: resumed
    loop.where["hpc-compute-1"] = "pm2"
    loop.drains[0] = Drains()
    loop.ready.add("hpc-compute-1")
    loop.sched.down = True
    await loop.loop.step()
    assert loop.loop.emptied() == frozenset()
    loop.sched.down = False
    await loop.loop.step()
    assert loop.sched.calls[-1] == ("keep", "hpc-compute-1")


async def test_nothing_happens_while_this_agent_does_not_lead(loop: Loop) -> None:
    loop.term[0] = None
    await loop.loop.step()
    assert loop.active == set() and loop.loop.findings() == ()


async def test_a_record_write_that_fails_changes_nothing_and_is_tried_again(
        loop: Loop) -> None:
    async def refuse(names: Collection[str]) -> None:
        raise TemporaryError("record version (3, 2) of hpc was persisted by 1 of 3 pool hosts")
    good = loop.loop._set_active
    loop.loop._set_active = refuse
    with pytest.raises(TemporaryError):
        await loop.loop.step()
    assert loop.active == set() and loop.reasons() == []
    loop.loop._set_active = good
    await loop.loop.step()
    assert loop.active == {"hpc-compute-1"}


async def test_a_fixed_batch_cloud_reads_its_scheduler_only_while_a_drain_needs_it(
        tmp_path: Path) -> None:
    (tmp_path / "t.xml").write_text("<domain/>")
    (tmp_path / "hpc.yaml").write_text(MANIFEST.replace(
        """    elastic: {min: 1, max: 3, idle_after: 60, cooldown: 30}
    template: {image: "/var/lib/cloudd/images/{name}.qcow2", vcpus: 2}
    addresses: 192.0.2.30-192.0.2.33""",
        "    - {address: 192.0.2.30, image: /var/lib/cloudd/images/c1.qcow2}"))
    cloud = load_cloud(tmp_path / "hpc.yaml", CATALOG)
    sched, drains = Scheduler(), [Drains()]

    async def nothing(names: Collection[str]) -> None:
        raise AssertionError("a fixed cloud has no nodes in use to write")
    el = ElasticLoop(cloud=lambda: cloud, active=frozenset, set_active=nothing,
                     term=lambda: 3, cluster=lambda: ClusterView(cloud="hpc", nodes=()),
                     provider=lambda _: sched, events=EventLog(tmp_path / "e.sqlite3"),
                     drains=lambda: drains[0], where=lambda: {"hpc-compute-1": "pm1"},
                     clock=FakeClock())
    sched.down = True
    await el.step()
    await el.step()  # no answer yet: asked again (a new leader finishes the last one's moves)
    sched.down = False
    await el.step()
    await el.step()
    assert sched.asked == 3 and el.findings() == ()
    drains[0] = Drains((Drain("pm1"),))
    sched.demand_now = Demand(use={"hpc-compute-1": IDLE})
    await el.step()
    assert sched.asked == 4 and sched.calls == [("move", "hpc-compute-1")]
    # a node held for maintenance stays where it is: its scheduler is not asked to drain it
    sched.calls.clear()
    el._held = lambda: {"hpc-compute-1"}
    await el.step()
    assert sched.calls == [] and el.emptied() == frozenset()
