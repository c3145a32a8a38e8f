"""The inspect document and the status, built from the snapshot a member publishes.

The leader's view is the whole picture: hosts and their domains from its controller, nodes'
services from their reports, failed actions from its backoff ledgers, and the event log. Any
other agent asks the leader for that view (`InspectWanted`); when the leader cannot be asked
(an election is running, or it does not answer), the agent answers with what it sees itself,
and says so (`source: local`, or `stale` with the leader's last view). Everything here reads a
`MemberSnapshot` (and the event log); nothing reaches into the member.

Who may ask for the view over the wire is the dispatch table's: pool hosts (for their
operator), nodes of the cloud and operator certificates. Each gets the view of this agent's
own cloud only, and the view is the same for all: it names hosts, nodes, their states and
recent events, and carries no secret, no setting and no fence command (a test holds it to
that), so a node's agent learns nothing from it that the roster does not already say.

Building the view is off the event loop: the view (with its two small indexed queries of the
event log, which any thread may read), and the document as JSON for another agent, or
decoded from the leader's, in a thread. For a cloud of a few nodes that is well under a
millisecond either way; for one of ~5,000 nodes it was 15 ms of view and 40-100 ms of JSON,
measured here, which would stall lease renewals if done on the loop. The leader builds one
answer for other agents at a time, reused for `ANSWER_REUSE` seconds from when it was
started: a flood of inspect requests waits for the one being built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cloudd import log
from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import (
    AgentState,
    CloudView,
    DrainNodeView,
    DrainView,
    ElectionState,
    FailedAction,
    FindingView,
    HostView,
    InspectDoc,
    LeadershipView,
    LivenessView,
    ManifestInfo,
    NodeView,
    ServiceView,
    Source,
)
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader import maintenance
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.network.catalogue import InspectAnswer, InspectWanted, NodePhase
from cloudd.daemon.operator.queries import event_view, view_source
from cloudd.election.swim import Status
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.base import Finding
from cloudd.vmctl.plan import DomainObs, DomainState

#: How many recent events a cloud's view carries.
RECENT_EVENTS = 8

#: Seconds a follower waits for the leader's view before it answers with its own: an
#: operator's `inspect` must answer even while the leader is dying.
LEADER_ASK_TIMEOUT = 3.0

#: Recent failures searched for each failed action's last error: a handful per subject.
FAILURES_READ = 50

#: A leader's view older than this many leases is shown as stale (a new leader is elected
#: well within two leases).
STALE_LEASES = 2

#: Seconds the leader's view answered to other agents is reused: a flood of inspect requests
#: costs one document per this long, and an operator's `--watch` refreshes every second.
ANSWER_REUSE = 0.5

_LIVENESS = {Status.ALIVE: LivenessView.ALIVE, Status.SUSPECT: LivenessView.SUSPECT,
             Status.DEAD: LivenessView.DEAD}


def doubt_of(snap: MemberSnapshot, member: str) -> tuple[float | None, str]:
    """(wall time since when, why) `member` is not alive in `snap`; (None, "") while alive."""
    doubt = snap.doubt(member)
    if doubt is None:
        return None, ""
    return snap.wall_of(doubt.since), doubt.reason


def _rank(obs: DomainObs, snap: MemberSnapshot) -> tuple[bool, bool]:
    return (snap.status(obs.host) is not Status.DEAD, obs.state is DomainState.RUNNING)


def leadership(snap: MemberSnapshot) -> LeadershipView:
    reached = snap.quorum_reached
    leader = snap.leader or None
    if leader is None:
        state = ElectionState.ELECTING
    elif leader == snap.me and not snap.acting:
        state = ElectionState.NO_QUORUM
    else:
        state = ElectionState.STABLE if reached >= snap.quorum else ElectionState.NO_QUORUM
    return LeadershipView(state=state, term=snap.term, leader=leader, since=snap.leader_since,
                      quorum_reached=reached, quorum_needed=snap.quorum)


def cloud_view(snap: MemberSnapshot, *, events: EventLog, source: Source) -> CloudView:
    """The cloud as `snap` shows it, observed at the snapshot's time. Reads nothing but its
    arguments (the event log is safe from any thread), so that it may run in a thread."""
    cloud, controller = snap.cloud, snap.controller
    hosts = []
    domains: dict[str, DomainObs] = {}
    for h in cloud.pool:
        seen, stock = controller.hosts.get(h.name, ((), None))
        for obs in seen:
            if obs.cloud != cloud.name:
                continue
            # A node re-placed after its host died still shows in that host's last report:
            # a running domain, or one on a host not dead, tells where the node is now.
            known = domains.get(obs.node)
            if known is None or _rank(obs, snap) > _rank(known, snap):
                domains[obs.node] = obs
        since, why = doubt_of(snap, h.name)
        hosts.append(HostView(
            name=h.name, address=h.address, liveness=_LIVENESS[snap.status(h.name)],
            reachable=stock is not None,
            free_memory_mib=stock.free_memory_kib // 1024 if stock is not None else None,
            domains=sum(1 for d in seen if d.cloud == cloud.name),
            liveness_since=since, liveness_reason=why))
    waiting = {w.node: w.reason for w in controller.last_plan.waiting}
    names = {n.name for n in cloud.nodes}
    nodes = []
    for n in cloud.nodes:
        d = domains.get(n.name)
        state = "unmanaged" if not n.managed else (d.state.value if d is not None else "none")
        report = snap.reports.get(n.name)
        services = tuple(
            ServiceView(name=s.name, state=s.state, ready=s.ready, pid=s.pid,
                        restarts=max(0, s.starts - 1), fatal_count=s.fatal_count,
                        last_error=s.last_error)
            for s in (report.services if report is not None else ()))
        running = d is not None and d.state is DomainState.RUNNING
        since, why = doubt_of(snap, n.name)
        nodes.append(NodeView(
            name=n.name, role="+".join(n.roles), address=n.address, domain_state=state,
            agent_liveness=_LIVENESS[snap.status(n.name)],
            host=d.host if d is not None else None,
            # the controller's times are monotonic: a duration is a difference of two
            uptime=(snap.monotonic - d.since) if running and d is not None and d.since else None,
            waiting=waiting.get(n.name, "") or (report.message if report is not None
                                                and report.phase != NodePhase.READY else ""),
            services=services, agent_liveness_since=since, agent_liveness_reason=why,
            findings=tuple(finding_view(f) for f in snap.hooks.findings if f.node == n.name)))
    last_error = {e.subject: e.reason for e in
                  events.query(cloud=cloud.name, kind=LogKind.FAILURE, limit=FAILURES_READ)}
    failed = tuple(
        FailedAction(action="reconcile", subject=subject, fail_count=record.count,
                     last_error=last_error.get(subject, ""),
                     next_retry=snap.wall_of(record.not_before))
        for ledger in (controller.node_fails, controller.host_fails)
        for subject, record in sorted(ledger.items()) if record.count > 0) + hook_failures(snap)
    return CloudView(
        name=cloud.name, type=cloud.type, ensure=cloud.ensure.value, source=source,
        observed_at=snap.taken_at, leadership=leadership(snap),
        manifest=ManifestInfo(generation=snap.generation, digest=cloud.digest,
                              loaded_at=snap.loaded_at),
        hosts=tuple(hosts), nodes=tuple(nodes), failed_actions=failed,
        events=tuple(event_view(e) for e in events.query(cloud=cloud.name, limit=RECENT_EVENTS)),
        maintenance=tuple(maintenance.view(snap.maintenance)),
        findings=tuple(finding_view(f) for f in snap.hooks.findings
                       if f.node not in names),
        held_for_stop=snap.hooks.holding, drains=drain_views(snap, domains))


def drain_views(snap: MemberSnapshot, domains: Mapping[str, DomainObs]) -> tuple[DrainView, ...]:
    """Each drained host with the nodes still on it: what the leader's last plan does with
    each (its next action) or what it waits for."""
    plan = snap.controller.last_plan
    doing: dict[str, str] = {}
    for a in plan.actions:
        node = getattr(a, "node", None)
        if node is not None and node not in doing:
            doing[node] = f"moving: {type(a).__name__.lower()} on {a.host} ({a.reason})"
    waits = {w.node: w.reason for w in plan.waiting}
    views = []
    for d in snap.drains.entries:
        left = tuple(
            DrainNodeView(name=n.name, role="+".join(n.roles),
                          step=doing.get(n.name) or waits.get(n.name) or "moving")
            for n in snap.cloud.nodes
            if (obs := domains.get(n.name)) is not None and obs.host == d.host)
        views.append(DrainView(host=d.host, move_stateful=d.move_stateful, since=d.at, by=d.by,
                               left=left))
    return tuple(views)


def finding_view(f: Finding) -> FindingView:
    return FindingView(check=f.check, ok=f.ok, message=f.message, state=f.state, jobs=f.jobs)


def hook_failures(snap: MemberSnapshot) -> tuple[FailedAction, ...]:
    """The provider hooks that keep failing, as failed actions (`configure`, `monitor`,
    `stop`; the subject is the role, or the cloud)."""
    return tuple(FailedAction(action=f.hook, subject=f.subject if f.hook == "configure"
                              else snap.cloud.name, fail_count=f.count, last_error=f.error,
                              next_retry=snap.wall_of(f.not_before))
                 for f in snap.hooks.failures)


def leader_answer(me: str, snap: MemberSnapshot, events: EventLog) -> InspectAnswer:
    """The leader's view as another agent gets it (in a thread)."""
    doc = InspectDoc(answered_by=me, generated_at=snap.taken_at,
                     clouds=(cloud_view(snap, events=events, source=Source.LEADER),))
    return InspectAnswer(snap.cloud.name, json.dumps(doc.to_json()))


