"""The leader's elastic loop: the shell that lets an elastic role's nodes follow the queue.

Theory of operation. One task per member; it acts only in the reconciling term (the record
gathered, the cloud not paused), every `EVERY` seconds. For each elastic role of the cloud
it reads the scheduler through the provider (`Provider.demand`, on the nodes in use), asks
the pure core (`elastic.step`) what to change, and does it: a node to drain is drained in the
scheduler (`Provider.release`), a drain undone (`Provider.keep`), and the nodes in use are
written to the cloud's record (`CloudRecord.set_active`: on a majority of the pool hosts,
so that the next leader goes on from there). The member's leader side acts on the cloud with
only the nodes in use (`Cloud.in_use`): a node taken gets its domain and its assignment like
any node; a node that left has its domain removed like a node that left the manifest, and
the provider's configure takes it out of the scheduler.

The same pass moves the batch compute nodes of drained hosts gently: it has the scheduler
drain each (`Provider.release` with `Release.MOVE`), tells the planner which ones it shows
drained with no job left (`emptied`: the planner moves those), and undoes the drain once the
node is ready on another host or its host is undrained (`leader.drain.batch_moves`). For a
cloud with no elastic role it reads the scheduler only while a host is drained, or a node
drained to move is left to resume, or once per term (a new leader finishing the last one's
moves).

A scheduler that cannot answer (the head not up yet, a slurmctld restarting) changes nothing
but the minimum: the role still gets its `min` nodes, so that a new cloud starts. Every
change is in the event log and the agent's log (`elastic_changed`) with its reason, and each
role's state is a finding for the whole cloud (check `elastic ROLE`) that `inspect` shows;
`cloudd-cli plan` shows the same states and this agent's last decisions (`view`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace

from cloudd import log
from cloudd.config.model import Cloud
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader import elastic
from cloudd.daemon.leader.drain import NO_DRAINS, Drains, batch_moves, move_of
from cloudd.daemon.leader.views import ElasticDecision, ElasticView
from cloudd.errors import ClouddError, TemporaryError
from cloudd.providers.base import ClusterView, Finding, NodeUse, Provider, Release
from cloudd.vmctl.plan import DrainMove

#: Seconds between two passes.
EVERY = 5.0
#: Seconds one provider call may take.
CALL_WITHIN = 30.0
#: Decisions kept for `cloudd-cli plan` (the event log keeps them all).
RECENT = 12


class ElasticLoop:
    """Keeps one cloud's elastic roles following their queues, and has the scheduler drain
    the batch nodes of drained hosts before they move, while this agent leads."""

    def __init__(self, *, cloud: Callable[[], Cloud], active: Callable[[], Collection[str]],
                 set_active: Callable[[Collection[str]], Awaitable[None]],
                 term: Callable[[], int | None], cluster: Callable[[], ClusterView | None],
                 provider: Callable[[str], Provider], events: EventLog,
                 drains: Callable[[], Drains] = lambda: NO_DRAINS,
                 where: Callable[[], Mapping[str, str]] = dict,
                 ready: Callable[[], frozenset[str]] = frozenset,
                 held: Callable[[], Collection[str | None]] = frozenset,
                 clock: Clock = SYSTEM, every: float = EVERY) -> None:
        self._cloud, self._active, self._set_active = cloud, active, set_active
        self._term, self._cluster, self._provider = term, cluster, provider
        #: the drains in force, where each node's domain is, the nodes ready (leader's view)
        self._drains, self._where, self._ready = drains, where, ready
        #: the operator's maintenance holds: a node held stays where it is
        self._held = held
        self.events, self.clock, self.every = events, clock, every
        self._memory: dict[str, elastic.Memory] = {}
        self._seen_term: int | None = None
        self._findings: dict[str, Finding] = {}
        self._decisions: deque[ElasticDecision] = deque(maxlen=RECENT)
        #: per batch role, its nodes the scheduler showed drained to move (its last answer:
        #: kept through a pass it did not answer), and the nodes the planner may move now
        self._moving: dict[str, frozenset[str]] = {}
        self._emptied: frozenset[str] = frozenset()
        self._looked = False  # the batch roles read once in this term
        self.log = log.get("elastic")

    def emptied(self) -> frozenset[str]:
        """Batch nodes of drained hosts their scheduler shows drained with no job left, for
        the planner (`Observed.emptied`)."""
        return self._emptied if self._term() is not None else frozenset()

    def findings(self) -> tuple[Finding, ...]:
        """Each elastic role's state, for `inspect` (while this agent leads)."""
        return tuple(self._findings.values()) if self._term() is not None else ()

    def view(self) -> ElasticView:
        """The roles' states and this agent's last decisions (of any term it led in)."""
        return ElasticView(self.findings(), tuple(self._decisions))

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except ClouddError as exc:  # a record write without a majority: next pass
                self.log.warning("elastic_failed", cloud=self._cloud().name, reason=str(exc))
            await asyncio.sleep(self.every)

    async def step(self) -> None:
        """One pass over every elastic role, and the batch nodes of drained hosts."""
        term, cloud = self._term(), self._cloud()
        if term != self._seen_term:
            # a new leader starts counting idleness afresh (it only delays a shrink)
            self._memory.clear()
            self._findings.clear()
            self._moving.clear()
            self._emptied = frozenset()
            self._seen_term, self._looked = term, False
        if term is None:
            self._findings.clear()
            self._emptied = frozenset()
            return
        drains = self._drains()
        batch = [r for r in cloud.roles
                 if move_of(cloud.type, (r,)) is DrainMove.SCHEDULED]
        look = set(cloud.elastic)
        if drains.hosts or any(self._moving.values()) or not self._looked:
            look |= set(batch)
        if not look:
            self._findings.clear()
            self._emptied = frozenset()
            return
        provider, cluster = self._provider(cloud.type), self._cluster()
        before = frozenset(self._active())
        after = set(before)
        taken: list[elastic.ElasticChange] = []
        emptied: set[str] = set()
        for role in sorted(look):
            wanted, use, unseen, seen = await self._demand(provider, cluster, role)
            if role in batch and not unseen:
                self._looked = True
                self._moving[role] = frozenset(n for n, u in seen.items() if u.moving)
                emptied |= await self._batch_moves(provider, cluster, cloud, role, seen,
                                                   drains, term)
            spec = cloud.elastic.get(role)
            if spec is None:
                continue
            candidates = cloud.candidates(role)
            names = [n.name for n in candidates]
            s = elastic.step(
                elastic.Bounds(spec.min, spec.max, spec.idle_after, spec.cooldown), names,
                [n for n in names if n in before], wanted, use,
                self._memory.get(role, elastic.Memory()),
                vcpus=candidates[0].vcpus if candidates else 1, now=self.clock.monotonic())
            memory = s.memory
            for change in s.changes:
                if change.what in ("take", "leave"):
                    taken.append(change)
                    continue
                memory = await self._scheduler(provider, cluster, role, change, memory, term)
            self._memory[role] = memory
            after = (after - set(names)) | set(s.active)
            self._show(role, s, memory, unseen)
        self._emptied = frozenset(emptied)
        if after != before:
            await self._set_active(sorted(after))
            for change in taken:
                self._record(change, term)

    async def _batch_moves(self, provider: Provider, cluster: ClusterView | None,
                           cloud: Cloud, role: str, use: Mapping[str, NodeUse],
                           drains: Drains, term: int) -> set[str]:
        """Drain in the scheduler the role's nodes on drained hosts that may leave them (not
        pinned there, not held, managed), undo it for those moved; the nodes the planner may
        move now."""
        where, held = self._where(), set(self._held())
        movable = [n.name for n in cloud.nodes_of(role)
                   if n.managed and n.name not in held and None not in held
                   and (n.host is None or n.host != where.get(n.name))]
        moves = batch_moves(movable, where=where, drains=drains, use=use,
                            ready=self._ready())
        for node, call, why in (
                *((n, "drain", "on a drained host: its jobs end before it moves")
                  for n in moves.release),
                *((n, "keep", "moved off its drained host (or the host undrained): it takes "
                              "jobs again") for n in moves.keep)):
            try:
                if cluster is None:
                    raise TemporaryError("the cloud's nodes are not known here yet")
                async with asyncio.timeout(CALL_WITHIN):
                    if call == "drain":
                        await provider.release(cluster, role, node, Release.MOVE)
                    else:
                        await provider.keep(cluster, role, node)
            except (ClouddError, TimeoutError) as exc:
                self.log.warning("drain_move_failed", cloud=self._cloud().name, node=node,
                                 op=call, reason=str(exc) or "timed out")
                continue
            self._record(elastic.ElasticChange(node, call, why), term)
        return set(moves.emptied)

    async def _demand(self, provider: Provider, cluster: ClusterView | None, role: str
                      ) -> tuple[elastic.Wanted, dict[str, elastic.Use], str,
                                 Mapping[str, NodeUse]]:
        """The scheduler's word (for the core, and as it came), or nothing and why (then
        only the minimum is kept)."""
        try:
            if cluster is None:
                raise TemporaryError("the cloud's nodes are not known here yet")
            async with asyncio.timeout(CALL_WITHIN):
                d = await provider.demand(cluster, role)
        except TimeoutError:
            return (elastic.Wanted(), {}, f"the scheduler did not answer in {CALL_WITHIN:g}s",
                    {})
        except ClouddError as exc:
            return elastic.Wanted(), {}, str(exc), {}
        return (elastic.Wanted(d.jobs, d.nodes, d.cpus),
                {n: elastic.Use(u.ready, u.busy, u.released, u.moving)
                 for n, u in d.use.items()}, "",
                d.use)

    async def _scheduler(self, provider: Provider, cluster: ClusterView | None, role: str,
                         change: elastic.ElasticChange, memory: elastic.Memory,
                         term: int) -> elastic.Memory:
        """Drain or undo a drain in the scheduler; on failure the core's memory goes back
        (the next pass decides again)."""
        call = provider.release if change.what == "drain" else provider.keep
        try:
            if cluster is None:
                raise TemporaryError("the cloud's nodes are not known here yet")
            async with asyncio.timeout(CALL_WITHIN):
                await call(cluster, role, change.node)
        except (ClouddError, TimeoutError) as exc:
            self.log.warning("elastic_failed", cloud=self._cloud().name, node=change.node,
                             op=change.what, reason=str(exc) or "timed out")
            back = (memory.releasing - {change.node} if change.what == "drain"
                    else memory.releasing | {change.node})
            return replace(memory, releasing=frozenset(back))
        self._record(change, term)
        return memory

    def _record(self, change: elastic.ElasticChange, term: int) -> None:
        cloud = self._cloud().name
        reason = f"{change.what} {change.node}: {change.reason}"
        self.log.info("elastic_changed", cloud=cloud, node=change.node, op=change.what,
                      term=term, reason=change.reason)
        at = self.clock.wall()
        self.events.append(LogEvent(at, cloud, LogKind.ACTION, change.node, reason, term))
        self._decisions.append(ElasticDecision(at, term, change))

    def _show(self, role: str, s: elastic.ElasticStep, memory: elastic.Memory,
              unseen: str) -> None:
        bounds = self._cloud().elastic[role]
        message = f"{len(s.active)} node(s) in use, of {bounds.min} to {bounds.max}"
        parts = []
        if memory.releasing:
            parts.append(f"draining to leave: {', '.join(sorted(memory.releasing))}")
        if s.waiting:
            parts.append(s.waiting)
        if unseen:
            parts.append(f"no word from the scheduler: {unseen}")
        self._findings[role] = Finding(f"elastic {role}", not unseen, message,
                                       state="; ".join(parts) or "following the queue")
