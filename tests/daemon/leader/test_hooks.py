"""The leader's provider hooks shell: a small provider of the test's own, a fake clock and a
fake wire to the nodes. Each `step()` observes, asks the core and performs one call; no real
time passes and nothing sleeps."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.backoff import Backoff
from cloudd.config.catalog import RoleSpec, TypeSpec
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud, Ensure
from cloudd.config.plain import Plain
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.hookplan import Hook, HookTiming, StopPhase
from cloudd.daemon.leader.hooks import ProviderHooks
from cloudd.daemon.network.catalogue import NodeActed, NodeAction
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import ACT_ANSWER_LIMIT, ClusterView, Finding, Provider, Role
from cloudd.providers.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoSettings(Plain):
    """No settings."""


#: A type of the test's own, which only the test's provider claims.
TYPES = {"hooked": TypeSpec("hooked", NoSettings, roles=(
    RoleSpec("controller", max_nodes=1), RoleSpec("servers", min_nodes=0, required=False)))}

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: batch
type: hooked
domain_template: t.xml
pool:
  - {name: pm1, address: 192.0.2.70}
roles:
  controller: [{name: head, address: 192.0.2.10, managed: false}]
  servers:
    - {name: c1, address: 192.0.2.11, managed: false}
    - {name: c2, address: 192.0.2.12, managed: false}
timing: {monitor_interval: 20}
"""


class Controller(Role):
    name = "controller"


class Servers(Role):
    name = "servers"
    depends_on = ("controller",)


class Batch(Provider):
    """Registers the servers on the controller through `ask`; its monitor reports what the
    controller lists, as a scheduler's view of each server."""

    cloud_type = "hooked"
    roles: Mapping[str, Role] = {"controller": Controller(), "servers": Servers()}

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[tuple[str, bool], ...]]] = []
        self.raise_on: dict[str, BaseException] = {}
        self.findings: tuple[Finding, ...] = ()

    def _call(self, hook: str, cluster: ClusterView, role: str = "") -> None:
        self.calls.append((hook, role, tuple((p.node, p.healthy) for p in cluster.nodes)))
        error = self.raise_on.pop(hook, None)
        if error is not None:
            raise error

    async def configure(self, cluster: ClusterView, role: str) -> None:
        self._call("configure", cluster, role)
        if role == "servers":
            names = ",".join(p.node for p in cluster.of("servers"))
            await cluster.ask("head", "register", {"nodes": names})

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        self._call("monitor", cluster)
        return self.findings

    async def stop(self, cluster: ClusterView) -> None:
        self._call("stop", cluster)
        await cluster.ask("head", "drain", {})


