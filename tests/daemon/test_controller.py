"""The leader's executor over real HostAgents: in-memory backends for the logic, libvirt's
`test:///default` driver for one pass against the real backend, real processes for fencing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudd.config.agent import Reconcile
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Migration
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.controller import Controller, LocalHosts, policy_of
from cloudd.daemon.leader.desired import desired_of
from cloudd.daemon.leader.fencing import CommandFencer
from cloudd.daemon.leader.imagecopy import copy_to_host
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import DomainEvent, FakeBackend, PowerState
from cloudd.vmctl.backend import DomainEventKind as EventKind_
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta, from_domain_xml, stamp_host
from cloudd.vmctl.plan import (
    BackoffPolicy,
    CopyImage,
    Define,
    Desired,
    Ensure,
    Fence,
    ImageSource,
    Liveness,
    NodeSpec,
    RunStrategy,
    Start,
)
from cloudd.vmctl.template import NodeDomain, render_domain

IMG = "/img/base.qcow2"
TEMPLATE = """<domain type='${kind}'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type></os>
  ${metadata}
</domain>"""


def render(spec: NodeSpec, term: int, *, kind: str = "kvm") -> str:
    meta = CloudMeta(cloud="c1", node=spec.name, role=spec.role, term=term)
    return render_domain(TEMPLATE, NodeDomain(meta=meta, memory_mib=spec.memory_mib, vcpus=1,
                                              image=spec.image, extra={"kind": kind}))


@dataclass
class Flaky:
    """A client in front of LocalHosts: cut hosts, and make chosen commands fail."""

    inner: LocalHosts
    cut: set[str] = field(default_factory=set)
    fail: dict[tuple[Op, str], int] = field(default_factory=dict)
    sent: list[tuple[str, Op, str, int]] = field(default_factory=list)

    async def call(self, host: str, command: HostCommand) -> HostResult:
        if host in self.cut:
            raise TemporaryError(f"connection to {host} refused")
        self.sent.append((host, command.op, command.domain, command.term))
        left = self.fail.get((command.op, command.domain), 0)
        if left:
            self.fail[(command.op, command.domain)] = left - 1
            return HostResult(command, CommandOutcome.FAILED, 0,
                              "qemu unexpectedly closed the monitor")
        return await self.inner.call(host, command)


@dataclass
class Pool:
    backends: dict[str, FakeBackend]
    client: Flaky
    live: dict[str, Liveness]
    events: EventLog
    clock: FakeClock
    term: list[int | None]
    nodes: list[NodeSpec]
    ensure: list[Ensure]
    controller: Controller

    def running(self) -> dict[str, str]:
        """node -> host, for running cloudd domains."""
        return {d.meta.node: h for h, b in self.backends.items() for d in b.domains.values()
                if d.meta is not None and d.state is PowerState.RUNNING}

    async def converge(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            await self.controller.pass_once()
            await self.controller.idle()


def make_pool(tmp_path: Path, *, hosts: int = 3, nodes: int = 4,
              fencer: CommandFencer | None = None,
              policy: BackoffPolicy | None = None) -> Pool:
    clock = FakeClock(monotonic=1000.0)
    backends = {f"h{i}": FakeBackend(clock=clock.monotonic, images=frozenset({IMG}))
                for i in range(hosts)}
    agents = {h: HostAgent(b, state_dir=tmp_path / h, host=h) for h, b in backends.items()}
    client = Flaky(LocalHosts(agents))
    live = dict.fromkeys(backends, Liveness.ALIVE)
    events = EventLog.in_state_dir(tmp_path)
    term: list[int | None] = [3]
    specs = [NodeSpec(f"n{i}", "db" if i == 0 else "web", 512, 1, IMG) for i in range(nodes)]
    ensure = [Ensure.RUNNING]
    controller = Controller(
        desired=lambda: Desired("c1", ensure[0], tuple(specs), ("db", "web")),
        hosts=lambda: sorted(backends), liveness=lambda m: live.get(m, Liveness.ALIVE),
        leader=lambda: term[0],
        client=client, events=events, render=render, fencer=fencer, clock=clock,
        policy=policy or BackoffPolicy(base=10.0, jitter=0.0, stable=600.0), resync=3600.0)
    return Pool(backends, client, live, events, clock, term, specs, ensure, controller)


@pytest.fixture
def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    p = make_pool(tmp_path)
    yield p
    p.events.close()


async def test_first_pass_places_every_node_spread_and_logs_why(pool: Pool) -> None:
    plan = await pool.controller.pass_once()
    assert plan is not None and [type(a) for a in plan.actions] == [Define, Start] * 4
    await pool.controller.idle()
    assert pool.running() == {"n0": "h0", "n1": "h1", "n2": "h2", "n3": "h0"}
    logged = pool.events.query(limit=100)
    assert [(e.kind, e.subject, e.term) for e in logged[:2]] == [
        (LogKind.ACTION, "n0", 3), (LogKind.ACTION, "n0", 3)]
    assert logged[0].reason == "define on h0: no domain anywhere"
    assert all(term == 3 for _, _, _, term in pool.client.sent)
    second = await pool.controller.pass_once()
    assert second is not None and second.actions == ()


async def test_a_follower_does_nothing(pool: Pool) -> None:
    pool.term[0] = None
    assert await pool.controller.pass_once() is None
    assert pool.client.sent == [] and pool.events.query() == []


async def test_crash_is_restarted_in_place_and_logged_as_restart(pool: Pool) -> None:
    await pool.converge()
    host = pool.running()["n1"]
    queue = pool.backends[host].subscribe()
    pool.backends[host].crash("c1-n1")
    pool.controller.domain_event(host, queue.get_nowait())
    await pool.converge(1)
    assert pool.running()["n1"] == host
    last = pool.events.query(limit=1)[0]
    assert (last.kind, last.subject) == (LogKind.RESTART, "n1")
    assert last.reason == f"start on {host}: shutoff (crashed); restarting in place"


async def test_guest_power_off_is_left_alone_under_rerun_on_failure(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, nodes=1)
    pool.nodes[0] = NodeSpec("n0", "db", 512, 1, IMG, run=RunStrategy.RERUN_ON_FAILURE)
    await pool.converge()
    queue = pool.backends["h0"].subscribe()
    await pool.client.call("h0", HostCommand(Op.SHUTDOWN, 3, "c1-n0"))
    pool.controller.domain_event("h0", queue.get_nowait())
    await pool.converge()
    assert pool.running() == {}
    pool.events.close()


async def test_failures_back_off_and_are_never_retried_inline(pool: Pool) -> None:
    pool.client.fail[(Op.START, "c1-n0")] = 2
    await pool.converge(1)
    fail = pool.events.query(kind=LogKind.FAILURE)
    assert [e.reason for e in fail] == [
        "start on h0 failed (1 in a row, next try in 10.0s): "
        "qemu unexpectedly closed the monitor"]
    starts = [s for s in pool.client.sent if s[1] is Op.START and s[2] == "c1-n0"]
    assert len(starts) == 1
    await pool.converge(3)  # same instant: backing off
    assert "n0" not in pool.running()
    assert [w.node for w in pool.controller.last_plan.waiting] == ["n0"]
    pool.clock.advance(10.0)
    await pool.converge(1)  # second failure: 20 s now
    assert pool.controller.node_fails.get("n0").count == 2  # type: ignore[union-attr]
    pool.clock.advance(20.0)
    await pool.converge(1)
    assert pool.running()["n0"] == "h0"
    pool.clock.advance(700.0)
    await pool.converge(1)
    assert pool.controller.node_fails.get("n0") is None  # stable: forgotten


async def test_deposed_leader_is_refused_and_changes_nothing(pool: Pool) -> None:
    for agent in pool.client.inner.agents.values():
        await agent.execute(HostCommand(Op.LIST, 7))
    await pool.converge(1)
    assert pool.running() == {}
    assert all(not b.domains for b in pool.backends.values())


async def test_stop_removes_only_this_clouds_domains(pool: Pool) -> None:
    pool.backends["h1"].add_foreign("operators-vm", running=True)
    await pool.converge()
    pool.ensure[0] = Ensure.STOPPED
    await pool.converge()
    assert {h: sorted(b.domains) for h, b in pool.backends.items()} == {
        "h0": [], "h1": ["operators-vm"], "h2": []}
    assert pool.backends["h1"].domains["operators-vm"].state is PowerState.RUNNING


async def test_dead_host_is_fenced_before_its_nodes_move(tmp_path: Path) -> None:
    marker = tmp_path / "fenced-h1"
    pool = make_pool(tmp_path, fencer=CommandFencer({"h1": ["touch", str(marker)]}))
    await pool.converge()
    pool.client.cut.add("h1")
    pool.live["h1"] = Liveness.SUSPECT
    await pool.converge()
    assert pool.running()["n1"] == "h1"  # suspect: wait, never move
    pool.live["h1"] = Liveness.DEAD
    plan = await pool.controller.pass_once()
    assert plan is not None and plan.actions == (
        Fence("h1", "host is dead by quorum and runs n1"),)
    await pool.controller.idle()
    assert marker.exists()
    await pool.converge()
    moved = {n: h for n, h in pool.running().items() if h != "h1"}
    assert set(moved) == {"n0", "n1", "n2", "n3"}
    assert [e.reason for e in pool.events.query(kind=LogKind.ACTION) if e.subject == "h1"] \
        == ["fenced: host is dead by quorum and runs n1"]
    pool.events.close()


async def test_a_failed_fence_keeps_the_node_where_it_was(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, fencer=CommandFencer({"h1": ["sh", "-c", "echo no power >&2;"
                                                                       " exit 3"]}))
    await pool.converge()
    pool.client.cut.add("h1")
    pool.live["h1"] = Liveness.DEAD
    await pool.converge()
    assert "n1" not in {n for n, h in pool.running().items() if h != "h1"}
    [fail] = pool.events.query(kind=LogKind.FAILURE)
    assert fail.reason == "fence failed (1 in a row): fence command for h1 exited 3: no power"
    pool.events.close()


async def test_command_fencer_errors_are_precise() -> None:
    with pytest.raises(PermanentError, match="no fence command configured for host h9"):
        await CommandFencer({}).fence("h9")
    with pytest.raises(TemporaryError, match=r"did not finish within 0\.2s"):
        await CommandFencer({"h1": ["sleep", "30"]}, timeout=0.2).fence("h1")
    await CommandFencer({"h1": ["true"]}).fence("h1")


async def test_run_loop_passes_on_a_poke(pool: Pool) -> None:
    follow = pool.events.follow()
    task = asyncio.create_task(pool.controller.run())
    try:
        pool.controller.poke()
        async with asyncio.timeout(10):  # resync is an hour: only the poke can do this
            for _ in range(8):  # define and start of four nodes
                await anext(follow)
        assert len(pool.running()) == 4
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_passes_against_libvirt_test_driver(tmp_path: Path) -> None:
    """A real HostAgent over a real libvirt connection (`test:///default`, which is one shared
    world per process, hence one host): place, see a domain die through the forwarded event,
    restart it, never touch the driver's own domain."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "base.qcow2").write_bytes(b"")
    img = str(images / "base.qcow2")
    backend = await LibvirtBackend.open("test:///default", call_timeout=10.0,
                                        image_dirs=(images,))
    events = EventLog.in_state_dir(tmp_path)
    agent = HostAgent(backend, state_dir=tmp_path / "h0", host="h0")
    # the test driver reports 3 MiB free (its KiB figure taken as bytes): tiny nodes
    specs = (NodeSpec("n0", "web", 1, 1, img), NodeSpec("n1", "web", 1, 1, img))
    controller = Controller(
        desired=lambda: Desired("c1", Ensure.RUNNING, specs),
        hosts=lambda: ["h0"], liveness=lambda h: Liveness.ALIVE, leader=lambda: 1,
        client=LocalHosts({"h0": agent}), events=events,
        render=lambda s, t: render(s, t, kind="test"))
    died = asyncio.Event()

    def forward_event(event: DomainEvent) -> None:
        controller.domain_event("h0", event)
        if event.kind is EventKind_.STOPPED:
            died.set()

    forward = asyncio.create_task(agent.run_events(forward_event))
    try:
        for _ in range(2):
            await controller.pass_once()
            await controller.idle()
        listed = await backend.list()
        assert [(d.name, d.meta.node, d.state) for d in listed] == [
            ("c1-n0", "n0", PowerState.RUNNING), ("c1-n1", "n1", PowerState.RUNNING)]
        assert await backend.destroy("c1-n1")  # the VM dies behind cloudd's back
        async with asyncio.timeout(10):
            await died.wait()
        plan = await controller.pass_once()
        assert plan is not None and plan.actions == (
            Start("n1", "h0", "shutoff (destroyed); restarting in place", respawn=True),)
        await controller.idle()
        assert [d.state for d in await backend.list()] == [PowerState.RUNNING] * 2
        last = events.query(limit=1)[0]
        assert (last.kind, last.reason) == (
            LogKind.RESTART, "start on h0: shutoff (destroyed); restarting in place")
        # the driver's own `test` domain has no cloudd metadata: still there, still running
        assert backend._conn is not None and backend._conn.lookupByName("test").isActive()
    finally:
        forward.cancel()
        for b in (await backend.list()):
            with contextlib.suppress(Exception):
                await backend.destroy(b.name)
            await backend.undefine(b.name)
        events.close()
        await backend.close()


