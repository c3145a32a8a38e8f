"""The inspect document built from what a member of the cloud knows right now.

The leader's view is the whole picture: hosts and their domains from its controller, nodes'
services from their reports, failed actions from its backoff ledgers, and the event log. Any
other agent asks the leader for that view (`InspectWanted`); when the leader cannot be asked
(an election is running, or it does not answer), the agent answers with what it sees itself,
and says so (`source: local`, or `stale` with the leader's last view).
"""

from __future__ import annotations

import time

from cloudd.client.inspectdoc import (
    CloudView,
    ElectionState,
    EventView,
    FailedAction,
    HostView,
    LeadershipView,
    LivenessView,
    ManifestInfo,
    NodeView,
    ServiceView,
    Source,
)
from cloudd.daemon.base.eventlog import EventKind
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.election import ElectionShell
from cloudd.daemon.operator.queries import event_view
from cloudd.election.swim import Status
from cloudd.vmctl.plan import DomainObs

#: How many recent events a cloud's view carries.
RECENT_EVENTS = 8

_LIVENESS = {Status.ALIVE: LivenessView.ALIVE, Status.SUSPECT: LivenessView.SUSPECT,
             Status.DEAD: LivenessView.DEAD}


def _rank(obs: DomainObs, election: ElectionShell) -> tuple[bool, bool]:
    return (election.status(obs.host) is not Status.DEAD, obs.state.value == "running")


def leadership(member: CloudMember) -> LeadershipView:
    election = member.election
    roster = member.roster
    reached = sum(1 for h in roster.hosts if election.status(h) is Status.ALIVE)
    leader = election.leader or None
    if leader is None:
        state = ElectionState.ELECTING
    elif leader == member.me and not election.acting():
        state = ElectionState.NO_QUORUM
    else:
        state = ElectionState.STABLE if reached >= roster.quorum else ElectionState.NO_QUORUM
    return LeadershipView(state=state, term=election.term, leader=leader,
                          since=election.leader_since, quorum_reached=reached,
                          quorum_needed=roster.quorum)


def cloud_view(member: CloudMember, *, source: Source, now: float | None = None) -> CloudView:
    now = time.time() if now is None else now
    cloud, election, controller = member.cloud, member.election, member.controller
    reports = controller.host_reports()
    hosts = []
    domains: dict[str, DomainObs] = {}
    for h in cloud.pool:
        seen, stock = reports.get(h.name, ((), None))
        for obs in seen:
            if obs.cloud != cloud.name:
                continue
            # A node re-placed after its host died still shows in that host's last report:
            # a running domain, or one on a host not dead, tells where the node is now.
            known = domains.get(obs.node)
            if known is None or _rank(obs, election) > _rank(known, election):
                domains[obs.node] = obs
        hosts.append(HostView(
            name=h.name, address=h.address, liveness=_LIVENESS[election.status(h.name)],
            reachable=stock is not None,
            free_memory_mib=stock.free_memory_kib // 1024 if stock is not None else None,
            domains=sum(1 for d in seen if d.cloud == cloud.name)))
    waiting = {w.node: w.reason for w in controller.last_plan.waiting}
    nodes = []
    for n in cloud.nodes:
        d = domains.get(n.name)
        state = "unmanaged" if not n.managed else (d.state.value if d is not None else "none")
        report = member.reports.get(n.name)
        services = tuple(
            ServiceView(name=s.name, state=s.state, ready=s.ready, pid=s.pid,
                        restarts=max(0, s.starts - 1), fatal_count=s.fatal_count,
                        last_error=s.last_error)
            for s in (report.services if report is not None else ()))
        running = d is not None and d.state.value == "running"
        nodes.append(NodeView(
            name=n.name, role=n.role, address=n.address, domain_state=state,
            agent_liveness=_LIVENESS[election.status(n.name)],
            host=d.host if d is not None else None,
            uptime=(now - d.since) if running and d is not None and d.since else None,
            waiting=waiting.get(n.name, "") or (report.message if report is not None
                                                and report.phase != "ready" else ""),
            services=services))
    last_error = {e.subject: e.reason for e in
                  member.events.query(cloud=cloud.name, kind=EventKind.FAILURE, limit=50)}
    failed = tuple(
        FailedAction(action="reconcile", subject=subject, fail_count=record.count,
                     last_error=last_error.get(subject, ""), next_retry=record.not_before)
        for ledger in (controller.node_fails, controller.host_fails)
        for subject, record in sorted(ledger.snapshot().items()) if record.count > 0)
    events: tuple[EventView, ...] = tuple(
        event_view(e) for e in member.events.query(cloud=cloud.name, limit=RECENT_EVENTS))
    return CloudView(
        name=cloud.name, type=cloud.type, ensure=cloud.ensure.value, source=source,
        observed_at=now, leadership=leadership(member),
        manifest=ManifestInfo(generation=member.generation, digest=cloud.digest,
                              loaded_at=member.loaded_at),
        hosts=tuple(hosts), nodes=tuple(nodes), failed_actions=failed, events=events)