@dataclasses.dataclass
class Rig:
    hooks: ProviderHooks
    provider: Batch
    clock: FakeClock
    events: EventLog
    asked: list[tuple[str, Any]]
    holder: dict[str, Any]

    @property
    def cloud(self) -> Cloud:
        return self.holder["cloud"]

    def set(self, **changes: Any) -> None:
        self.holder.update(changes)

    def hooks_called(self) -> list[tuple[str, str]]:
        return [(hook, role) for hook, role, _ in self.provider.calls]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "t.xml").write_text("<domain/>")
    (tmp_path / "batch.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "batch.yaml", TYPES)
    holder: dict[str, Any] = {"cloud": cloud, "term": 4, "healthy": {"head", "c1", "c2"},
                              "answer": None, "released": 0}
    asked: list[tuple[str, Any]] = []

    async def request(peer: str, msg: Any) -> Any:
        asked.append((peer, msg))
        if holder["answer"] is not None:
            return holder["answer"]
        return NodeActed(peer, msg.action, (("done", msg.action),))

    def released() -> None:
        holder["released"] += 1

    provider, clock = Batch(), FakeClock()
    events = EventLog.in_state_dir(tmp_path)
    hooks = ProviderHooks(
        cloud=lambda: holder["cloud"], term=lambda: holder["term"],
        healthy=lambda: holder["healthy"], provider=Registry([provider]).get,
        request=request, events=events, released=released, clock=clock,
        timing=HookTiming(stop_within=60.0, backoff=Backoff(base=1.0, cap=8.0, jitter=0.0)))
    yield Rig(hooks, provider, clock, events, asked, holder)
    events.close()


async def settle(r: Rig, limit: int = 10) -> list[tuple[str, str]]:
    """Step until nothing is due; the hooks called meanwhile."""
    before = len(r.provider.calls)
    for _ in range(limit):
        if await r.hooks.step() is None:
            return r.hooks_called()[before:]
    raise AssertionError(f"still busy after {limit} steps: {r.hooks_called()}")


async def test_roles_are_configured_in_order_and_nodes_act_in_the_leaders_term(
        rig: Rig) -> None:
    with capture_logs() as logs:
        assert await settle(rig) == [("configure", "controller"), ("configure", "servers"),
                                     ("monitor", "")]
    assert rig.asked == [("head", NodeAction("batch", 4, "register", (("nodes", "c1,c2"),)))]
    assert ("configure", "servers", (("head", True), ("c1", True), ("c2", True))) \
        in rig.provider.calls
    configured = [e for e in logs if e["event"] == "provider_configured"]
    assert [(e["role"], e["term"]) for e in configured] == [("controller", 4), ("servers", 4)]
    assert configured[1]["reason"] == "configured role servers: 2 node(s), 2 healthy"
    # nothing changed: nothing more, until the monitor's interval (the manifest's 20 s)
    assert await settle(rig) == []
    rig.clock.advance(20.0)
    assert await settle(rig) == [("monitor", "")]
    # a server's health changed: configured again, and monitored right after
    rig.set(healthy={"head", "c1"})
    assert await settle(rig) == [("configure", "servers"), ("monitor", "")]
    assert rig.provider.calls[-2][2] == (("head", True), ("c1", True), ("c2", False))


async def test_a_role_waits_for_a_healthy_dependency(rig: Rig) -> None:
    rig.set(healthy={"c1", "c2"})
    assert await settle(rig) == [("configure", "controller"), ("monitor", "")]
    rig.set(healthy={"head", "c1", "c2"})
    assert await settle(rig) == [("configure", "controller"), ("configure", "servers"),
                                 ("monitor", "")]


async def test_findings_are_kept_shown_and_logged_only_when_they_change(rig: Rig) -> None:
    rig.provider.findings = (
        Finding("scheduler", True, "idle", "c1", state="idle"),
        Finding("scheduler", False, "down: not responding", "c2", state="down"))
    with capture_logs() as logs:
        await settle(rig)
        # the same verdicts with other jobs: shown, not logged again
        rig.provider.findings = (
            Finding("scheduler", True, "idle", "c1", state="alloc", jobs=("7", "8")),
            Finding("scheduler", False, "down: not responding", "c2", state="down"))
        rig.clock.advance(20.0)
        await settle(rig)
        # c2 comes back, c1's finding is no longer reported
        rig.provider.findings = (Finding("scheduler", True, "idle", "c2", state="idle"),)
        rig.clock.advance(20.0)
        await settle(rig)
    seen = [(e["node"], e["ok"], e["reason"]) for e in logs if e["event"] == "provider_finding"]
    assert seen == [("c1", True, "idle"), ("c2", False, "down: not responding"),
                    ("c2", True, "idle"), ("c1", True, "no longer reported")]
    assert all(e["check"] == "scheduler" and e["term"] == 4 for e in logs
               if e["event"] == "provider_finding")
    assert rig.hooks.view().findings == (Finding("scheduler", True, "idle", "c2",
                                                 state="idle"),)
    rows = [(e.kind, e.subject, e.reason) for e in rig.events.query(cloud="batch")
            if "check" in e.reason]
    assert rows == [
        (LogKind.ACTION, "c1", "check scheduler ok: idle"),
        (LogKind.FAILURE, "c2", "check scheduler failing: down: not responding"),
        (LogKind.ACTION, "c2", "check scheduler ok: idle"),
        (LogKind.ACTION, "c1", "check scheduler ok: no longer reported")]


async def test_a_failing_configure_backs_off_and_shows_until_it_succeeds(rig: Rig) -> None:
    rig.provider.raise_on["configure"] = TemporaryError("the head is not up yet", delay=0.5)
    with capture_logs() as logs:
        assert await settle(rig) == [("configure", "controller"), ("monitor", "")]
    [failed] = rig.hooks.view().failures
    assert (failed.hook, failed.subject, failed.count, failed.error) == (
        "configure", "controller", 1, "the head is not up yet")
    assert failed.not_before == rig.clock.monotonic() + 1.0
    [logged] = [e for e in logs if e["event"] == "provider_hook_failed"]
    assert logged["reason"] == ("configure controller failed: the head is not up yet; next "
                                "try in 1.0s")
    [row] = rig.events.query(cloud="batch", kind=LogKind.FAILURE)
    assert (row.subject, row.term) == ("controller", 4)
    rig.clock.advance(1.0)
    assert await settle(rig) == [("configure", "controller"), ("configure", "servers"),
                                 ("monitor", "")]
    assert rig.hooks.view().failures == ()


async def test_a_provider_bug_is_a_failure_not_a_crash(rig: Rig) -> None:
    rig.provider.raise_on["monitor"] = KeyError("oops")
    with capture_logs() as logs:
        await settle(rig)
    assert "provider_hook_crashed" in [e["event"] for e in logs]
    [failed] = rig.hooks.view().failures
    assert (failed.hook, failed.error) == ("monitor", "KeyError: 'oops'")
    assert rig.hooks.view().findings == (Finding("monitor", False,
                                                 "monitor failed: KeyError: 'oops'"),)
    rig.clock.advance(20.0)
    await settle(rig)
    assert rig.hooks.view().failures == () and rig.hooks.view().findings == ()


async def test_the_cloud_is_held_for_the_providers_stop(rig: Rig) -> None:
    await settle(rig)
    rig.set(cloud=dataclasses.replace(rig.cloud, ensure=Ensure.STOPPED))
    assert rig.hooks.holding()
    assert await settle(rig) == [("stop", "")]
    assert rig.asked[-1] == ("head", NodeAction("batch", 4, "drain", ()))
    assert not rig.hooks.holding() and rig.holder["released"] == 1
    assert rig.hooks.state.stop is StopPhase.DONE
    # stopped: no configure, no monitor, however long
    rig.clock.advance(100.0)
    assert await settle(rig) == []


async def test_a_stop_that_fails_for_good_releases_the_cloud(rig: Rig) -> None:
    await settle(rig)
    rig.provider.raise_on["stop"] = PermanentError("the head refuses")
    rig.set(cloud=dataclasses.replace(rig.cloud, ensure=Ensure.STOPPED))
    with capture_logs() as logs:
        assert await settle(rig) == [("stop", "")]
    assert not rig.hooks.holding() and rig.holder["released"] == 1
    [logged] = [e for e in logs if e["event"] == "provider_hook_failed"]
    assert logged["reason"] == ("stop failed: the head refuses; the cloud stops without it")


async def test_a_stop_retried_until_its_bound_then_the_cloud_stops(rig: Rig) -> None:
    await settle(rig)
    rig.set(cloud=dataclasses.replace(rig.cloud, ensure=Ensure.STOPPED))
    for _ in range(3):
        rig.provider.raise_on["stop"] = TemporaryError("the head is busy")
        await rig.hooks.step()
        assert rig.hooks.holding()
        rig.clock.advance(rig.hooks.state.failures["stop"].not_before
                          - rig.clock.monotonic())
    rig.clock.advance(60.0)
    assert not rig.hooks.holding() and rig.hooks.state.stop is StopPhase.GIVEN_UP
    assert rig.holder["released"] == 1


async def test_only_the_acting_leader_calls_hooks_or_asks_nodes(rig: Rig) -> None:
    rig.set(term=None)
    assert await settle(rig) == []
    rig.set(cloud=dataclasses.replace(rig.cloud, ensure=Ensure.STOPPED))
    assert not rig.hooks.holding()
    with pytest.raises(TemporaryError, match="no longer acts as the cloud's leader"):
        await rig.hooks.ask("head", "list", {})
    assert rig.asked == []


async def test_a_call_whose_term_ended_meanwhile_changes_nothing(rig: Rig) -> None:
    async def deposed(cluster: ClusterView, role: str) -> None:
        rig.set(term=5)
        raise TemporaryError("lost")

    rig.provider.configure = deposed  # type: ignore[method-assign]
    assert await rig.hooks.step() is not None
    assert rig.hooks.state.failures == {} and rig.events.query(cloud="batch") == []
    # the new term starts afresh
    rig.provider.configure = Batch.configure.__get__(rig.provider)  # type: ignore[method-assign]
    assert (await settle(rig))[:2] == [("configure", "controller"), ("configure", "servers")]
    assert rig.asked[-1][1].term == 5


@pytest.mark.parametrize(("node", "answer", "error"), [
    ("nobody", None, (PermanentError, "cloud batch has no node nobody")),
    ("head", NodeActed("head", "other", ()), (PermanentError, "head answered NodeActed")),
    ("head", NodeActed("server-1", "list", (("k", "v"),)),
     (PermanentError, "head answered NodeActed")),
    ("head", "junk", (PermanentError, "head answered str to 'list'")),
    ("head", NodeActed("head", "list", (("k", "x" * ACT_ANSWER_LIMIT),)),
     (PermanentError, f"more than {ACT_ANSWER_LIMIT} characters")),
    ("head", NodeActed("head", "list", (("k", "v"),)), None),
])
async def test_the_channel_to_a_node_checks_what_comes_back(
        rig: Rig, node: str, answer: Any, error: tuple[type, str] | None) -> None:
    rig.set(answer=answer)
    if error is None:
        assert await rig.hooks.ask(node, "list", {}) == {"k": "v"}
        return
    with pytest.raises(error[0], match=error[1]):
        await rig.hooks.ask(node, "list", {})


async def test_a_cloud_type_without_a_provider_calls_nothing(rig: Rig) -> None:
    rig.set(cloud=dataclasses.replace(rig.cloud, type="torque"))
    with capture_logs() as logs:
        assert await rig.hooks.step() is None
        assert await rig.hooks.step() is None
        assert not rig.hooks.holding()
    assert [e["event"] for e in logs] == ["provider_missing"]
    assert "no provider for cloud type 'torque'" in logs[0]["reason"]
    assert rig.provider.calls == []


def test_hooks_are_named_for_inspect() -> None:
    assert [h.value for h in Hook] == ["configure", "monitor", "stop"]


async def test_the_event_log_hears_of_a_failing_hook_once_per_reason(rig: Rig) -> None:
    for error in ("the head is not up yet", "the head is not up yet", "the head refuses"):
        rig.provider.raise_on["configure"] = TemporaryError(error)
        await rig.hooks.step()
        rig.clock.advance(rig.hooks.state.failures["controller"].not_before
                          - rig.clock.monotonic())
    assert rig.hooks.state.failures["controller"].count == 3
    rows = [r.reason for r in rig.events.query(cloud="batch", kind=LogKind.FAILURE)]
    assert rows == [
        "configure controller failed: the head is not up yet (1 in a row; next try in 1.0s)",
        "configure controller failed: the head refuses (3 in a row; next try in 4.0s)"]