async def test_a_new_leader_places_nothing_while_a_host_never_answered(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, fencer=CommandFencer({"h1": ["true"]}))
    pool.client.cut.add("h1")  # its domains are unknown to this leader
    await pool.converge()
    assert pool.running() == {}
    assert {w.reason for w in pool.controller.last_plan.waiting} == {
        "domains of host h1 are unknown"}
    pool.live["h1"] = Liveness.DEAD
    await pool.converge()
    assert set(pool.running()) == {"n0", "n1", "n2", "n3"}
    assert "h1" not in pool.running().values()
    pool.events.close()


async def test_actions_stop_when_leadership_is_lost_mid_chain(pool: Pool) -> None:
    real = pool.client.inner.call

    async def depose_after_define(host: str, command: HostCommand) -> HostResult:
        result = await real(host, command)
        if command.op is Op.DEFINE:
            pool.term[0] = None
        return result

    pool.client.inner.call = depose_after_define  # type: ignore[method-assign]
    await pool.controller.pass_once()
    await pool.controller.idle()
    # each launched chain checks leadership before every action: after the first define,
    # nothing more is sent
    assert [op for _, op, _, _ in pool.client.sent if op not in (Op.LIST, Op.INVENTORY)] == [
        Op.DEFINE]
    assert pool.running() == {}


