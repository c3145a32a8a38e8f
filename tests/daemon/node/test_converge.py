"""NodeSide in-process, with a fake supervisor, a provider of our own and a FakeClock.

No process is started and no time passes unless the test moves the clock: the heartbeat and
the converge backoff are far longer than any test, so every loop turn comes from an input
(an assignment, a service change, a stop) and what the clock says decides what it does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
import structlog

from cloudd.backoff import Backoff
from cloudd.config.agent import AgentSettings, Reconcile
from cloudd.config.model import Cloud, Ensure, Node, PoolHost
from cloudd.config.plain import Plain
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, PeerInfo, RoleAssignment
from cloudd.daemon.node.converge import CONVERGE_JITTER, NodeSide, node_root
from cloudd.daemon.node.saved_assignment import load_assignment
from cloudd.errors import PermanentError
from cloudd.providers.base import Assignment, Provider, Role
from cloudd.providers.policy import PolicyConfig, State
from cloudd.providers.registry import Registry
from cloudd.providers.service import ServiceSpec
from cloudd.providers.supervisor import ServiceStatus

P = NodePhase
#: Fake seconds: longer than any test, so only the test's clock moves make them pass.
HEARTBEAT = 600.0
BACKOFF = 3600.0
SEED = 11


async def until(check: Callable[[], bool], what: str) -> None:
    """Let the loop (and the one worker thread that copies secrets) run until `check`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.001)


class FakeSupervisor:
    """The supervisor's interface over a dictionary the test changes with `set`."""

    def __init__(self, specs: tuple[ServiceSpec, ...], *, state_dir: Path,
                 defaults: PolicyConfig, node: str) -> None:
        self.specs, self.state_dir = specs, state_dir
        self.states = {s.name: ServiceStatus(s.name, State.STOPPED, None, False, 0, 0, "",
                                             False) for s in specs}
        self.calls: list[str] = []
        self.detached = False
        #: One gate per stop call to come: that call waits for it with the services STOPPING.
        self.gates: list[asyncio.Event] = []
        self._changed = asyncio.Event()

    def set(self, name: str, state: State, *, ready: bool = False, error: str = "") -> None:
        old = self.states[name]
        pid = None if state in (State.STOPPED, State.BACKOFF, State.FATAL) else 100 + old.starts
        self.states[name] = replace(old, state=state, pid=pid, ready=ready, last_error=error,
                                    starts=old.starts + (state is State.STARTING))
        self._changed.set()
        self._changed = asyncio.Event()

    async def start(self, names: Iterable[str] | None = None) -> None:
        chosen = list(self.states if names is None else names)
        self.calls.append(f"start {','.join(chosen)}")
        for name in chosen:
            self.set(name, State.STARTING)

    async def stop(self, names: Iterable[str] | None = None, *, within: float = 60.0) -> None:
        self.calls.append("stop")
        for name in reversed(list(self.states)):
            self.set(name, State.STOPPING)
        if self.gates:
            await self.gates.pop(0).wait()
        for name in reversed(list(self.states)):
            self.set(name, State.STOPPED)

    async def restart(self, name: str) -> None:
        self.calls.append(f"restart {name}")
        self.set(name, State.STARTING)

    async def reload(self, name: str, *, within: float = 30.0) -> None:
        self.calls.append(f"reload {name}")

    def detach(self) -> None:
        self.detached = True

    def status(self) -> dict[str, ServiceStatus]:
        return dict(self.states)

    async def wait_for(self, name: str, predicate: Callable[[ServiceStatus], bool], *,
                       within: float) -> ServiceStatus:
        async with asyncio.timeout(within):
            while not predicate(self.states[name]):
                await self._changed.wait()
        return self.states[name]


class AppRole(Role):
    """One service, `app`; `prepare` fails `failures` times, or waits while `hold` is clear."""

    name = "app"

    def __init__(self) -> None:
        self.failures = 0
        self.prepared = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.cancelled = False

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        return (ServiceSpec(name="app", argv=("app", str(a.setting("port", 0)))),)

    async def prepare(self, a: Assignment) -> None:
        self.prepared += 1
        try:
            await self.hold.wait()
        except asyncio.CancelledError:
            for _ in range(10):  # a cleanup that takes a few turns of the loop
                await asyncio.sleep(0)
            self.cancelled = True
            raise
        if self.failures > 0:
            self.failures -= 1
            raise PermanentError("prepare is broken")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AppSettings(Plain):
    port: int = 1