def their_view(answer: InspectAnswer, cloud: str) -> CloudView:
    """`cloud`'s view in the leader's answer (in a thread); ValueError if it has none (never
    StopIteration, which no future can carry)."""
    theirs = InspectDoc.from_json(json.loads(answer.doc))
    for view in theirs.clouds:
        if view.name == cloud:
            return view
    raise ValueError(f"the leader's view has no cloud {cloud}")


def status_of(snap: MemberSnapshot | None, *, me: str, events_dropped: int = 0) -> dict[str, Any]:
    """This agent's own view, cheap and local (the leader's view is `inspect`)."""
    if snap is None:
        return {"agent": me, "cloud": None, "events_dropped": events_dropped}
    return {
        "agent": me,
        "events_dropped": events_dropped,
        "unproven": snap.unproven,
        "cloud": snap.cloud.name,
        "generation": snap.cloud.digest,
        "leader": snap.leader or None,
        "term": snap.term,
        "acting": snap.acting,
        "leader_since": snap.leader_since,
        "elections": snap.elections,
        "members": {name: snap.status(name).value for name in snap.members},
        # why each member not alive is not, since when (wall time)
        "doubts": {name: {"status": d.status.value, "since": snap.wall_of(d.since),
                          "reason": d.reason}
                   for name in snap.members if (d := snap.doubt(name)) is not None},
        # what the leader has heard from the nodes (empty elsewhere)
        "nodes": {name: {"phase": r.phase, "message": r.message, "term": r.term,
                         "services": {sv.name: sv.state for sv in r.services}}
                  for name, r in sorted(snap.reports.items())},
        "node": dataclasses.asdict(snap.node) if snap.node is not None else None,
    }