@dataclass
class PowerSwitch:
    """The fence device of the in-memory pool: powers a host's VMs off, as a PDU would."""

    backends: dict[str, FakeBackend]

    async def fence(self, host: str) -> None:
        for dom in self.backends[host].domains.values():
            dom.state = PowerState.STOPPED


async def test_a_fenced_host_that_comes_back_loses_its_stale_copies(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)
    pool.controller.fencer = PowerSwitch(pool.backends)
    await pool.converge()
    pool.client.cut.add("h2")
    pool.live["h2"] = Liveness.DEAD
    await pool.converge()
    moved = pool.running()
    assert "h2" not in moved.values() and len(moved) == 4
    pool.live["h2"] = Liveness.ALIVE  # gossip hears it before the leader can reach it
    await pool.converge()
    assert pool.running() == moved
    forgotten: list[str] = []
    pool.controller.undefined = forgotten.append
    pool.client.cut.discard("h2")
    await pool.converge()
    assert pool.running() == moved
    # the stale copies were undefined, but their nodes run elsewhere: nothing is forgotten
    assert forgotten == []
    assert [sorted(b.domains) for b in pool.backends.values()] == [
        sorted(f"c1-{n}" for n, h in moved.items() if h == name) for name in pool.backends]
    pool.events.close()


