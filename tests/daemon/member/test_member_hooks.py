"""The provider hooks wired into a member: a node's role acts for the leader of its term only
(through the dispatch table), the acting leader's hooks ask nodes over the member's wire, and
a stop holds the domains and the nodes' generation until the provider's stop is done. A fake
wire and clock; no transport, no real time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.config.model import Ensure
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.clouds import timing_for
from cloudd.daemon.network.catalogue import (
    ManifestOffer,
    NodeActed,
    NodeAction,
    NodePhase,
    NodeReport,
)
from cloudd.election.messages import Coordinator
from cloudd.errors import PermanentError
from cloudd.providers.base import ClusterView, Finding, Provider, Role
from cloudd.providers.registry import Registry

from .fakes import DB, LB, WEB1, WEB2, FakeNodeSide, Wire, host, node, operator, settings, shop

NODES = (DB, WEB1, WEB2, LB)


class Plain(Role):
    def __init__(self, name: str, *depends: str) -> None:
        self.name, self.depends_on = name, depends


class Shop(Provider):
    """A web provider of the test's own: configure asks the database node to act, monitor
    reports one finding per server, stop asks the balancer to drain."""

    cloud_type = "web"

    def __init__(self) -> None:
        self.roles: Mapping[str, Role] = {
            r.name: r for r in (Plain("database"), Plain("server", "database"),
                                Plain("balancer", "server"))}
        self.calls: list[str] = []

    async def configure(self, cluster: ClusterView, role: str) -> None:
        self.calls.append(f"configure {role}")
        if role == "server":
            await cluster.ask(DB, "grant", {"servers": ",".join(
                p.node for p in cluster.of("server") if p.healthy)})

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        self.calls.append("monitor")
        return tuple(Finding("app", p.healthy, "serving" if p.healthy else "down", p.node,
                             state="up" if p.healthy else "down")
                     for p in cluster.of("server"))

    async def stop(self, cluster: ClusterView) -> None:
        self.calls.append("stop")
        await cluster.ask(LB, "drain", {})


@dataclasses.dataclass
class Rig:
    member: CloudMember
    wire: Wire
    clock: FakeClock
    events: EventLog
    provider: Shop
    election: asyncio.Task[None] | None = None


@pytest.fixture
async def rigs() -> AsyncIterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        if r.election is not None:
            r.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await r.election
        r.events.close()


def rig(tmp_path: Path, rigs: list[Rig], name: str) -> Rig:
    wire, clock, provider = Wire(), FakeClock(), Shop()
    agent = settings(tmp_path, name)
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog.in_state_dir(agent.state_dir)

    async def answer(peer: str, msg: Any) -> Any:
        assert isinstance(msg, NodeAction)
        return NodeActed(peer, msg.action, (("done", msg.action),))

    wire.answer = answer
    member = CloudMember(settings=agent, cloud=shop(tmp_path / "manifests"),
                         timing=timing_for(agent), send=wire.send, request=wire.request,
                         events=events, clock=clock, node_side=FakeNodeSide,
                         providers=Registry([provider]))
    made = Rig(member, wire, clock, events, provider)
    rigs.append(made)
    return made


async def follow(r: Rig, leader: str, term: int) -> None:
    r.election = asyncio.create_task(r.member.election.run())
    await asyncio.sleep(0)
    await r.member.handle(host(leader), Coordinator(term=term))


def leading(r: Rig, monkeypatch: pytest.MonkeyPatch, term: int = 7) -> None:
    """This pool host acts in `term` (the record recovered in it), every node ready."""
    monkeypatch.setattr(r.member.record, "leading_term", lambda: term)
    for n in NODES:
        r.member.node_report(n, NodeReport(node=n, term=term, generation="g",
                                           phase=NodePhase.READY))


async def steps(r: Rig, limit: int = 10) -> list[str]:
    before = len(r.provider.calls)
    for _ in range(limit):
        if await r.member.hooks.step() is None:
            return r.provider.calls[before:]
    raise AssertionError("the hooks never settle")


async def test_a_nodes_role_acts_for_the_leader_of_its_term_only(tmp_path: Path,
                                                                 rigs: list[Rig]) -> None:
    db = rig(tmp_path, rigs, DB)
    side = db.member.node_side
    assert isinstance(side, FakeNodeSide)
    await follow(db, "pm2", 5)
    ask = NodeAction("shop", 5, "grant", (("servers", WEB1),))
    assert await db.member.handle(host("pm2"), ask) == NodeActed(DB, "grant",
                                                                 (("done", "grant"),))
    assert side.acted == [("grant", (("servers", WEB1),), "pm2", 5)]
    refused = [
        (host("pm1"), ask, "only the leader of the current term may send it"),
        (node(WEB1), ask, "only the leader of the current term may send it"),
        (operator(), ask, "only the leader of the current term may send it"),
        (host("pm2"), dataclasses.replace(ask, term=4), "it leads term 5, not 4"),
    ]
    with capture_logs() as logs:
        for sender, msg, reason in refused:
            with pytest.raises(PermanentError, match=reason):
                await db.member.handle(sender, msg)
        with pytest.raises(PermanentError, match=f"{DB} does not serve cloud other"):
            await db.member.handle(host("pm2"), dataclasses.replace(ask, cloud="other"))
    assert len(side.acted) == 1  # nothing refused reached the role
    assert [e["event"] for e in logs] == ["message_refused"] * 4 + ["action_refused"]
    assert logs[-1]["peer"] == "pm2" and logs[-1]["term"] == 5


async def test_a_pool_host_takes_no_node_action(tmp_path: Path, rigs: list[Rig]) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    await follow(pm1, "pm2", 5)
    with pytest.raises(PermanentError, match="to a node, and this agent is a pool host"):
        await pm1.member.handle(host("pm2"), NodeAction("shop", 5, "grant"))


async def test_the_acting_leaders_hooks_ask_nodes_and_show_in_the_snapshot(
        tmp_path: Path, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    assert await steps(pm1) == []  # not acting: nothing
    leading(pm1, monkeypatch)
    assert await steps(pm1) == ["configure database", "configure server",
                                "configure balancer", "monitor"]
    assert pm1.wire.asked == [(DB, NodeAction("shop", 7, "grant",
                                              (("servers", f"{WEB1},{WEB2}"),)))]
    hooks = pm1.member.snapshot().hooks
    assert [(f.node, f.ok, f.state) for f in hooks.findings] == [
        (WEB1, True, "up"), (WEB2, True, "up")]
    # a server goes: the servers' role is configured again (only it: its nodes changed)
    pm1.member.node_report(WEB2, NodeReport(node=WEB2, term=7, generation="g",
                                            phase=NodePhase.FAILED))
    assert await steps(pm1) == ["configure server", "monitor"]
    assert pm1.wire.asked[-1][1].args == (("servers", WEB1),)
    assert [(f.node, f.ok) for f in pm1.member.snapshot().hooks.findings] == [
        (WEB1, True), (WEB2, False)]


async def test_a_stop_holds_domains_and_nodes_until_the_providers_stop(
        tmp_path: Path, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    pm1 = rig(tmp_path, rigs, "pm1")
    leading(pm1, monkeypatch)
    await steps(pm1)
    assert pm1.member._controller_term() == 7
    stopped = shop(tmp_path / "stopped", (tmp_path / "manifests" / "shop.yaml").read_text()
                   .replace("type: web", "type: web\nensure: stopped"))
    assert stopped.ensure is Ensure.STOPPED
    pm1.member.update(stopped)
    # held: the controller does not act, and only the other pool host is offered the
    # stopped generation (the nodes keep serving the one they run)
    assert pm1.member.hooks.holding() and pm1.member._controller_term() is None
    assert await pm1.member.controller.pass_once() is None
    alive = frozenset({"pm1", "pm2", *NODES})
    pm1.member._distribute(alive)
    assert [p for p, _ in pm1.wire.of(ManifestOffer)] == ["pm2"]
    assert pm1.member.snapshot().hooks.holding
    # the provider's stop: it asks the balancer, then the cloud is released
    assert await steps(pm1) == ["stop"]
    assert pm1.wire.asked[-1] == (LB, NodeAction("shop", 7, "drain", ()))
    assert not pm1.member.hooks.holding() and pm1.member._controller_term() == 7
    pm1.member._distribute(alive)
    assert sorted(p for p, _ in pm1.wire.of(ManifestOffer)) == sorted(["pm2", *NODES])