class Inspector:
    """`inspect` and `status` for the local API, and the leader's view for other agents."""

    def __init__(self, *, me: str, snapshot: Callable[[], MemberSnapshot | None],
                 request: Callable[[str, Any], Awaitable[Any]], events: EventLog,
                 clock: Clock = SYSTEM) -> None:
        self.me, self._snapshot, self._request = me, snapshot, request
        self.events, self.clock = events, clock
        #: the leader's last view, with the monotonic time it came
        self._leader_view: tuple[float, CloudView] | None = None
        #: the leader's view for other agents: its (cloud, term), the monotonic time its
        #: building started, and that building (done or not), which every asker awaits
        self._answer: tuple[tuple[str, int], float, asyncio.Task[InspectAnswer]] | None = None
        self.log = log.get("inspect", node=me)

    def status(self) -> dict[str, Any]:
        return status_of(self._snapshot(), me=self.me, events_dropped=self.events.dropped)

    def agent_state(self, snap: MemberSnapshot | None) -> AgentState:
        return AgentState(events_dropped=self.events.dropped,
                          unproven=snap.unproven if snap is not None else "")

    async def inspect(self, cloud: str | None) -> InspectDoc:
        """The inspect document: the leader's view when it can be had, else this agent's."""
        snap = self._snapshot()
        if snap is None:
            if cloud is not None:
                raise ApiError(f"this agent ({self.me}) serves no cloud yet, not {cloud!r}")
            return InspectDoc(answered_by=self.me, generated_at=self.clock.wall(),
                              agent=self.agent_state(snap))
        if cloud is not None and cloud != snap.cloud.name:
            raise ApiError(f"unknown cloud {cloud!r}: this agent serves {snap.cloud.name}")
        view: CloudView | None = None
        if snap.acting:
            view = await self._view(snap, Source.LEADER)
        elif snap.leader and snap.leader != self.me:
            view = await self._ask_leader(snap)
        if view is None:
            own = await self._view(snap, Source.LOCAL)
            view = own
            if self._leader_view is not None:
                at, last = self._leader_view
                source = view_source(leading=False, leader_view_at=at, now=snap.monotonic,
                                     stale_after=STALE_LEASES * snap.lease_duration)
                # the leader's last view, marked stale, with this agent's own leadership view
                view = dataclasses.replace(last, source=source, leadership=own.leadership)
        return InspectDoc(answered_by=self.me, generated_at=snap.taken_at, clouds=(view,),
                          agent=self.agent_state(snap))

    async def _view(self, snap: MemberSnapshot, source: Source) -> CloudView:
        return await asyncio.to_thread(cloud_view, snap, events=self.events, source=source)

    async def _ask_leader(self, snap: MemberSnapshot) -> CloudView | None:
        try:
            async with asyncio.timeout(LEADER_ASK_TIMEOUT):
                answer = await self._request(snap.leader, InspectWanted(snap.cloud.name))
            if not isinstance(answer, InspectAnswer):
                raise ValueError(f"the leader answered {type(answer).__name__}")
            view = await asyncio.to_thread(their_view, answer, snap.cloud.name)
        except (ClouddError, OSError, TimeoutError, ValueError) as e:
            self.log.info("inspect_leader_unreachable", peer=snap.leader, reason=str(e))
            return None
        self._leader_view = (self.clock.monotonic(), view)
        return view

    async def answer(self, peer: str, msg: InspectWanted) -> InspectAnswer:
        """The dispatch table's inspect duty: another agent asks this one, as the leader,
        for its view."""
        snap = self._snapshot()
        if snap is None:
            raise TemporaryError(f"{self.me} has no cloud yet")
        if msg.cloud != snap.cloud.name:
            raise PermanentError(f"{self.me} does not serve cloud {msg.cloud}")
        if not snap.acting:
            # Only the acting leader's view is the leader's view: the asker falls back to
            # its own, marked local or stale.
            raise TemporaryError(f"{self.me} is not the acting leader (term {snap.term})")
        # One document per ANSWER_REUSE seconds, whoever asks and however often: building it
        # takes a thread that holds the GIL the loop renewing the leases needs too.
        key, now = (snap.cloud.name, snap.term), self.clock.monotonic()
        last = self._answer
        if last is None or not reusable(last, key=key, now=now):
            build = asyncio.to_thread(leader_answer, self.me, snap, self.events)
            last = self._answer = (key, now, asyncio.create_task(build, name="inspect-answer"))
        # shielded: an asker that goes away does not cancel the others' answer
        return await asyncio.shield(last[2])


def reusable(last: tuple[tuple[str, int], float, asyncio.Task[InspectAnswer]], *,
             key: tuple[str, int], now: float) -> bool:
    """Whether the leader's `last` answer serves an asker now: it is for the same cloud and
    term, and still being built, or built without failing and started less than
    ANSWER_REUSE seconds ago."""
    built_for, started, task = last
    if built_for != key:
        return False
    if not task.done():
        return True
    return not task.cancelled() and task.exception() is None and now - started < ANSWER_REUSE