# -- copying a missing image from a source host ------------------------------------------------

@dataclass
class Copier:
    """Host agents' FETCH, in memory: PENDING `pending` times per copy, then the image appears
    in the target's inventory, copied from the backend whose address is `source`."""

    inner: Flaky
    backends: dict[str, FakeBackend]
    pending: int = 2
    fail: list[HostResult] = field(default_factory=list)
    fetches: list[tuple[str, str, str, int]] = field(default_factory=list)
    _left: dict[tuple[str, str], int] = field(default_factory=dict)

    async def call(self, host: str, command: HostCommand) -> HostResult:
        if command.op is not Op.FETCH:
            return await self.inner.call(host, command)
        self.fetches.append((host, command.image, command.source, command.term))
        self.inner.sent.append((host, command.op, command.image, command.term))
        if self.fail:
            return self.fail.pop(0)
        source = self.backends[command.source.removeprefix("addr-")]
        if command.image not in source.images:
            return HostResult(command, CommandOutcome.FAILED, 0, f"{command.source} has no image")
        left = self._left.setdefault((host, command.image), self.pending)
        if left:
            self._left[(host, command.image)] = left - 1
            return HostResult(command, CommandOutcome.PENDING, command.term, "copying")
        target = self.backends[host]
        changed = command.image not in target.images
        target.images = target.images | {command.image}
        outcome = CommandOutcome.DONE if changed else CommandOutcome.NOOP
        return HostResult(command, outcome, command.term)