class AppProvider(Provider):
    cloud_type = "fake"

    def __init__(self, role: AppRole) -> None:
        self.roles = {"app": role}


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.role = AppRole()
        self.clock = FakeClock()
        self.cloud = Cloud(
            name="t", type="fake", ensure=Ensure.RUNNING, source=tmp_path / "t.yaml",
            digest="gen1", domain_template=tmp_path / "t.xml",
            pool=(PoolHost("pm1", "127.0.0.1"),), roles=("app",),
            nodes=(Node("n1", "app", 1, "127.0.0.1", None, 64, 1, managed=False),),
            settings=AppSettings(), secrets={})
        self.settings = AgentSettings(name="n1", state_dir=tmp_path / "state",
                                      reconcile=Reconcile(backoff_base=BACKOFF,
                                                          backoff_max=BACKOFF))
        self.reports: list[NodeReport] = []
        self.sups: list[FakeSupervisor] = []
        self.side = self.new_side()
        self.task: asyncio.Task[None] | None = None

    def new_side(self) -> NodeSide:
        def factory(specs: tuple[ServiceSpec, ...], *, state_dir: Path,
                    defaults: PolicyConfig, node: str) -> FakeSupervisor:
            sup = FakeSupervisor(specs, state_dir=state_dir, defaults=defaults, node=node)
            self.sups.append(sup)
            return sup

        return NodeSide(me="n1", cloud=self.cloud, settings=self.settings,
                        report=self.reports.append, registry=Registry([AppProvider(self.role)]),
                        clock=self.clock, heartbeat=HEARTBEAT, rng=random.Random(SEED),
                        supervisor_factory=factory)

    def start(self) -> None:
        self.task = asyncio.create_task(self.side.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def sup(self) -> FakeSupervisor:
        return self.sups[-1]

    def assignment(self, term: int = 1, peers: tuple[str, ...] = ()) -> RoleAssignment:
        return RoleAssignment(term=term, cloud="t", node="n1", role="app",
                              address=ip_address("127.0.0.1"), generation="gen1",
                              peers=tuple(PeerInfo(f"p{i}", "other", ip_address(addr), True)
                                          for i, addr in enumerate(peers)))

    def phases(self) -> list[NodePhase]:
        return [r.phase for r in self.reports]

    async def reported(self, phase: NodePhase, message: str | None = None) -> NodeReport:
        def last_is() -> bool:
            return bool(self.reports) and self.reports[-1].phase is phase and (
                message is None or self.reports[-1].message == message)

        await until(last_is, f"a {phase} report")
        return self.reports[-1]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.stop()


async def test_phases_from_assignment_to_stopped_stamped_with_wall_time(lab: Lab) -> None:
    lab.start()
    await asyncio.sleep(0)
    # unassigned, it says so (a leader holding its previous VM's report sends the role again)
    await lab.reported(P.UNASSIGNED)
    assert {(r.phase, r.generation) for r in lab.reports} == {(P.UNASSIGNED, "")}
    lab.reports.clear()
    t0 = lab.clock.wall()
    lab.side.assign(lab.assignment())
    await lab.reported(P.CONVERGING, "app STARTING")
    assert lab.sup.calls == ["start app"]
    assert lab.reports[0].phase is P.CONVERGING and lab.reports[0].since == t0

    lab.clock.advance(5)
    lab.sup.set("app", State.RUNNING, ready=True)
    ready = await lab.reported(P.READY)
    assert (ready.since, ready.message, ready.term) == (t0 + 5, "", 1)
    assert [(s.name, s.state, s.ready) for s in ready.services] == [("app", "RUNNING", True)]

    lab.clock.advance(5)
    lab.clock.step_wall(-3600)  # NTP steps the wall clock: only the stamps see it
    lab.sup.set("app", State.BACKOFF, error="exited with status 1")
    degraded = await lab.reported(P.DEGRADED, "app BACKOFF (exited with status 1)")
    assert degraded.since == t0 + 10 - 3600

    lab.sup.set("app", State.STARTING)
    await lab.reported(P.DEGRADED, "app STARTING")  # a changed message is a new report
    lab.sup.set("app", State.RUNNING, ready=True)
    await lab.reported(P.READY)

    gate = asyncio.Event()
    lab.sup.gates.append(gate)
    stopping = asyncio.create_task(lab.side.stop_services())
    await lab.reported(P.STOPPING)
    gate.set()
    await stopping
    await lab.reported(P.STOPPED)
    assert [(r.phase, r.message) for r in lab.reports] == [
        (P.CONVERGING, ""), (P.CONVERGING, "app STARTING"), (P.READY, ""),
        (P.DEGRADED, "app BACKOFF (exited with status 1)"), (P.DEGRADED, "app STARTING"),
        (P.READY, ""), (P.STOPPING, ""), (P.STOPPED, "")]
    assert lab.sup.calls == ["start app", "stop"]


async def test_heartbeat_and_converge_backoff_follow_the_monotonic_clock(lab: Lab) -> None:
    lab.role.failures = 1
    lab.start()
    with structlog.testing.capture_logs() as logs:
        lab.side.assign(lab.assignment())
        failed = await lab.reported(P.FAILED, "prepare is broken")
    (event,) = [e for e in logs if e["event"] == "node.converge_failed"]
    delay = Backoff(base=BACKOFF, cap=BACKOFF, jitter=CONVERGE_JITTER).delay(
        1, random.Random(SEED).random())
    assert event["retry_in"] == round(delay, 3) and event["failures"] == 1
    assert lab.role.prepared == 1 and lab.sups == []

    # A heartbeat is due, the retry not yet: the loop (woken by a manifest of the same
    # generation) sends the one and not the other.
    lab.clock.advance(HEARTBEAT)
    lab.side.update_cloud(lab.cloud)
    await until(lambda: len(lab.reports) == 2, "a heartbeat")
    assert lab.reports[1] == failed and lab.role.prepared == 1

    # A wall clock step moves no duration.
    lab.clock.step_wall(delay)
    lab.side.update_cloud(lab.cloud)
    for _ in range(50):
        await asyncio.sleep(0)
    assert lab.role.prepared == 1

    lab.clock.advance(delay - HEARTBEAT)
    lab.side.update_cloud(lab.cloud)
    await lab.reported(P.CONVERGING)
    assert lab.role.prepared == 2
    lab.sup.set("app", State.RUNNING, ready=True)
    await lab.reported(P.READY)


async def test_a_new_assignment_is_not_held_back_by_the_backoff(lab: Lab) -> None:
    lab.role.failures = 1
    lab.start()
    lab.side.assign(lab.assignment())
    await lab.reported(P.FAILED)
    lab.side.assign(lab.assignment(peers=("10.0.0.7",)))
    await lab.reported(P.CONVERGING)
    assert lab.role.prepared == 2


async def test_cancelling_run_ends_the_converge_before_it_returns(lab: Lab) -> None:
    lab.role.hold.clear()
    lab.start()
    lab.side.assign(lab.assignment())
    await until(lambda: lab.role.prepared == 1, "a converge under way")
    await lab.stop()
    assert lab.role.cancelled  # awaited by run()'s task group, not left running
    assert lab.sups == []


async def test_detach_leaves_the_services_to_the_next_agent(lab: Lab) -> None:
    lab.start()
    lab.side.assign(lab.assignment(term=4))
    await lab.reported(P.CONVERGING, "app STARTING")
    first = lab.sup
    await lab.stop()
    assert first.detached and first.calls == ["start app"]
    assert lab.side.view().phase is P.CONVERGING  # nothing supervised any more

    # The next agent starts from the saved assignment, without the leader.
    assert load_assignment(node_root(lab.settings, "n1"), node="n1", cloud="t") == \
        lab.assignment(term=4)
    lab.side = lab.new_side()
    lab.reports.clear()
    lab.start()
    report = await lab.reported(P.CONVERGING, "app STARTING")
    assert report.term == 4 and lab.sup is not first


async def test_stop_before_any_converge_adopts_and_stops(lab: Lab) -> None:
    lab.side.assign(lab.assignment())
    await lab.side.stop_services()
    assert lab.sup.calls == ["start ", "stop"]  # adopt only, start nothing, then stop
    assert lab.side.view().phase is P.STOPPED


async def test_an_assignment_during_the_stop_resumes_after_it(lab: Lab) -> None:
    lab.start()
    lab.side.assign(lab.assignment())
    await lab.reported(P.CONVERGING, "app STARTING")
    lab.sup.set("app", State.RUNNING, ready=True)
    await lab.reported(P.READY)
    old = lab.sup
    gate = asyncio.Event()
    old.gates.append(gate)
    stopping = asyncio.create_task(lab.side.stop_services())
    await lab.reported(P.STOPPING)
    lab.side.assign(lab.assignment(term=2))
    gate.set()
    await stopping
    report = await lab.reported(P.CONVERGING, "app STARTING")
    assert report.term == 2 and lab.sup is not old and lab.role.prepared == 2


async def test_cleanup_restarts_a_known_service_only(lab: Lab) -> None:
    lab.start()
    lab.side.assign(lab.assignment())
    await lab.reported(P.CONVERGING, "app STARTING")
    await lab.side.cleanup("app")
    assert lab.sup.calls[-1] == "restart app"
    with pytest.raises(PermanentError, match=r"runs no service 'db' \(services: app\)"):
        await lab.side.cleanup("db")


async def test_stop_orders_run_one_at_a_time(lab: Lab) -> None:
    """The second stop never ends under a node that resumed after the first."""
    lab.start()
    lab.side.assign(lab.assignment())
    await lab.reported(P.CONVERGING, "app STARTING")
    gates = [asyncio.Event(), asyncio.Event()]
    lab.sup.gates.extend(gates)
    first = asyncio.create_task(lab.side.stop_services())
    await lab.reported(P.STOPPING)
    second = asyncio.create_task(lab.side.stop_services())
    await asyncio.sleep(0)
    lab.side.assign(lab.assignment(term=2))
    gates[0].set()
    await first
    for _ in range(20):  # turns of the loop in which the node could resume
        await asyncio.sleep(0)
    gates[1].set()
    await second  # the later order wins, and ends in a phase that takes its end
    assert lab.side.view().phase is P.STOPPED and lab.reports[-1].phase is P.STOPPED
