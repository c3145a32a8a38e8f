"""The metrics feed reads snapshots: gauges as they are, counters by what changed since the
last reading, each host call and each restart counted once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader.controller import ControllerView
from cloudd.daemon.leader.hooks import HookFailure, HooksView
from cloudd.daemon.leader.hostcalls import CallTiming
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, ServiceReport
from cloudd.daemon.operator.metrics import Metrics
from cloudd.daemon.operator.metricsfeed import MetricsFeed
from cloudd.election.swim import Status
from cloudd.providers.base import Finding
from cloudd.vmctl.plan import DomainObs, DomainState, Planned

from ..member.fakes import DB, Wire, member


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"cloud": "shop", **labels})


def report(starts: int) -> NodeReport:
    return NodeReport(DB, 1, "g", NodePhase.READY, services=(
        ServiceReport("mariadbd", "running", 7, True, starts, 0, ""),))


async def test_counters_grow_by_what_changed(tmp_path: Path) -> None:
    (tmp_path / "pm1").mkdir()
    events = EventLog.in_state_dir(tmp_path / "pm1")
    events.append(LogEvent(1.0, "shop", LogKind.RESTART, DB, "before the feed", 1))
    base = member(tmp_path, "pm1", wire=Wire(), clock=FakeClock(), events=events).snapshot()
    snaps: list[MemberSnapshot | None] = [None]
    metrics = Metrics()
    feed = MetricsFeed(lambda: snaps[0], metrics, events=events)
    feed.sample()  # no cloud yet: nothing
    assert value(metrics, "cloudd_leader") is None

    controller = ControllerView(
        hosts={"pm1": ((DomainObs("pm1", DB, "shop", DomainState.RUNNING),
                        DomainObs("pm1", "x", "other", DomainState.RUNNING)), None)},
        last_plan=Planned(()), node_fails={}, host_fails={})
    first = dataclasses.replace(
        base, acting=True, term=3, elections=2, controller=controller,
        liveness={**base.liveness, "pm2": Status.ALIVE}, reports={DB: report(1)},
        timings=(CallTiming(1, "list", 0.01), CallTiming(2, "start", 0.5)))
    snaps[0] = first
    feed.sample()
    assert value(metrics, "cloudd_leader") == 1 and value(metrics, "cloudd_term") == 3
    assert value(metrics, "cloudd_quorum_hosts") == 2
    assert value(metrics, "cloudd_elections_total") == 2
    assert value(metrics, "cloudd_domains", state="running") == 1
    assert value(metrics, "cloudd_respawns_total") is None  # the old restart is not counted
    assert value(metrics, "cloudd_action_seconds_count", action="start") == 1

    events.append(LogEvent(2.0, "shop", LogKind.RESTART, DB, "respawned", 3))
    snaps[0] = dataclasses.replace(
        first, elections=3, reports={DB: report(3)},
        timings=(CallTiming(2, "start", 0.5), CallTiming(3, "start", 0.25)))
    feed.sample()
    feed.sample()  # nothing new: nothing counted twice
    assert value(metrics, "cloudd_elections_total") == 3
    assert value(metrics, "cloudd_respawns_total") == 1
    assert value(metrics, "cloudd_action_seconds_count", action="start") == 2
    assert value(metrics, "cloudd_action_seconds_count", action="list") == 1
    assert value(metrics, "cloudd_service_restarts_total", service="mariadbd") == 2
    events.close()


async def test_the_providers_failing_checks_and_hooks_are_gauges(tmp_path: Path) -> None:
    (tmp_path / "pm1").mkdir()
    events = EventLog.in_state_dir(tmp_path / "pm1")
    base = member(tmp_path, "pm1", wire=Wire(), clock=FakeClock(), events=events).snapshot()
    metrics = Metrics()
    snaps: list[MemberSnapshot | None] = [None]
    feed = MetricsFeed(lambda: snaps[0], metrics, events=events)
    snaps[0] = dataclasses.replace(base, hooks=HooksView(
        findings=(Finding("scheduler", False, "down", "c1"), Finding("scheduler", False, "down",
                                                                     "c2"),
                  Finding("upstream", True, "ok", "lb")),
        failures=(HookFailure("configure", "compute", 2, 0.0, "x"),)))
    feed.sample()
    assert value(metrics, "cloudd_provider_findings_failing", check="scheduler") == 2
    assert value(metrics, "cloudd_provider_findings_failing", check="upstream") is None
    assert value(metrics, "cloudd_provider_hooks_failing", hook="configure") == 1
    assert value(metrics, "cloudd_provider_hooks_failing", hook="stop") == 0
    # all well again: the check seen failing reads 0
    snaps[0] = dataclasses.replace(base, hooks=HooksView())
    feed.sample()
    assert value(metrics, "cloudd_provider_findings_failing", check="scheduler") == 0
    assert value(metrics, "cloudd_provider_hooks_failing", hook="configure") == 0
    events.close()