def copy_pool(tmp_path: Path) -> tuple[Pool, Copier]:
    """h0 alone has the image; n1 and n2 are pinned to h1 and h2 and name h0 as their source."""
    pool = make_pool(tmp_path, nodes=0)
    for name in ("h1", "h2"):
        pool.backends[name].images = frozenset()
    pool.nodes[:] = [NodeSpec(f"n{i}", "web", 512, 1, IMG, pin=f"h{i}",
                              source=ImageSource("h0", "addr-h0")) for i in (1, 2)]
    copier = Copier(pool.client, pool.backends)
    pool.controller.client = copier
    pool.controller.fetch = lambda host, spec: copy_to_host(
        copier, host, spec, term=lambda: pool.term[0], pause=0.0)
    return pool, copier


async def test_a_missing_image_is_copied_before_the_define(tmp_path: Path) -> None:
    pool, copier = copy_pool(tmp_path)
    plan = await pool.controller.pass_once()
    assert plan is not None
    assert [type(a) for a in plan.actions] == [CopyImage, Define, Start] * 2
    await pool.controller.idle()
    assert pool.running() == {"n1": "h1", "n2": "h2"}
    # three FETCHes per host (two PENDING answers), all in the leader's term, then the define
    assert sorted(copier.fetches) == sorted([(h, IMG, "addr-h0", 3) for h in ("h1", "h2")] * 3)
    for name in ("h1", "h2"):
        ops = [op for h, op, _, _ in pool.client.sent
               if h == name and op not in (Op.LIST, Op.INVENTORY)]
        assert ops == [Op.FETCH, Op.FETCH, Op.FETCH, Op.DEFINE, Op.START]
    reasons = [e.reason for e in pool.events.query(limit=100) if e.subject == "n1"]
    assert f"copyimage on h1: h1 lacks {IMG}; h0 has it" in reasons
    again = await pool.controller.pass_once()
    assert again is not None and again.actions == ()
    pool.events.close()


async def test_a_failed_copy_backs_off_the_node_and_defines_nothing(tmp_path: Path) -> None:
    pool, copier = copy_pool(tmp_path)
    pool.nodes[:] = pool.nodes[:1]
    refused = HostResult(HostCommand(Op.FETCH, 3), CommandOutcome.FAILED, 3,
                         "copying /img/base.qcow2 from addr-h0:22 failed: refused",
                         retry_after=5.0)
    copier.fail.append(refused)
    await pool.converge(1)
    assert [e.reason for e in pool.events.query(kind=LogKind.FAILURE)] == [
        "copyimage on h1 failed (1 in a row, next try in 10.0s): copy of /img/base.qcow2 from "
        "h0 to h1: copying /img/base.qcow2 from addr-h0:22 failed: refused"]
    assert not [s for s in pool.client.sent if s[1] is Op.DEFINE]
    assert pool.controller.host_fails.get("h1") is None  # the source may be at fault
    await pool.converge(2)  # same instant: backing off, no second copy
    assert len(copier.fetches) == 1
    pool.clock.advance(10.0)
    await pool.converge(2)
    assert pool.running() == {"n1": "h1"}
    pool.events.close()


async def test_a_copy_stops_when_leadership_is_lost(tmp_path: Path) -> None:
    pool, copier = copy_pool(tmp_path)
    pool.nodes[:] = pool.nodes[:1]
    real = copier.call

    async def depose_while_pending(host: str, command: HostCommand) -> HostResult:
        result = await real(host, command)
        if result.outcome is CommandOutcome.PENDING:
            pool.term[0] = None
        return result

    copier.call = depose_while_pending  # type: ignore[method-assign]
    await pool.controller.pass_once()
    await pool.controller.idle()
    assert len(copier.fetches) == 1
    assert not [s for s in pool.client.sent if s[1] is Op.DEFINE]
    pool.events.close()


