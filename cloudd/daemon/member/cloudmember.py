"""One agent's part in one cloud: election, host duties, leadership, node duties, wired.

Theory of operation. The manifest lists every member of the cloud: its pool hosts and its
nodes. Every member runs the same agent, and every agent here does what its place in the
manifest asks of it:
- every member takes part in membership and the election (`ElectionShell`);
- a pool host runs a `HostAgent` over its libvirt connection, answers the leader's fenced
  commands, and forwards its domain events to the leader at once;
- a node (a VM, or a `managed: false` machine) runs a `NodeSide`: it takes its role
  assignment from the leader, converges its role and supervises its services;
- the acting leader, whoever it is, runs the `Controller` (domains) and hands out role
  assignments in the type's dependency order (a role is assigned once every role before it has
  a ready node), with the health of the peers each role depends on.
The leader's controller and assigner run on every agent but act only while the election says
this agent holds a host quorum lease: they ask `acting_term()` before every step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from cloudd import log
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud, Ensure, RunStrategy
from cloudd.config.portable import portable_text
from cloudd.daemon.base.durable import TermFile
from cloudd.daemon.base.eventlog import Event, EventKind, EventLog
from cloudd.daemon.leader.controller import CommandFencer, Controller, copy_to_host
from cloudd.daemon.member.election import ElectionShell, Leadership
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    InspectAnswer,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodeReport,
    OfferOrigin,
    PeerInfo,
    RoleAssignment,
)
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import MESSAGE_TYPES, Message
from cloudd.election.swim import Status
from cloudd.errors import PermanentError, TemporaryError
from cloudd.vmctl import plan
from cloudd.vmctl.backend import Backend, DomainEvent
from cloudd.vmctl.hostagent import HostAgent, HostCommand, HostResult, Op, Outcome
from cloudd.vmctl.identity import NodeIdentity, cmdline_words
from cloudd.vmctl.images import CopySettings
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, domain_name, render_domain

_ELECTION = tuple(MESSAGE_TYPES.values())

_LIVENESS = {Status.ALIVE: plan.Liveness.ALIVE, Status.SUSPECT: plan.Liveness.SUSPECT,
             Status.DEAD: plan.Liveness.DEAD}


def roster_of(cloud: Cloud) -> Roster:
    """Pool hosts first (they grant the leases and outrank nodes), then nodes, as written."""
    return Roster([Member(h.name, host=True) for h in cloud.pool]
                  + [Member(n.name) for n in cloud.nodes])


def addresses_of(cloud: Cloud) -> dict[str, str]:
    return {**{h.name: h.address for h in cloud.pool}, **{n.name: n.address for n in cloud.nodes}}


def desired_of(cloud: Cloud) -> plan.Desired:
    pool = {h.name: h.address for h in cloud.pool}
    nodes = tuple(
        plan.NodeSpec(name=n.name, role=n.role, memory_mib=n.memory_mib, vcpus=n.vcpus,
                      image=n.image or "", base_image=n.base_image, pin=n.host,
                      run=plan.RunStrategy(n.run.value if isinstance(n.run, RunStrategy)
                                           else n.run),
                      managed=n.managed,
                      source=plan.ImageSource(n.source_host, pool[n.source_host])
                      if n.source_host else None)
        for n in cloud.nodes)
    return plan.Desired(cloud=cloud.name,
                        ensure=plan.Ensure(cloud.ensure.value), nodes=nodes,
                        role_order=cloud.roles)


class CloudMember:
    """Everything one agent does for one cloud."""

    def __init__(self, *, settings: AgentSettings, cloud: Cloud,
                 timing: Timing, send: Callable[[str, Any], None],
                 request: Callable[[str, Any], Awaitable[Any]], events: EventLog,
                 backend_factory: Callable[[str], Awaitable[Backend]] | None = None,
                 node_side: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.cloud = settings, cloud
        self.me = settings.name
        self._send, self._request, self.events, self._clock = send, request, events, clock
        self.is_host = any(h.name == self.me for h in cloud.pool)
        self.is_node = any(n.name == self.me for n in cloud.nodes)
        if not (self.is_host or self.is_node):
            raise PermanentError(f"agent {self.me} is not a member of cloud {cloud.name}")
        self.state_dir = settings.state_dir / "clouds" / cloud.name
        self.roster = roster_of(cloud)
        self.election = ElectionShell(
            me=self.me, cloud=cloud.name, roster=self.roster, timing=timing, send=send,
            term_file=TermFile(self.state_dir / "term"), events=events)
        self.election.subscribe(self._leadership)
        self.log = log.get("cluster", cloud=cloud.name, node=self.me)
        self._backend_factory = backend_factory
        self.host_agent: HostAgent | None = None
        self.node_side = node_side
        self.reports: dict[str, NodeReport] = {}
        self._assigned: dict[str, RoleAssignment] = {}
        self._assign_poke = asyncio.Event()
        self.controller = Controller(
            desired=self._desired, hosts=lambda: [h.name for h in self.cloud.pool],
            liveness=self._liveness, leader=self._reconciling_term, client=self, events=events,
            render=self._render, fencer=CommandFencer(self._fence_commands()),
            overlay=self._overlay, fetch=self._fetch,
            resync=settings.reconcile.resync_interval, clock=clock,
            limits=plan.Limits(shutdown_timeout=settings.reconcile.shutdown_timeout))
        self._template_cache: tuple[Path, str] | None = None
        #: generations of the manifest taken since the agent started, and when the last came
        self.generation = 1
        self.loaded_at = clock()
        self._stopping: asyncio.Future[None] | None = None
        #: operator's maintenance: the whole cloud (None in the set) or single nodes
        self.maintenance: set[str | None] = self._load_maintenance()
        self._offered: dict[str, str] = {}
        self._acting_view: tuple[bool, int] = (False, -1)
        #: (host command, seconds) of the leader's recent calls to hosts
        self.latencies: collections.deque[tuple[str, float]] = collections.deque(maxlen=1000)

    # -- what the leader side asks --------------------------------------------------------
    def acting_term(self) -> int | None:
        return self.election.term if self.election.acting() else None

    def _reconciling_term(self) -> int | None:
        """The term to act in, unless the operator paused the whole cloud."""
        return None if None in self.maintenance else self.acting_term()

    def _desired(self) -> plan.Desired:
        desired = desired_of(self.cloud)
        if not self.maintenance:
            return desired
        # A node in maintenance is left as it is: never started, stopped or moved.
        held = plan.RunStrategy.MANUAL
        return replace(desired, nodes=tuple(
            replace(n, run=held) if n.name in self.maintenance else n for n in desired.nodes))

    def set_maintenance(self, subject: str | None, *, on: bool) -> None:
        if subject is not None and subject not in {n.name for n in self.cloud.nodes}:
            raise PermanentError(f"unknown node {subject!r} in cloud {self.cloud.name}")
        (self.maintenance.add if on else self.maintenance.discard)(subject)
        path = self.state_dir / "maintenance.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(s or "" for s in self.maintenance)))
        os.replace(tmp, path)
        self.log.info("maintenance", reason=f"{'on' if on else 'off'} for "
                                            f"{subject or 'the whole cloud'}")
        self.controller.poke()
        self._assign_poke.set()

    def maintenance_view(self) -> list[str]:
        return sorted(s or "(cloud)" for s in self.maintenance)

    def _load_maintenance(self) -> set[str | None]:
        try:
            names = json.loads((self.state_dir / "maintenance.json").read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {n or None for n in names if isinstance(n, str)}

    def _liveness(self, host: str) -> plan.Liveness:
        return _LIVENESS[self.election.status(host)]

    async def _overlay(self, host: str, spec: plan.NodeSpec) -> None:
        """The planner's CreateOverlay: the node's image as an overlay of its base image."""
        if not spec.base_image:
            raise PermanentError(f"node {spec.name} has no base image to overlay")
        term = self.acting_term()
        if term is None:
            raise TemporaryError("no longer the acting leader")
        result = await self.call(host, HostCommand(Op.OVERLAY, term, image=spec.image,
                                                   base=spec.base_image))
        if result.outcome not in (Outcome.DONE, Outcome.NOOP):
            raise TemporaryError(f"overlay of {spec.name} on {host}: {result.message}")

    async def _fetch(self, host: str, spec: plan.NodeSpec) -> None:
        """The planner's CopyImage: `host` copies the node's missing image from its source."""
        await copy_to_host(self, host, spec, term=self.acting_term)

    def _fence_commands(self) -> dict[str, list[str]]:
        return {h.name: list(h.fence) for h in self.cloud.pool if h.fence}

    def _render(self, spec: plan.NodeSpec, term: int) -> str:
        path = self.cloud.domain_template
        if self._template_cache is None or self._template_cache[0] != path:
            self._template_cache = (path, path.read_text())
        node = self.cloud.node(spec.name)
        ident = NodeIdentity(
            cloud=self.cloud.name, node=node.name, role=node.role,
            address=f"{node.address}/{self.cloud.prefix_length}",
            gateway=self.cloud.gateway or "",
            members=tuple(f"{h.name}@{h.address}:{self.settings.listen.port}"
                          for h in self.cloud.pool),
            term=term, pki=str(self.settings.pki.ca.parent))
        domain = NodeDomain(
            meta=CloudMeta(cloud=self.cloud.name, node=node.name, role=node.role, term=term),
            memory_mib=spec.memory_mib, vcpus=spec.vcpus, image=spec.image,
            cmdline=" ".join(cmdline_words(ident)),
            extra=self._template_extra(node.name))
        return render_domain(self._template_cache[1], domain, source=str(path))

    def _template_extra(self, node: str) -> dict[str, str]:
        extra = dict(self.cloud.template_values)
        # Templates may ask for a console log; each domain gets its own file, where libvirt
        # keeps its domains' logs on the host that runs it.
        extra.setdefault("serial_log", f"/var/log/libvirt/qemu/"
                                       f"{domain_name(self.cloud.name, node)}.serial.log")
        return extra

    async def call(self, host: str, command: HostCommand) -> HostResult:
        """HostClient: the local host agent directly, any other over the transport."""
        started = time.monotonic()
        try:
            return await self._call(host, command)
        finally:
            # drained by the metrics feed; bounded so that nobody reading it costs memory
            self.latencies.append((command.op.value, time.monotonic() - started))

    async def _call(self, host: str, command: HostCommand) -> HostResult:
        if host == self.me and self.host_agent is not None:
            return await self.host_agent.execute(command)
        reply = await self._request(host, command)
        if not isinstance(reply, HostResult):
            raise TemporaryError(f"host {host} answered {type(reply).__name__}, not a result")
        return reply

    # -- inputs ---------------------------------------------------------------------------
    @property
    def manifest_text(self) -> str:
        return self.cloud.text

    def update(self, cloud: Cloud) -> None:
        """A new manifest generation (validated): reconcile towards it."""
        if cloud.digest == self.cloud.digest:
            return
        self.cloud = cloud
        self.generation += 1
        self.loaded_at = self._clock()
        self.events.append(Event(self._clock(), cloud.name, EventKind.COMMAND, self.me,
                                 f"manifest generation {cloud.digest[:12]} in force",
                                 self.election.term))
        if self.node_side is not None:
            self.node_side.update_cloud(cloud)
            if cloud.ensure is Ensure.STOPPED:
                self._stopping = asyncio.ensure_future(self.node_side.stop_services())
        self.controller.poke()
        self._assign_poke.set()

    async def handle(self, peer: str, msg: Any) -> Any:
        """Everything the transport delivers for this cloud; the return value is the reply."""
        if isinstance(msg, _ELECTION):
            self.election.receive(peer, cast(Message, msg))
            return None
        if isinstance(msg, HostCommand):
            if self.host_agent is None:
                raise PermanentError(f"{self.me} is not a pool host of {self.cloud.name}")
            return await self.host_agent.execute(msg)
        if isinstance(msg, DomainEventNote):
            self.controller.domain_event(msg.host, msg.event)
            return None
        if isinstance(msg, RoleAssignment):
            if self.node_side is None:
                raise PermanentError(f"{self.me} is not a node of {self.cloud.name}")
            self.node_side.assign(msg)
            return None
        if isinstance(msg, NodeReport):
            self._node_report(peer, msg)
            return None
        if isinstance(msg, ManifestWanted):
            if msg.cloud != self.cloud.name:
                raise PermanentError(f"{self.me} does not serve cloud {msg.cloud}")
            return ManifestOffer(self.cloud.name, self.cloud.digest,
                                 portable_text(self.cloud, self.manifest_text), OfferOrigin.SEED,
                                 self.election.term)
        if isinstance(msg, InspectWanted):
            if self.inspect_source is None:
                raise TemporaryError("inspection is not ready")
            return InspectAnswer(self.cloud.name, self.inspect_source())
        raise PermanentError(f"{self.me} has no use for {type(msg).__name__}")

    #: set by the agent: returns the inspect document's JSON text (leader's view)
    inspect_source: Callable[[], str] | None = None

    def unreachable(self, peer: str) -> None:
        self.election.unreachable(peer)

    def _node_report(self, peer: str, report: NodeReport) -> None:
        if report.node != peer:
            self.log.warning("node_report_refused", peer=peer, reason=f"names {report.node}")
            return
        before = self.reports.get(peer)
        self.reports[peer] = report
        if before is None or before.phase != report.phase:
            self.log.info("node_phase", peer=peer, role=self._role_of(peer), phase=report.phase,
                          reason=report.message or None)
            self._assign_poke.set()

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
            self.controller.poke()
            self._assign_poke.set()

    # -- root tasks -----------------------------------------------------------------------
    async def run(self) -> None:
        """Run every duty of this member until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.election.run(), name="election")
            tg.create_task(self.controller.run(), name="controller")
            tg.create_task(self._assigner(), name="assigner")
            if self.is_host and self._backend_factory is not None:
                tg.create_task(self._host_duties(), name="host")
            if self.node_side is not None:
                tg.create_task(self.node_side.run(), name="node")

    async def _host_duties(self) -> None:
        assert self._backend_factory is not None
        uri = next(h.libvirt_uri for h in self.cloud.pool if h.name == self.me) \
            or self.settings.libvirt.uri or "qemu:///system"
        backend = await self._backend_factory(uri)
        self.host_agent = HostAgent(backend, state_dir=self.state_dir, host=self.me,
                                    image_dirs=tuple(self.settings.libvirt.image_dirs),
                                    copy=CopySettings.of(self.settings.images))
        self.log.info("host_ready", host=self.me, uri=uri)
        try:
            await self.host_agent.run_events(self._forward)
        finally:
            await self.host_agent.close()
            await backend.close()

    def _forward(self, event: DomainEvent) -> None:
        if event.meta is not None and event.meta.cloud != self.cloud.name:
            return
        leader = self.election.leader
        if leader == self.me:
            self.controller.domain_event(self.me, event)
        elif leader:
            self._send(leader, DomainEventNote(self.me, event))

    async def _assigner(self) -> None:
        period = self.settings.reconcile.resync_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._assign_poke.wait(), timeout=min(period, 2.0))
            self._assign_poke.clear()
            self._distribute()
            term = self._reconciling_term()
            if term is None:
                continue
            for assignment in self.assignments(term):
                node = assignment.node
                if self._assigned.get(node) == assignment and node in self.reports \
                        and self.reports[node].generation == assignment.generation:
                    continue
                if self.election.status(node) is not Status.ALIVE or node in self.maintenance:
                    continue
                self._assigned[node] = assignment
                self.log.info("role_assigned", peer=node, role=assignment.role, term=term,
                              peers=len(assignment.peers))
                self._send(node, assignment)

    def _distribute(self) -> None:
        """Make sure every member has the manifest. The acting leader sends each live member
        its generation once (and again when the member comes back); any member sends the
        manifest to members that do not answer, now and then, so that hosts that never had
        it (a cloud started from one machine) join."""
        leading = self.election.acting()
        now = self._clock()
        text: str | None = None
        for name in self.roster.names:
            if name == self.me:
                continue
            alive = self.election.status(name) is Status.ALIVE
            if alive and not leading:
                continue
            key = self.cloud.digest if alive else f"{self.cloud.digest}@{int(now // 10)}"
            if self._offered.get(name) == key:
                continue
            if text is None:
                text = portable_text(self.cloud, self.manifest_text)
            self._offered[name] = key
            self._send(name, ManifestOffer(self.cloud.name, self.cloud.digest, text,
                                           OfferOrigin.LEADER if leading else OfferOrigin.SEED,
                                           self.election.term))

    def healthy(self, node: str) -> bool:
        report = self.reports.get(node)
        return (report is not None and report.phase == "ready"
                and self.election.status(node) is Status.ALIVE)

    def assignments(self, term: int) -> list[RoleAssignment]:
        """What every node should be told now (pure given reports and liveness)."""
        if self.cloud.ensure is Ensure.STOPPED:
            return []
        out: list[RoleAssignment] = []
        peers = tuple(PeerInfo(n.name, n.role, n.address, self.healthy(n.name))
                      for n in self.cloud.nodes)
        for i, role in enumerate(self.cloud.roles):
            before = self.cloud.roles[:i]
            if not all(any(self.healthy(n.name) for n in self.cloud.nodes_of(r))
                       for r in before):
                break
            for n in self.cloud.nodes_of(role):
                out.append(RoleAssignment(
                    term=term, cloud=self.cloud.name, node=n.name, role=role,
                    address=n.address, generation=self.cloud.digest,
                    peers=tuple(p for p in peers if p.node != n.name)))
        return out

