"""The controller's side of hung guests, over real HostAgents on in-memory backends and a fake
clock: it keeps since when each node's agent has been unreachable, resets once, destroys after
a second bound, counts both against the node's backoff, and follows a host's PENDING answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.controller import Controller, LocalHosts
from cloudd.vmctl.backend import DomainEventKind, FakeBackend, PowerState
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.plan import (
    BackoffPolicy,
    Desired,
    Ensure,
    Liveness,
    NodeSpec,
    RunStrategy,
)
from cloudd.vmctl.template import NodeDomain, render_domain

IMG = "/img/base.qcow2"
BOUND = 300.0
TEMPLATE = """<domain type='kvm'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type></os>
  ${metadata}
</domain>"""


def render(spec: NodeSpec, term: int) -> str:
    meta = CloudMeta(cloud="c1", node=spec.name, role=spec.role, term=term)
    return render_domain(TEMPLATE, NodeDomain(meta=meta, memory_mib=spec.memory_mib, vcpus=1,
                                              image=spec.image))


@dataclass
class Answers:
    """A client in front of LocalHosts that records what it sends and can answer PENDING."""

    inner: LocalHosts
    pending: dict[Op, int] = field(default_factory=dict)
    sent: list[tuple[Op, str, int]] = field(default_factory=list)
    on_send: list[object] = field(default_factory=list)

    async def call(self, host: str, command: HostCommand) -> HostResult:
        self.sent.append((command.op, command.domain, command.term))
        for hook in self.on_send:
            hook()  # type: ignore[operator]
        left = self.pending.get(command.op, 0)
        if left:
            self.pending[command.op] = left - 1
            return HostResult(command, CommandOutcome.PENDING, command.term, "resetting")
        return await self.inner.call(host, command)


@dataclass
class Lab:
    backend: FakeBackend
    client: Answers
    agents: dict[str, Liveness]
    clock: FakeClock
    events: EventLog
    term: list[int | None]
    spec: list[NodeSpec]
    controller: Controller

    @property
    def state(self) -> PowerState:
        return self.backend.domains["c1-n0"].state

    def calls(self, op: str) -> int:
        return sum(1 for what, _ in self.backend.calls if what == op)

    async def pass_(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            await self.controller.pass_once()
            await self.controller.idle()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    clock = FakeClock(monotonic=1000.0)
    backend = FakeBackend(clock=clock.monotonic, images=frozenset({IMG}))
    client = Answers(LocalHosts({"h0": HostAgent(backend, state_dir=tmp_path, host="h0")}))
    agents: dict[str, Liveness] = {}
    events = EventLog.in_state_dir(tmp_path)
    term: list[int | None] = [3]
    spec = [NodeSpec("n0", "web", 512, 1, IMG)]
    controller = Controller(
        desired=lambda: Desired("c1", Ensure.RUNNING, tuple(spec),
                                unreachable_reset_after=BOUND),
        hosts=lambda: ["h0"], liveness=lambda m: agents.get(m, Liveness.ALIVE),
        leader=lambda: term[0], client=client, events=events, render=render, clock=clock,
        policy=BackoffPolicy(base=10.0, jitter=0.0, stable=600.0), resync=3600.0)
    yield Lab(backend, client, agents, clock, events, term, spec, controller)
    events.close()


async def test_reset_once_then_destroyed_and_started_again_with_backoff(lab: Lab) -> None:
    await lab.pass_()
    assert lab.state is PowerState.RUNNING
    lab.clock.advance(50.0)
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()  # first seen unreachable at 1050
    lab.clock.advance(BOUND - 1)
    await lab.pass_()
    assert lab.calls("reset") == 0
    waiting = {w.node: w.reason for w in lab.controller.last_plan.waiting}
    assert waiting["n0"].startswith("agent unreachable for 299s while its domain runs")
    lab.clock.advance(1.0)
    with capture_logs() as logs:
        await lab.pass_()
    assert lab.calls("reset") == 1 and lab.state is PowerState.RUNNING
    resets = [e for e in logs if e["event"] == "node_reset"]
    assert [(e["node"], e["host"], e["unreachable_for"], e["term"]) for e in resets] == [
        ("n0", "h0", 300.0, 3)]
    restart = lab.events.query(kind=LogKind.RESTART)
    assert [e.reason for e in restart] == [
        "reset on h0: agent unreachable for 300s while its domain runs (bound 300s)"]
    assert lab.controller.node_fails.get("n0").count == 1  # type: ignore[union-attr]

    # still unreachable: another bound after the reset, and it is destroyed
    lab.clock.advance(BOUND - 1)
    await lab.pass_()
    assert (lab.calls("reset"), lab.calls("destroy")) == (1, 0)
    lab.clock.advance(1.0)
    with capture_logs() as logs:
        await lab.pass_()
    assert lab.calls("destroy") == 1 and lab.state is PowerState.STOPPED
    assert [e["unreachable_for"] for e in logs if e["event"] == "node_reset"] == [300.0]
    record = lab.controller.node_fails.get("n0")
    assert record is not None and record.count == 2
    # started again in place, once the backoff the two counted failures earned has passed
    await lab.pass_()
    assert lab.calls("start") == 1  # only the first start so far
    lab.clock.advance(record.not_before - lab.clock.monotonic())
    await lab.pass_()
    assert lab.calls("start") == 2 and lab.state is PowerState.RUNNING


async def test_an_agent_that_never_comes_up_counts_from_its_domains_start(lab: Lab) -> None:
    lab.agents["n0"] = Liveness.DEAD  # before its domain even exists
    await lab.pass_()
    assert lab.state is PowerState.RUNNING
    lab.clock.advance(BOUND)
    await lab.pass_()
    assert lab.calls("reset") == 1


async def test_an_agent_back_after_the_reset_starts_over_with_a_reset(lab: Lab) -> None:
    await lab.pass_()
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    await lab.pass_()
    assert lab.calls("reset") == 1
    lab.clock.advance(60.0)
    lab.agents["n0"] = Liveness.ALIVE  # the reset helped
    await lab.pass_()
    lab.clock.advance(60.0)
    lab.agents["n0"] = Liveness.DEAD  # and it hangs again, later
    await lab.pass_()
    lab.clock.advance(BOUND)
    await lab.pass_()
    assert (lab.calls("reset"), lab.calls("destroy")) == (2, 0)
    assert lab.controller.node_fails.get("n0").count == 2  # type: ignore[union-attr]


async def test_a_stopped_qemu_is_destroyed_and_started_by_its_host(lab: Lab) -> None:
    await lab.pass_()
    lab.backend.stall("c1-n0")
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    await lab.pass_()
    assert lab.backend.calls[-3:] == [("reset", "c1-n0"), ("destroy", "c1-n0"),
                                      ("start", "c1-n0")]
    assert lab.state is PowerState.RUNNING


async def test_a_power_off_after_the_reset_is_not_the_guests_own(lab: Lab) -> None:
    """A template whose on_reboot is destroy turns a reset into a power-off: a
    rerun-on-failure node is started again all the same."""
    lab.spec[0] = NodeSpec("n0", "web", 512, 1, IMG, run=RunStrategy.RERUN_ON_FAILURE)
    await lab.pass_()
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    queue = lab.backend.subscribe()

    def power_off_on_reset() -> None:
        if lab.client.sent[-1][0] is Op.RESET:
            lab.backend.domains["c1-n0"].state = PowerState.STOPPED
            lab.backend._emit(DomainEventKind.STOPPED, "c1-n0",
                              lab.backend.domains["c1-n0"].meta, "shutdown")
            lab.controller.domain_event("h0", queue.get_nowait())

    lab.client.on_send.append(power_off_on_reset)
    await lab.pass_()
    lab.client.on_send.clear()
    lab.clock.advance(60.0)  # past the backoff the reset counted
    await lab.pass_()
    assert lab.calls("start") == 2 and lab.state is PowerState.RUNNING
    restarts = [e.reason for e in lab.events.query(kind=LogKind.RESTART)]
    assert "start on h0: shutoff (reset); restarting in place" in restarts


async def test_a_pending_reset_is_asked_again_in_the_same_term(lab: Lab) -> None:
    await lab.pass_()
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    lab.client.pending[Op.RESET] = 2
    await lab.pass_()
    assert [s for s in lab.client.sent if s[0] is Op.RESET] == [(Op.RESET, "c1-n0", 3)] * 3
    assert lab.calls("reset") == 1


async def test_a_pending_reset_stops_with_the_term(lab: Lab) -> None:
    await lab.pass_()
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    lab.client.pending[Op.RESET] = 5

    def depose() -> None:
        if lab.client.sent[-1][0] is Op.RESET:
            lab.term[0] = None

    lab.client.on_send.append(depose)
    await lab.pass_()
    assert [s[0] for s in lab.client.sent].count(Op.RESET) == 1
    failures = [e.reason for e in lab.events.query(kind=LogKind.FAILURE)]
    assert failures == ["reset on h0 failed (1 in a row, next try in 10.0s): "
                        "no longer the acting leader"]


async def test_a_hung_guest_is_never_stable_for_the_backoff(lab: Lab) -> None:
    """Its domain runs all along, past the stable period (600 s): the reset's count stays."""
    await lab.pass_()
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    await lab.pass_()
    lab.clock.advance(700.0)
    await lab.pass_()
    assert lab.calls("destroy") == 1
    assert lab.controller.node_fails.get("n0").count == 2  # type: ignore[union-attr]


async def test_a_suspect_agent_is_not_unreachable(lab: Lab) -> None:
    """Another member's gossip can make a node suspect here: only a death counts."""
    await lab.pass_()
    lab.agents["n0"] = Liveness.SUSPECT
    await lab.pass_()
    lab.clock.advance(2 * BOUND)
    await lab.pass_()
    assert lab.calls("reset") == 0
    lab.agents["n0"] = Liveness.DEAD
    await lab.pass_()
    lab.clock.advance(BOUND)
    await lab.pass_()
    assert lab.calls("reset") == 1