async def test_copy_to_host_refusals_are_precise(tmp_path: Path) -> None:
    pool, copier = copy_pool(tmp_path)
    spec = NodeSpec("x", "web", 512, 1, IMG)
    with pytest.raises(PermanentError, match="node x has no source host"):
        await copy_to_host(copier, "h1", spec, term=lambda: 3)
    spec = NodeSpec("x", "web", 512, 1, IMG, source=ImageSource("h0", "addr-h0"))
    copier.fail.append(HostResult(HostCommand(Op.FETCH, 3), CommandOutcome.FAILED, 3,
                                  "host key of addr-h0:22 is not in /etc/cloudd/ssh/known_hosts"))
    with pytest.raises(PermanentError, match=r"^copy of /img/base\.qcow2 from h0 to h1: host key"):
        await copy_to_host(copier, "h1", spec, term=lambda: 3)
    copier.pending = 10**9  # a host that never finishes: bounded by the limit
    with pytest.raises(TemporaryError, match=r"did not finish within 0\.05s"):
        await copy_to_host(copier, "h1", spec, term=lambda: 3, limit=0.05, pause=0.0)
    pool.controller.fetch = None
    await pool.converge(1)
    assert [e.reason.split(": ")[-1] for e in pool.events.query(kind=LogKind.FAILURE)] == [
        "no image copy configured"] * 2
    pool.events.close()


def test_the_manifest_source_host_reaches_the_planner_with_its_address(tmp_path: Path) -> None:
    (tmp_path / "t.xml").write_text("<domain/>")
    path = tmp_path / "c1.yaml"
    path.write_text("""\
apiVersion: cloudd/v1
kind: Cloud
name: c1
type: torque
domain_template: t.xml
pool:
  - {name: pm1, address: 192.0.2.70}
  - {name: pm2, address: 192.0.2.71}
roles:
  head: [{address: 192.0.2.10, image: /i/h.qcow2}]
  compute:
    - {address: 192.0.2.11, image: /i/c1.qcow2, base_image: /i/base.qcow2, overlay: true,
       source_host: pm2}
""")
    head, compute = desired_of(load_cloud(path, CATALOG)).nodes
    assert head.source is None
    assert compute.source == ImageSource("pm2", "192.0.2.71")
    assert compute.copied_image == "/i/base.qcow2"


# -- the agent's `reconcile` settings reach the controller ---------------------------------------

def settings_pool(tmp_path: Path, **reconcile: float) -> Pool:
    """One node whose start keeps failing, under the controller built from these settings."""
    pool = make_pool(tmp_path, nodes=1, policy=policy_of(Reconcile(**reconcile)))
    pool.client.fail[(Op.START, "c1-n0")] = 10**6
    return pool


def start_attempts(pool: Pool) -> int:
    return sum(1 for _, op, domain, _ in pool.client.sent if op is Op.START and domain == "c1-n0")


@pytest.mark.parametrize(("base", "retried"), [(10.0, True), (40.0, False)])
async def test_backoff_base_sets_the_first_wait(tmp_path: Path, base: float,
                                                retried: bool) -> None:
    pool = settings_pool(tmp_path, backoff_base=base, backoff_max=300.0)
    await pool.converge(1)
    assert start_attempts(pool) == 1
    pool.clock.advance(13.0)  # past 10 s with any jitter; far from 40 s with any jitter
    await pool.converge(1)
    assert start_attempts(pool) == (2 if retried else 1)
    pool.events.close()


@pytest.mark.parametrize(("cap", "retried"), [(4.0, True), (300.0, False)])
async def test_backoff_max_caps_the_wait(tmp_path: Path, cap: float, retried: bool) -> None:
    pool = settings_pool(tmp_path, backoff_base=1.0, backoff_max=cap)
    for attempt in range(1, 6):  # five failures, waiting out each wait but the last
        await pool.converge(1)
        assert start_attempts(pool) == attempt
        record = pool.controller.node_fails.get("n0")
        assert record is not None and record.count == attempt
        if attempt < 5:
            pool.clock.advance(record.not_before - pool.clock.monotonic())
    # the wait after the fifth failure: 16 s nominal, or the cap (4 s, whatever the jitter)
    pool.clock.advance(5.5)
    await pool.converge(1)
    assert start_attempts(pool) == (6 if retried else 5)
    pool.events.close()


