"""One agent's part in one cloud: the election, the leader's, host's and node's duties, wired.

Theory of operation. The manifest lists every member of the cloud: its pool hosts and its
nodes. Every member runs the same agent, and every agent here does what its place in the
manifest asks of it:
- every member takes part in membership and the election (`ElectionShell`), and makes sure
  every other member has the manifest (`distribution`);
- every pool host keeps the cloud's replicated record (`CloudRecord`, `RecordKeeper`): the
  generations and the maintenance holds the leaders wrote, persisted before a leader's write
  is acknowledged;
- a pool host runs its `HostDuties`: libvirt, the leader's fenced commands, its domain events
  forwarded to the leader at once;
- a node (a VM, or a `managed: false` machine) runs a node side: it takes its role assignment
  from the leader, converges its role, supervises its services and reports its health;
- the acting leader, whoever it is, runs the `Controller` (domains), hands out role
  assignments in the type's dependency order (`assignment`), and calls the provider's
  cluster-level hooks (`ProviderHooks`: configure, monitor, stop), which reach a node's role
  through a `NodeAction`.
The leader's controller and hooks run on every pool host (only pool hosts lead: a node
builds none of the leader's parts, `standins`), the assigner on every agent; they act only
while the election says this agent holds a host quorum lease, and only once it has gathered
the record in that term from a majority of the pool hosts: they ask `leading_term()` before
every step. The record's latest generation is then the cloud's manifest: a leader whose file
differs writes it anew, and acts once it has read it back. A generation that changes the
pool hosts restarts the election on each agent that takes it
(`ElectionShell.change_roster`); a pool host that a generation leaves out leaves the cloud
(`CloudRecord.taken`, `Clouds`).
When a generation says `ensure: stopped`, the provider's `stop` runs first: until it is done
(or given up) the controller leaves the domains alone and the nodes are not offered the
stopped generation, so that their services still serve it.

This module only wires: each duty lives in its room, each decision in a pure module, each
message goes through the dispatch table, and readers get a `MemberSnapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

from cloudd import log
from cloudd.backoff import Backoff
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud, Ensure
from cloudd.config.portable import Recipient, recipient_of, text_for
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader import assignment
from cloudd.daemon.leader.maintenance import Maintenance
from cloudd.daemon.member import distribution, poolchange
from cloudd.daemon.member.dispatch import (
    Duty,
    Handler,
    InForce,
    Route,
    deliver,
    newer_leader_term,
)
from cloudd.daemon.member.election import ElectionShell, Leadership
from cloudd.daemon.member.keeper import RecordKeeper
from cloudd.daemon.member.recorded import CloudRecord, Install
from cloudd.daemon.member.snapshot import MemberSnapshot
from cloudd.daemon.member.standins import IdleController, IdleElastic, IdleHooks, IdleHostCalls
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    Generation,
    ManifestOffer,
    ManifestWanted,
    NodeActed,
    NodeAction,
    NodeReport,
    OfferOrigin,
    Record,
    RecordAck,
    RecordHeld,
    RecordPush,
    RecordWanted,
    RoleAssignment,
)
from cloudd.daemon.node.actions import Pairs
from cloudd.durable import TermFile
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Message, WhoLeads
from cloudd.election.swim import Status
from cloudd.election.twohost import record_quorum
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.pki import Identity, MemberKind
from cloudd.providers.registry import Registry, default_registry
from cloudd.vmctl import plan
from cloudd.vmctl.hostagent import TERM_FILE, HostCommand, HostResult

if TYPE_CHECKING:
    from cloudd.daemon.host.duties import HostDuties, OpenBackend
    from cloudd.daemon.leader.controller import Controller
    from cloudd.daemon.leader.elasticity import ElasticLoop
    from cloudd.daemon.leader.fencing import CloudFencer
    from cloudd.daemon.leader.hooks import ProviderHooks
    from cloudd.daemon.leader.hostcalls import HostCalls

#: Seconds between two rounds of asking the pool hosts who leads, when leader messages name
#: a term this agent has not heard of: one round settles it, and a forger cannot turn this
#: agent into an amplifier.
ASK_EVERY = 1.0

#: Longest the assigner sleeps without a poke, seconds: a node that comes alive between two
#: of its own reports is assigned within it, and a member that lacks the manifest is offered
#: it again on time.
ASSIGN_WAKE = 2.0

_LIVENESS = {Status.ALIVE: plan.Liveness.ALIVE, Status.SUSPECT: plan.Liveness.SUSPECT,
             Status.DEAD: plan.Liveness.DEAD}


class NodeDuties(Protocol):
    """The node side (`cloudd.daemon.node.converge.NodeSide`), as the member uses it."""

    def assign(self, a: RoleAssignment) -> None: ...
    def update_cloud(self, cloud: Cloud) -> None: ...
    async def stop_services(self) -> None: ...
    async def run(self) -> None: ...
    def detach(self) -> None: ...
    async def cleanup(self, service: str) -> None: ...
    async def act(self, action: str, args: Pairs, *, peer: str = "",
                  term: int = 0) -> Pairs: ...
    def view(self) -> NodeReport: ...


NodeSideFactory = Callable[..., NodeDuties]
TaskFactory = Callable[[], Coroutine[Any, Any, None]]


def roster_of(cloud: Cloud) -> Roster:
    """Pool hosts first (they grant the leases and outrank nodes), then nodes, as written."""
    return Roster([Member(h.name, host=True) for h in cloud.pool]
                  + [Member(n.name) for n in cloud.nodes], two_host=cloud.two_host)


def addresses_of(cloud: Cloud) -> dict[str, str]:
    return {**{h.name: h.address for h in cloud.pool}, **{n.name: n.address for n in cloud.nodes}}


class CloudMember:
    """Everything one agent does for one cloud."""

    def __init__(self, *, settings: AgentSettings, cloud: Cloud, timing: Timing,
                 send: Callable[[str, Any], None],
                 request: Callable[[str, Any], Awaitable[Any]], events: EventLog,
                 clock: Clock = SYSTEM, open_backend: OpenBackend | None = None,
                 node_side: NodeSideFactory | None = None,
                 install: Install | None = None, providers: Registry | None = None) -> None:
        self.settings, self.cloud, self.me = settings, cloud, settings.name
        #: (cloud, nodes in use, the cloud with only those): `in_use`'s last answer
        self._in_use: tuple[Cloud, frozenset[str], Cloud] | None = None
        self.events, self.clock, self.timing = events, clock, timing
        self._send = send
        self.is_host = any(h.name == self.me for h in cloud.pool)
        self.is_node = any(n.name == self.me for n in cloud.nodes)
        if not (self.is_host or self.is_node):
            raise PermanentError(f"agent {self.me} is not a member of cloud {cloud.name}")
        self.log = log.get("member", cloud=cloud.name, node=self.me)
        self.state_dir = settings.state_dir / "clouds" / cloud.name
        #: the manifest's text per (generation, recipient), made once (`_text_for`)
        self._texts: dict[tuple[str, Recipient], str] = {}
        #: pool hosts a generation added while this agent ran: when it took it (monotonic)
        self._joined: dict[str, float] = {}
        # Only pool hosts lead, fence and run libvirt: a node builds (and imports) none of
        # the leader's or the host's parts, and holds stand-ins that answer as they would on
        # an agent that never leads (`standins`).
        fencer = self._fencer() if self.is_host else None
        self.election = ElectionShell(
            me=self.me, cloud=cloud.name, roster=roster_of(cloud),
            timing=timing if self.is_host else timing.for_node(), send=send,
            term_file=TermFile(self.state_dir / "term"), events=events, clock=clock,
            fence_file=TermFile(self.state_dir / TERM_FILE) if self.is_host else None,
            fence=self._peer_fencer(fencer) if fencer is not None else None)
        self.election.subscribe(self._leadership)
        self._group: asyncio.TaskGroup | None = None
        self._later: list[tuple[str, TaskFactory]] = []
        keeper = RecordKeeper(
            me=self.me, cloud=cloud.name, folder=self.state_dir, request=request,
            hosts=lambda: self.roster.hosts,
            quorum=lambda: self.quorum,
            acting_term=lambda: self.acting_term(), spawn=self._spawn,
            on_commit=lambda r, recovered: self.record.committed(r, recovered),
            on_taken=lambda r: self.record.taken(r),
        ) if self.is_host else None
        self.record = CloudRecord(me=self.me, cloud=lambda: self.cloud, keeper=keeper,
                                  clock=clock, install=install, spawn=self._spawn,
                                  poke=self._pokes, logger=self.log)
        self.host: HostDuties | None = None
        self.host_calls: HostCalls | IdleHostCalls = IdleHostCalls()
        self.controller: Controller | IdleController = IdleController()
        self.hooks: ProviderHooks | IdleHooks = IdleHooks()
        self.elastic: ElasticLoop | IdleElastic = IdleElastic()
        if fencer is not None:
            self._build_leading(fencer, request=request, open_backend=open_backend,
                                providers=providers)
        self.node_side = node_side(me=self.me, cloud=cloud, settings=settings,
                                   report=self._report_up) \
            if self.is_node and node_side is not None else None
        #: what the nodes last reported (the leader hears them all)
        self.reports: dict[str, NodeReport] = {}
        self._assigned: dict[str, RoleAssignment] = {}
        self._offered: dict[str, str] = {}
        self._acting_view: tuple[bool, int] = (False, -1)
        self._asked_at = float("-inf")
        self._poke = asyncio.Event()
        #: when the manifest in force was taken
        self.loaded_at = clock.wall()
        self.handlers: Mapping[Duty, Handler] = MappingProxyType({
            Duty.ELECTION: self._on_election,
            Duty.HOST_COMMAND: self._on_host_command,
            Duty.DOMAIN_EVENT: self._on_domain_event,
            Duty.ROLE_ASSIGNMENT: self._on_assignment,
            Duty.NODE_ACTION: self._on_node_action,
            Duty.NODE_REPORT: self._on_report,
            Duty.MANIFEST_WANTED: self._on_manifest_wanted,
            Duty.RECORD_WRITE: self._on_record_push,
            Duty.RECORD_GATHER: self._on_record_wanted,
        })

    def _fencer(self) -> CloudFencer:
        from cloudd.daemon.leader.fencing import CloudFencer

        # A fenced peer of a two-host pool is proven off: the controller does not fence again;
        # a host that has just joined the pool is not fenced while it may still be joining.
        return CloudFencer(lambda: self.cloud,
                           proven=lambda host: host in self.election.core.stand_ins(),
                           joined=self._joined.get, now=self.clock.monotonic)

    def _peer_fencer(self, fencer: CloudFencer) -> Callable[[str], None]:
        from cloudd.daemon.leader.fencing import PeerFencer

        return PeerFencer(fencer, cloud=self.cloud.name, me=self.me, spawn=self._spawn,
                          report=lambda peer, ok, why: self.election.fenced(
                              peer, ok=ok, reason=why))

    def _build_leading(self, fencer: CloudFencer, *,
                       request: Callable[[str, Any], Awaitable[Any]],
                       open_backend: OpenBackend | None, providers: Registry | None) -> None:
        """A pool host's parts: its host duties, and the leader's (which act only while it
        leads)."""
        from cloudd.daemon.host.duties import HostDuties, renderer_of
        from cloudd.daemon.leader.controller import Controller, policy_of
        from cloudd.daemon.leader.desired import desired_of
        from cloudd.daemon.leader.elasticity import ElasticLoop
        from cloudd.daemon.leader.hookplan import HookTiming
        from cloudd.daemon.leader.hooks import ProviderHooks
        from cloudd.daemon.leader.hostcalls import HostCalls

        settings, send, events, clock = self.settings, self._send, self.events, self.clock
        self.host = HostDuties(
            me=self.me, cloud=lambda: self.cloud, in_use=self.in_use, settings=settings,
            state_dir=self.state_dir,
            open_backend=open_backend, leader=lambda: self.election.leader, send=send,
            local=lambda host, event: self.controller.domain_event(host, event),
            # A command runs only for the member this host leased exactly that term to, or
            # for this agent itself while it acts in that term (it may lead on the other
            # hosts' leases while its own grantor is still fenced).
            holds_lease=lambda member, term: (
                self.election.holds_lease(member, term)
                or (member == self.me and self.acting_term() == term)),
            fence=self.election.host_fence,
        ) if self.is_host and open_backend is not None else None
        renderer = renderer_of(settings)
        self.host_calls = HostCalls(me=self.me, request=request, clock=clock,
                                    local=lambda: self.host,
                                    generation=lambda: renderer.generation(self.cloud))
        r = settings.reconcile
        self.controller = Controller(
            desired=lambda: desired_of(self.in_use(), held=self.maintenance.held,
                                       drains=self.record.drains),
            hosts=lambda: [h.name for h in self.cloud.pool],
            liveness=lambda host: _LIVENESS[self.election.host_status(host)],
            leader=self._controller_term, client=self.host_calls, events=events,
            render=lambda spec, term: renderer.render(self.cloud, spec.name, term),
            fencer=fencer,
            overlay=self._create_overlay, fetch=self._copy_to_host,
            resync=r.resync_interval, clock=clock, policy=policy_of(r),
            limits=plan.Limits(shutdown_timeout=r.shutdown_timeout), ready=self._healthy,
            emptied=lambda: self.elastic.emptied(), undefined=self._forget_node,
            migration=lambda host: next((h.migration for h in self.cloud.pool
                                         if h.name == host), None))
        registry = providers if providers is not None else default_registry()
        self.hooks = hooks = ProviderHooks(
            cloud=self.in_use, term=self.reconciling_term, healthy=self._healthy,
            provider=registry.get, request=request, events=events, released=self._pokes,
            clock=clock, timing=HookTiming(backoff=Backoff(base=r.backoff_base,
                                                           cap=r.backoff_max)))
        self.elastic = ElasticLoop(
            cloud=lambda: self.cloud, active=lambda: self.record.active,
            set_active=self.record.set_active, term=self.reconciling_term,
            cluster=hooks.cluster_now, provider=registry.get, events=events,
            drains=lambda: self.record.drains, where=self.controller.where,
            ready=self._healthy, held=lambda: self.maintenance.held, clock=clock)

    # The image code is loaded by the leader that first needs it: a node never leads.
    async def _create_overlay(self, host: str, spec: plan.NodeSpec) -> None:
        from cloudd.daemon.leader.imagecopy import create_overlay

        calls = self.host_calls
        assert not isinstance(calls, IdleHostCalls)  # only a pool host's controller asks
        await create_overlay(calls, host, spec, cloud=self.cloud.name,
                             term=self.acting_term)

    async def _copy_to_host(self, host: str, spec: plan.NodeSpec) -> None:
        from cloudd.daemon.leader.imagecopy import copy_to_host

        calls = self.host_calls
        assert not isinstance(calls, IdleHostCalls)  # only a pool host's controller asks
        await copy_to_host(calls, host, spec, term=self.acting_term)

    @property
    def roster(self) -> Roster:
        """The roster in force: the election's, which takes each generation's (`update`)."""
        return self.election.roster

    # -- what the leader side asks ----------------------------------------------------------
    def acting_term(self) -> int | None:
        return self.election.term if self.election.acting() else None

    def leading_term(self) -> int | None:
        """The term to act on the cloud in: this agent acts in it (election) and has the
        cloud's record of that term (gathered from a majority of the pool hosts)."""
        return self.record.leading_term()

    @property
    def quorum(self) -> int:
        """The answering pool hosts a record write (or recovery) needs, as inspect shows it:
        a fenced peer of a two-host pool counts as having answered."""
        return record_quorum(self.roster.quorum, self.election.core.stand_ins())

    def reconciling_term(self) -> int | None:
        """The term to act in, unless the operator paused the whole cloud."""
        return None if self.maintenance.whole_cloud else self.leading_term()

    def _controller_term(self) -> int | None:
        """The term the controller acts on domains in: none while the cloud is held for
        the provider's stop (`ProviderHooks.holding`)."""
        return None if self.hooks.holding() else self.reconciling_term()

    @property
    def maintenance(self) -> Maintenance:
        return self.record.maintenance

    def in_use(self) -> Cloud:
        """The cloud the leader side acts on: of its elastic roles' candidates, only those
        in use (the record's; `ElasticLoop`). Made again only when the cloud or the nodes in
        use change: the controller, the hooks and the host ask for it on every pass."""
        active = self.record.active
        kept = self._in_use
        if kept is None or kept[0] is not self.cloud or kept[1] != active:
            kept = self._in_use = (self.cloud, active, self.cloud.in_use(active))
        return kept[2]

    @property
    def generation(self) -> int:
        """The record's number of the generation in force here (0: not known here)."""
        return self.record.generation

    def _alive(self) -> frozenset[str]:
        return frozenset(n for n in self.roster.names
                         if self.election.status(n) is Status.ALIVE)

    def _healthy(self) -> frozenset[str]:
        """The nodes alive and ready, as the leader sees them (`assignment.healthy`)."""
        alive = self._alive()
        return frozenset(n for n in self.reports
                         if assignment.healthy(n, reports=self.reports, alive=alive))

    # -- what the operator asks -------------------------------------------------------------
    def snapshot(self) -> MemberSnapshot:
        e = self.election
        return MemberSnapshot(
            me=self.me, cloud=self.in_use(), generation=self.generation,
            loaded_at=self.loaded_at,
            taken_at=self.clock.wall(), monotonic=self.clock.monotonic(), leader=e.leader,
            term=e.term, acting=e.acting(), leader_since=e.leader_since, elections=e.elections,
            lease_duration=self.timing.lease_duration, members=self.roster.names,
            hosts=self.roster.hosts,
            quorum=self.quorum,
            liveness=MappingProxyType({n: e.status(n) for n in self.roster.names}),
            doubts=MappingProxyType(e.core.members.doubts()),
            reports=MappingProxyType(dict(self.reports)), controller=self.controller.view(),
            maintenance=self.maintenance.held,
            node=self.node_side.view() if self.node_side is not None else None,
            timings=self.host_calls.timings(), unproven=self.election.unproven(),
            hooks=self.hooks.view(also=self.elastic.findings()), drains=self.record.drains,
            elastic=self.elastic.view())

    def in_force(self) -> InForce:
        """The roster, the leader followed and its term, and what this agent is: for the
        dispatch table."""
        return InForce(cloud=self.cloud.name, hosts=self.roster.hosts,
                       nodes=frozenset(self.roster.names) - self.roster.hosts,
                       leader=self.election.leader, term=self.election.term,
                       me=MemberKind.HOST if self.is_host else MemberKind.NODE)

    def record_in_force(self) -> Record:
        return self.record.in_force()

    async def set_drain(self, host: str, *, on: bool, move_stateful: bool = False,
                        by: str = "") -> None:
        await self.record.set_drain(host, on=on, move_stateful=move_stateful, by=by)

    async def set_maintenance(self, subject: str | None, *, on: bool) -> None:
        await self.record.set_maintenance(subject, on=on)
        self.log.info("maintenance", reason=f"{'on' if on else 'off'} for "
                                            f"{subject or 'the whole cloud'}")

    async def new_generation(self, text: str, cloud: Cloud, *, by: str,
                             what: str) -> tuple[Generation, Path | None]:
        """`text` as the cloud's next generation (the leader's), unless it drops a pool host
        that still holds domains of the cloud (`poolchange.removal_refusal`)."""
        removed = {h.name for h in self.cloud.pool} - {h.name for h in cloud.pool}
        if removed:
            seen = {host: [d.node for d in domains]
                    for host, (domains, _) in self.controller.view().hosts.items()}
            refusal = poolchange.removal_refusal(removed, seen=seen,
                                                 fenced=self.controller.fenced,
                                                 cloud=cloud.name)
            if refusal is not None:
                why, moment = refusal
                self.log.warning("command_refused", op=what, reason=why)
                raise TemporaryError(why) if moment else PermanentError(why)
        return await self.record.new_generation(text, cloud, by=by, what=what)

    def reset_failures(self, node: str) -> None:
        """The operator's `cleanup NODE`: the leader forgets its failures and tries now."""
        self.controller.reset(node)

    async def cleanup_service(self, service: str) -> None:
        """The operator's `cleanup NODE/SERVICE`, on that node: restart the service now."""
        if self.node_side is None:
            raise PermanentError(f"{self.me} runs no services")
        await self.node_side.cleanup(service)

    # -- inputs -------------------------------------------------------------------------------
    def update(self, cloud: Cloud) -> None:
        """A new manifest generation (validated): reconcile towards it. On a pool host it
        comes from the record (the leader's, or the leader's offer); see `Clouds`."""
        if cloud.digest == self.cloud.digest:
            return
        roster = roster_of(cloud)
        if roster.members != self.roster.members or roster.two_host != self.roster.two_host:
            # From now on a dropped member gets nothing but refusals here, and an added
            # one is a member like any other (the dispatch table reads `self.roster`).
            before = self.roster.hosts
            self.election.change_roster(roster)
            now = self.clock.monotonic()
            for host in set(self._joined) - roster.hosts:
                del self._joined[host]
            self._joined.update(dict.fromkeys(roster.hosts - before, now))
            # What a dropped node reported or was sent goes with it: `inspect` shows no
            # phase for a node the cloud no longer has, and one added again starts afresh.
            for table in (self.reports, self._assigned, self._offered):
                for gone in set(table) - set(roster.names):
                    del table[gone]
        self.cloud = cloud
        self.loaded_at = self.clock.wall()
        number = self.generation
        self.events.append(LogEvent(self.loaded_at, cloud.name, LogKind.COMMAND, self.me,
                                 f"manifest generation "
                                 f"{number or cloud.digest[:12]} in force",
                                 self.election.term))
        if self.node_side is not None:
            self.node_side.update_cloud(cloud)
            if cloud.ensure is Ensure.STOPPED:
                self._spawn("stop-services", self._stop_services)
        self._pokes()

    async def handle(self, sender: Identity, msg: Any) -> Any:
        """A message for this cloud, through the dispatch table; returns the reply."""
        return await deliver(sender, msg, me=self.me, handlers=self.handlers,
                             here=self.in_force(), refused=self.refused)

    def refused(self, sender: Identity, msg: object, route: Route) -> None:
        """The dispatch table refused `msg`. A leader's message of a term newer than the
        one this agent follows may be true news (a Coordinator it missed): ask the pool hosts
        who leads, once per `ASK_EVERY`; their answers reach the election, and the leader
        sends again (assignments are re-sent until the node reports them)."""
        term = newer_leader_term(sender, msg, route, self.in_force())
        now = self.clock.monotonic()
        if term is None or now < self._asked_at + ASK_EVERY:
            return
        self._asked_at = now
        self.log.info("leader_asked", peer=sender.name, term=term,
                      reason=f"{sender.name} speaks as leader of term {term}, this agent "
                             f"follows {self.election.leader or 'nobody'} in term "
                             f"{self.election.term}")
        for host in sorted(self.roster.hosts - {self.me}):
            self._send(host, WhoLeads(self.election.term))

    def unreachable(self, peer: str) -> None:
        self.election.unreachable(peer)

    def _forget_node(self, node: str) -> None:
        """`node`'s domain was undefined: what it reported was its old VM's."""
        self.reports.pop(node, None)
        self._assigned.pop(node, None)

    def node_report(self, peer: str, report: NodeReport) -> None:
        """A node's report (the dispatch table has checked that it speaks for itself)."""
        before = self.reports.get(peer)
        self.reports[peer] = report
        if before is None or before.phase != report.phase:
            self.log.info("node_phase", peer=peer, role=self._role_of(peer), phase=report.phase,
                          reason=report.message or None)
            self._poke.set()
            self.hooks.poke()

    async def _on_election(self, peer: str, msg: Any) -> None:
        self.election.receive(peer, cast(Message, msg))

    async def _on_host_command(self, peer: str, command: HostCommand) -> HostResult:
        # The dispatch table has checked that `peer` is the leader this host follows, in the
        # command's term; the host room checks the lease it granted `peer` for that term.
        if self.host is None:
            raise PermanentError(f"{self.me} is not a pool host of {self.cloud.name}")
        return await self.host.execute(peer, command)

    async def _on_domain_event(self, peer: str, note: DomainEventNote) -> None:
        self.controller.domain_event(note.host, note.event)

    async def _on_assignment(self, peer: str, a: RoleAssignment) -> None:
        if self.node_side is None:
            raise PermanentError(f"{self.me} is not a node of {self.cloud.name}")
        self.node_side.assign(a)

    async def _on_node_action(self, peer: str, msg: NodeAction) -> NodeActed:
        # The dispatch table has checked that `peer` leads the term this node follows; the
        # node side checks the action against its role.
        why = (f"{self.me} is not a node of {self.cloud.name}" if self.node_side is None
               else f"{self.me} does not serve cloud {msg.cloud}"
               if msg.cloud != self.cloud.name else None)
        if why is not None:
            self.log.warning("action_refused", peer=peer, term=msg.term, action=msg.action,
                             reason=why)
            raise PermanentError(why)
        assert self.node_side is not None
        answer = await self.node_side.act(msg.action, msg.args, peer=peer, term=msg.term)
        return NodeActed(self.me, msg.action, answer)

    async def _on_report(self, peer: str, report: NodeReport) -> None:
        self.node_report(peer, report)

    async def _on_manifest_wanted(self, peer: str, msg: ManifestWanted) -> ManifestOffer:
        if msg.cloud != self.cloud.name:
            raise PermanentError(f"{self.me} does not serve cloud {msg.cloud}")
        return ManifestOffer(self.cloud.name, self.cloud.digest,
                             self._text_for(peer), OfferOrigin.SEED, self.election.term,
                             self.generation)

    async def _on_record_push(self, peer: str, push: RecordPush) -> RecordAck:
        # The dispatch table has checked that `peer` leads the term this host follows, that
        # the push is of that term, and that this agent is a pool host.
        return await self.record.host_keeper().on_push(peer, push)

    async def _on_record_wanted(self, peer: str, msg: RecordWanted) -> RecordHeld:
        return await self.record.host_keeper().on_wanted(peer, msg)

    def _text_for(self, member: str) -> str:
        """The manifest as `member` may see it: whole for a pool host, a node's view else.

        Made once per generation: YAML costs milliseconds on the event loop, and any member
        may ask for its manifest as often as it likes."""
        recipient = recipient_of(self.cloud, member)
        key = (self.cloud.digest, recipient)
        cached = self._texts.get(key)
        if cached is None:
            cached = text_for(self.cloud, recipient)
            self._texts = {key: cached, **{k: v for k, v in self._texts.items()
                                           if k[0] == self.cloud.digest}}
        return cached

    def _pokes(self) -> None:
        self.controller.poke()
        self.hooks.poke()
        self._poke.set()

    def _report_up(self, report: NodeReport) -> None:
        """This agent's node side reports: to the leader, wherever it is."""
        leader = self.election.leader
        if leader == self.me:
            self.node_report(self.me, report)
        elif leader:
            self._send(leader, report)

    def _role_of(self, node: str) -> str:
        with contextlib.suppress(KeyError):
            return self.cloud.node(node).role
        return ""

    def _leadership(self, view: Leadership) -> None:
        # Only a change of who acts, or in which term, matters here: `acting_until` moves
        # with every lease renewal, several times a second.
        before, self._acting_view = self._acting_view, (view.acting, view.term)
        if view.acting and before != self._acting_view:
            # A new acting leader re-observes everything and re-sends every assignment.
            self._assigned.clear()
            self._offered.clear()
            self._pokes()
            self.record.recover(view.term)

    # -- tasks ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run every duty of this member until cancelled; every task it starts ends with it."""
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            tg.create_task(self.election.run(), name="election")
            for name, part in (("controller", self.controller), ("provider-hooks", self.hooks),
                               ("elastic", self.elastic)):
                if not isinstance(part, IdleController | IdleHooks | IdleElastic):
                    tg.create_task(part.run(), name=name)
            tg.create_task(self._tend(), name="assigner")
            if self.host is not None:
                tg.create_task(self.host.run(), name="host")
            if self.node_side is not None:
                tg.create_task(self.node_side.run(), name="node")
            for name, factory in self._later:
                tg.create_task(factory(), name=name)
            self._later.clear()

    def _spawn(self, name: str, factory: TaskFactory) -> None:
        """Start a task owned by this member's task group (once it runs)."""
        if self._group is None:
            self._later.append((name, factory))
        else:
            self._group.create_task(factory(), name=name)

    async def _stop_services(self) -> None:
        assert self.node_side is not None
        try:
            await self.node_side.stop_services()
        except ClouddError as e:
            self.log.error("services_not_stopped", reason=str(e))

    async def _tend(self) -> None:
        """Hand out the manifest and, while acting, the role assignments; on every poke."""
        period = min(self.settings.reconcile.resync_interval, ASSIGN_WAKE)
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that comes
            # as the poke does, and the member's task group would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._poke.wait()
            self._poke.clear()
            alive = self._alive()
            if self.record.keeper is not None and self.leading_term() is not None:
                self.record.keeper.catch_up(alive)
                self.record.make_secrets()
            self._distribute(alive)
            term = self.reconciling_term()
            if term is not None:
                self._assign(term, alive)

    def _distribute(self, alive: frozenset[str]) -> None:
        # Held for the provider's stop: the nodes keep the generation they run until it is done.
        held = self.hooks.holding()
        todo = distribution.offers(
            me=self.me, alive=alive,
            members=[m for m in self.roster.names if not (held and m not in self.roster.hosts)],
            leading=self.leading_term() is not None, seeding=self.is_host,
            digest=self.cloud.digest,
            now=self.clock.monotonic(), offered=self._offered)
        if not todo:
            return
        for offer in todo:
            self._offered[offer.member] = offer.key
            self._send(offer.member, ManifestOffer(
                self.cloud.name, self.cloud.digest, self._text_for(offer.member),
                offer.origin, self.election.term, self.generation))

    def _assign(self, term: int, alive: frozenset[str]) -> None:
        wanted = assignment.assignments(self.in_use(), term=term, reports=self.reports,
                                        alive=alive, generated=self.record.generated())
        for a in assignment.due(wanted, sent=self._assigned, reports=self.reports, alive=alive,
                                maintenance=self.maintenance.held):
            self._assigned[a.node] = a
            self.log.info("role_assigned", peer=a.node, role=a.role, term=term,
                          peers=len(a.peers))
            self._send(a.node, a)