@pytest.mark.parametrize(("stable", "count"), [(100.0, 1), (1000.0, 2)])
async def test_stable_reset_is_when_failures_are_forgotten(tmp_path: Path, stable: float,
                                                          count: int) -> None:
    pool = settings_pool(tmp_path, backoff_base=1.0, backoff_max=300.0, stable_reset=stable)
    pool.client.fail[(Op.START, "c1-n0")] = 1
    await pool.converge(1)  # fails once
    pool.clock.advance(2.0)
    await pool.converge(1)  # starts
    assert pool.running() == {"n0": "h0"}
    pool.clock.advance(150.0)  # runs 150 s: stable under the short period only
    await pool.converge(1)
    queue = pool.backends["h0"].subscribe()
    pool.client.fail[(Op.START, "c1-n0")] = 1
    pool.backends["h0"].crash("c1-n0")
    pool.controller.domain_event("h0", queue.get_nowait())
    await pool.converge(1)
    last = pool.events.query(kind=LogKind.FAILURE, limit=1)[0]
    assert f"({count} in a row," in last.reason
    pool.events.close()


def test_policy_of_takes_each_setting() -> None:
    policy = policy_of(Reconcile(backoff_base=2.0, backoff_max=90.0, stable_reset=45.0))
    assert (policy.base, policy.cap, policy.stable) == (2.0, 90.0, 45.0)


async def test_a_stepped_wall_clock_moves_no_duration(pool: Pool) -> None:
    """Backoff runs on the monotonic clock: an NTP step of the wall clock changes nothing;
    the event log's rows carry wall time."""
    pool.client.fail[(Op.START, "c1-n0")] = 1
    await pool.converge(1)
    pool.clock.step_wall(3600.0)
    await pool.converge(1)
    assert "n0" not in pool.running()  # still backing off
    pool.clock.advance(10.0)
    await pool.converge(1)
    assert pool.running()["n0"] == "h0"
    times = [e.time for e in pool.events.query(limit=100)]
    assert min(times) >= 1_700_000_000.0


async def test_actions_in_flight_end_with_the_controller(pool: Pool) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    real = pool.client.inner.call

    async def slow(host: str, command: HostCommand) -> HostResult:
        if command.op is Op.DEFINE:
            started.set()
            try:
                await release.wait()
            finally:
                for _ in range(3):  # a host call takes a few steps to wind down
                    await asyncio.sleep(0)
        return await real(host, command)

    pool.client.inner.call = slow  # type: ignore[method-assign]
    run = asyncio.create_task(pool.controller.run())
    pool.controller.poke()
    async with asyncio.timeout(10):
        await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("node-"))
    pool.events.close()


async def test_a_drained_host_is_emptied_and_its_nodes_old_reports_forgotten(
        pool: Pool) -> None:
    await pool.converge()
    on_h1 = sorted(n for n, h in pool.running().items() if h == "h1")
    assert on_h1
    forgotten: list[str] = []
    base = pool.controller.desired()
    pool.controller.desired = lambda: dataclasses.replace(base, drained=frozenset({"h1"}))
    pool.controller.ready = lambda: frozenset(pool.running())  # running is ready here
    pool.controller.undefined = forgotten.append
    for _ in range(12):
        await pool.converge(1)
        pool.clock.advance(61.0)  # a guest that ignores the shutdown is destroyed
    assert "h1" not in pool.running().values()
    assert set(pool.running()) == {n.name for n in pool.nodes}
    assert sorted(forgotten) == on_h1
    moves = [e.reason for e in pool.events.query(kind=LogKind.ACTION, limit=100)
             if e.reason.startswith("shutdown on h1")]
    assert len(moves) == len(on_h1)


async def test_a_drained_host_sharing_storage_is_emptied_live(pool: Pool) -> None:
    await pool.converge()
    on_h1 = sorted(n for n, h in pool.running().items() if h == "h1")
    assert on_h1
    # h1 and h2 share storage `san` and take migrations; h0 does not
    shared = {h: Migration(f"fake://{h}", "san", f"192.0.2.{i}") for i, h in
              ((1, "h1"), (2, "h2"))}
    for h in shared:
        pool.backends[h].peers.update({o.uri: pool.backends[o_h] for o_h, o in shared.items()
                                       if o_h != h})
    pool.controller.migration = shared.get
    forgotten: list[str] = []
    base = pool.controller.desired()
    pool.controller.desired = lambda: dataclasses.replace(
        base, drained=frozenset({"h1"}), move_stateful=frozenset({"h1"}),
        storage={h: m.storage for h, m in shared.items()})
    pool.controller.ready = lambda: frozenset(pool.running())
    pool.controller.undefined = forgotten.append
    await pool.converge(len(on_h1) + 2)
    assert pool.running() == {**pool.running(), **dict.fromkeys(on_h1, "h2")}
    assert set(pool.running()) == {n.name for n in pool.nodes} and forgotten == []
    # live: never stopped, never started again, the metadata names the host it runs on
    calls = {c for b in pool.backends.values() for c in b.calls}
    assert not {("shutdown", f"c1-{n}") for n in on_h1} & calls
    assert all(pool.backends["h2"].domains[f"c1-{n}"].meta.host == "h2"  # type: ignore[union-attr]
               for n in on_h1)
    moves = [e.reason for e in pool.events.query(kind=LogKind.ACTION, limit=100)
             if e.reason.startswith("migrate on h1")]
    assert len(moves) == len(on_h1)
    assert moves[0].endswith("live to h2 (storage san is shared)")


async def test_a_node_the_hosts_report_migrating_is_left_alone_by_any_leader(
        pool: Pool) -> None:
    """A move started by another leader: the source runs the guest, the target holds it
    incoming; both lists say it migrates, so this leader neither dedupes nor restarts it."""
    await pool.converge()
    node, host = next(iter(sorted(pool.running().items())))
    other = next(h for h in sorted(pool.backends) if h != host)
    source = pool.backends[host].domains[f"c1-{node}"]
    source.migrating = True
    incoming = stamp_host(source.xml, other)  # the target's name in it, as libvirt sends it
    pool.backends[other].domains[f"c1-{node}"] = dataclasses.replace(
        source, xml=incoming, meta=from_domain_xml(incoming),
        state=PowerState.STOPPED)  # paused there, not running yet
    before = {c for b in pool.backends.values() for c in b.calls}
    plan = await pool.controller.pass_once()
    assert plan is not None and all(getattr(a, "node", "") != node for a in plan.actions)
    assert {c for b in pool.backends.values() for c in b.calls} == before
    # the move ended: the target runs it, the source has it no more; one copy, left alone
    del pool.backends[host].domains[f"c1-{node}"]
    pool.backends[other].domains[f"c1-{node}"].state = PowerState.RUNNING
    plan = await pool.controller.pass_once()
    assert plan is not None and all(getattr(a, "node", "") != node for a in plan.actions)


async def test_a_failed_migration_backs_off_then_the_node_moves_by_stop_and_re_place(
        pool: Pool) -> None:
    await pool.converge()
    on_h1 = sorted(n for n, h in pool.running().items() if h == "h1")
    shared = {"h1": Migration("fake://h1", "san", "192.0.2.1"),
              "h2": Migration("fake://h2", "san", "192.0.2.2")}  # h2's hypervisor: not there
    pool.controller.migration = shared.get
    base = pool.controller.desired()
    pool.controller.desired = lambda: dataclasses.replace(
        base, drained=frozenset({"h1"}), storage={"h1": "san", "h2": "san"})
    pool.controller.ready = lambda: frozenset(pool.running())
    await pool.converge(1)
    failures = [e.reason for e in pool.events.query(kind=LogKind.FAILURE, limit=10)]
    assert len(failures) == 1 and failures[0].startswith("migrate on h1 failed (1 in a row")
    assert "no hypervisor answers at fake://h2" in failures[0]
    for _ in range(12):
        pool.clock.advance(61.0)
        await pool.converge(1)
    assert "h1" not in pool.running().values()
    first = on_h1[0]
    assert any(e.reason.startswith(f"shutdown on h1: host h1 is drained: moving {first}")
               for e in pool.events.query(kind=LogKind.ACTION, limit=100))


async def test_a_host_lost_mid_migration_is_fenced_and_its_node_re_placed(
        tmp_path: Path) -> None:
    """Its last report said the domain was migrating: that report holds nothing in flight
    once the host no longer answers, so the node moves as after any host's death."""
    marker = tmp_path / "fenced-h1"
    pool = make_pool(tmp_path, fencer=CommandFencer({"h1": ["touch", str(marker)]}))
    await pool.converge()
    pool.backends["h1"].domains["c1-n1"].migrating = True
    await pool.controller.pass_once()
    pool.client.cut.add("h1")
    pool.live["h1"] = Liveness.DEAD
    plan = await pool.controller.pass_once()
    assert plan is not None and plan.actions == (
        Fence("h1", "host is dead by quorum and runs n1"),)
    await pool.controller.idle()
    await pool.converge()
    assert pool.running()["n1"] != "h1" and marker.exists()
    pool.events.close()
