"""The leader's executor: observe the hosts, plan, perform the plan, record what happened.

Theory of operation. A pass runs at once when something changes (a domain event forwarded by
a host, a membership change: `poke()`), and every `resync` seconds regardless. A pass does
nothing unless the election core says this agent is the acting leader, and stamps every host
command with that leader's term, so that a deposed leader is refused by the hosts (fencing
token). It asks every host for its domains and inventory (a host that does not answer is
unreachable; its last report is kept, since its domains may still run), runs the pure planner,
and launches one task per node for that node's actions, in order, stopping at the first
failure. A CopyImage is performed by the `fetch` callable (`leader.imagecopy`), a Fence by
the `fencer` (`leader.fencing`); a RemoveImage is the host command REMOVE_IMAGE of the node's
domain and the overlay's path, which the host checks against its own record. A command the
host answers PENDING (a reset that has to destroy and start a qemu that does not answer) is
sent again, in the same term, until it is done or `PENDING_LIMIT` passes. Failures are
never retried here: they go into the backoff ledgers (`reconcile.backoff_base`,
`backoff_max`, `stable_reset`) and come back in a later plan. Nodes with a task still
running are in flight, and the planner leaves them alone.
Every action and every failure is an event in the event log, with the planner's reason.

Hung guests (`cloudd.vmctl.plan.hung`). Each pass also asks `liveness` about every managed
node's agent (the same SWIM view as the hosts'), and remembers since when each has been dead
and which domains it reset (`leader.unreachable`); a reset domain counts as running since the
reset. A reset, and a destroy that follows one, is logged as `node_reset` and counts against
the node's backoff like a failure, and a node whose agent is dead is never "stable" for the
backoff, so its count keeps growing.

Time: every duration (backoff, the stable period, how long a domain has run, the shutdown
timeout) is measured on the clock's `monotonic()`, which an NTP step cannot move; only the
event log's rows, which people read, carry `wall()` time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from cloudd import log
from cloudd.config.agent import Reconcile
from cloudd.config.model import Migration
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader.unreachable import Unreachable
from cloudd.daemon.leader.views import ControllerView as ControllerView
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.vmctl import backend as vb
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.plan import (
    BackoffPolicy,
    CopyImage,
    CreateOverlay,
    Define,
    Desired,
    Destroy,
    DomainObs,
    DomainState,
    Fence,
    HostObs,
    Ledger,
    Limits,
    Liveness,
    Migrate,
    NodeAction,
    NodeSpec,
    Observed,
    Planned,
    RemoveImage,
    Reset,
    Shutdown,
    Start,
    Undefine,
    planned,
    summarize,
)
from cloudd.vmctl.template import domain_name


class HostClient(Protocol):
    """How the leader reaches a host agent (the transport's client, or `LocalHosts`)."""

    async def call(self, host: str, command: HostCommand) -> HostResult:
        """Send one command; raises ClouddError (or OSError) when the host cannot be reached."""
        ...


class Fencer(Protocol):
    async def fence(self, host: str) -> None:
        """Power `host` off for good; returns only once it is proven off, raises otherwise."""
        ...


def policy_of(reconcile: Reconcile) -> BackoffPolicy:
    """The controller's backoff from the agent's `reconcile` settings."""
    return BackoffPolicy(base=reconcile.backoff_base, cap=reconcile.backoff_max,
                         stable=reconcile.stable_reset)


HostReport = tuple[tuple[DomainObs, ...], vb.Inventory | None]


@dataclass
class LocalHosts:
    """A HostClient for agents in this process (tests, single-machine pools)."""

    agents: Mapping[str, HostAgent]

    async def call(self, host: str, command: HostCommand) -> HostResult:
        agent = self.agents.get(host)
        if agent is None:
            raise TemporaryError(f"host {host} is not reachable from here")
        return await agent.execute(command)


_STATES = {vb.PowerState.RUNNING: DomainState.RUNNING,
           vb.PowerState.PAUSED: DomainState.PAUSED,
           vb.PowerState.SHUTTING_DOWN: DomainState.SHUTDOWN,
           vb.PowerState.STOPPED: DomainState.SHUTOFF,
           vb.PowerState.CRASHED: DomainState.CRASHED,
           vb.PowerState.OTHER: DomainState.NOSTATE}

_OPS: dict[type, Op] = {Define: Op.DEFINE, Start: Op.START, Shutdown: Op.SHUTDOWN,
                        Reset: Op.RESET, Destroy: Op.DESTROY, Undefine: Op.UNDEFINE,
                        RemoveImage: Op.REMOVE_IMAGE, Migrate: Op.MIGRATE}

#: Seconds between two sends of a command its host answered PENDING.
PENDING_PAUSE = 0.5
#: Longest a command answered PENDING is waited for, seconds: a reset that has to destroy a
#: stopped qemu (10 s of SIGTERM before libvirt's SIGKILL) and start it takes well under it.
PENDING_LIMIT = 120.0


def hung_for(action: NodeAction) -> float | None:
    """Seconds a node's agent had been unreachable, for the hung-guest rule's actions (a
    Reset, a Destroy after one); None for any other action."""
    return action.unreachable_for if isinstance(action, Reset | Destroy) else None


def _overlays(stock: vb.Inventory | None, prefix: str) -> frozenset[tuple[str, str]]:
    """(path, node) of a host's recorded overlays, from (path, domain): the domains of this
    cloud are `<cloud>-<node>`, named by the leader's own OVERLAY."""
    if stock is None:
        return frozenset()
    return frozenset((path, domain.removeprefix(prefix)) for path, domain in stock.overlays
                     if domain.startswith(prefix))


class Controller:
    """Reconciles one cloud while this agent is the acting leader."""

    def __init__(self, *, desired: Callable[[], Desired], hosts: Callable[[], Sequence[str]],
                 liveness: Callable[[str], Liveness], leader: Callable[[], int | None],
                 client: HostClient, events: EventLog, render: Callable[[NodeSpec, int], str],
                 fencer: Fencer | None = None,
                 overlay: Callable[[str, NodeSpec], Awaitable[None]] | None = None,
                 fetch: Callable[[str, NodeSpec], Awaitable[None]] | None = None,
                 clock: Clock = SYSTEM, policy: BackoffPolicy | None = None,
                 rng: random.Random | None = None,
                 resync: float = 30.0, call_timeout: float = 10.0,
                 limits: Limits | None = None,
                 ready: Callable[[], frozenset[str]] = frozenset,
                 emptied: Callable[[], frozenset[str]] = frozenset,
                 undefined: Callable[[str], None] = lambda node: None,
                 migration: Callable[[str], Migration | None] = lambda host: None) -> None:
        self.desired, self.hosts, self.liveness, self.leader = desired, hosts, liveness, leader
        self.client, self.events, self.render = client, events, render
        self.fencer, self.overlay, self.fetch, self.clock = fencer, overlay, fetch, clock
        self.resync, self.call_timeout = resync, call_timeout
        self.limits = limits
        #: the nodes alive and ready with their role now (a drain's moves depend on them), and
        #: the batch nodes their scheduler drained with no job left (those a drain may move)
        self.ready, self.emptied = ready, emptied
        #: told of a node whose domain was undefined: what its agent reported is of a VM that
        #: is gone (a node re-placed starts afresh)
        self.undefined = undefined
        #: each pool host's part in live migration, as the manifest gives it (None: none)
        self.migration = migration
        policy = policy or BackoffPolicy()
        # jitter: from `rng` when given, else derived from the subject's name and count
        self.node_fails = Ledger(policy, rng=rng)
        self.host_fails = Ledger(policy, rng=rng)
        self.fenced: set[str] = set()
        self.last_plan = Planned(())
        self._reports: dict[str, HostReport] = {}
        self._seen: dict[tuple[str, str], tuple[DomainState, float]] = {}
        self._reasons: dict[tuple[str, str], str] = {}
        self._shutdowns: dict[tuple[str, str], float] = {}
        self.unreachable = Unreachable()
        #: seconds a command its host answers PENDING is waited for
        self.pending_limit = PENDING_LIMIT
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._fencing: dict[str, asyncio.Task[None]] = {}
        self._poke = asyncio.Event()
        self._log = log.get("controller")

    # ---- inputs -------------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: run a pass now."""
        self._poke.set()

    def domain_event(self, host: str, event: vb.DomainEvent) -> None:
        """A host forwarded a domain event: keep its reason (for run strategies), pass now."""
        if event.meta is not None and event.kind is vb.DomainEventKind.STOPPED:
            key = (event.meta.node, host)
            self._reasons[key] = self.unreachable.reason(key, event.detail)
        self.poke()

    def reset(self, subject: str) -> None:
        """The operator's `cleanup`: forget a node's (or host's) failures and pass now."""
        self.node_fails.forget(subject)
        self.host_fails.forget(subject)
        self.poke()

    def where(self) -> dict[str, str]:
        """Each node of the cloud with a domain, and the host of that domain (the last lists
        the hosts gave; a running copy wins over one shut off elsewhere)."""
        cloud = self.desired().cloud
        where: dict[str, str] = {}
        for host in sorted(self._reports):
            for d in self._reports[host][0]:
                if d.cloud == cloud and (d.node not in where or d.state is DomainState.RUNNING):
                    where[d.node] = host
        return where

    def view(self) -> ControllerView:
        return ControllerView(hosts=dict(self._reports), last_plan=self.last_plan,
                              node_fails=self.node_fails.snapshot(),
                              host_fails=self.host_fails.snapshot())

    # ---- observing ----------------------------------------------------------------------

    async def _ask(self, host: str, command: HostCommand) -> HostResult | None:
        try:
            async with asyncio.timeout(self.call_timeout):
                result = await self.client.call(host, command)
        except (ClouddError, OSError, TimeoutError) as exc:
            self._log.info("host_unreachable", host=host, reason=str(exc) or type(exc).__name__)
            return None
        return result if result.outcome is CommandOutcome.DONE else None

    async def _report(self, host: str, term: int, now: float) -> None:
        listing = await self._ask(host, HostCommand(Op.LIST, term))
        stock = await self._ask(host, HostCommand(Op.INVENTORY, term)) if listing else None
        if listing is None or stock is None:
            # keep the last list of its domains: they may still be running there
            if host in self._reports:
                self._reports[host] = (self._reports[host][0], None)
            return
        domains: list[DomainObs] = []
        for info in listing.domains:
            key = (info.meta.node, host)
            state = _STATES[info.state]
            prior = self._seen.get(key)
            since = prior[1] if prior is not None and prior[0] is state else now
            self._seen[key] = (state, since)
            domains.append(DomainObs(host, info.meta.node, info.meta.cloud, state,
                                     self._reasons.get(key, "unknown"), term=info.meta.term,
                                     since=since, migrating=info.migrating))
        self._reports[host] = (tuple(domains), stock.inventory)

    async def observe(self, term: int, now: float) -> Observed:
        # A chain that finishes while the hosts are asked is neither seen nor in flight
        # unless those in flight now are counted too.
        before = frozenset(self._busy)
        names = sorted(self.hosts())
        prefix = domain_name(self.desired().cloud, "")
        await asyncio.gather(*(self._report(h, term, now) for h in names))
        hosts: list[HostObs] = []
        domains: list[DomainObs] = []
        for name in names:
            seen, stock = self._reports.get(name, ((), None))
            live = self.liveness(name)
            if live is Liveness.ALIVE:
                self.fenced.discard(name)  # back from the dead: its report counts again
            hosts.append(HostObs(name, live, stock is not None,
                                 stock.free_memory_kib // 1024 if stock else 0,
                                 stock.images if stock else frozenset(),
                                 fenced=name in self.fenced, reported=name in self._reports,
                                 overlays=_overlays(stock, prefix)))
            domains.extend(seen)
        present = {(d.node, d.host) for d in domains}
        for key in [k for k in self._shutdowns if k not in present]:
            del self._shutdowns[key]
        gone = self.unreachable
        gone.observe((n.name for n in self.desired().nodes if n.managed), self.liveness,
                     present=present, now=now)
        self.node_fails.settle_nodes(domains, now=now, unreachable=gone.since)
        self.host_fails.settle_quiet(now=now)
        # a node whose domain a host reports migrating is in flight whoever started the move
        # (this leader, or one before it): no pass acts on either of its two copies. Only a
        # report of now counts: a host lost mid-move is fenced and its node re-placed as any
        fresh = {h.name for h in hosts if h.reachable}
        moving = frozenset(d.node for d in domains if d.migrating and d.host in fresh)
        return Observed(tuple(hosts), tuple(domains), node_failures=self.node_fails.snapshot(),
                        host_failures=self.host_fails.snapshot(),
                        in_flight=before | frozenset(self._busy) | moving,
                        fencing=frozenset(self._fencing),
                        shutdowns=dict(self._shutdowns),
                        unreachable=dict(gone.since), resets=dict(gone.resets),
                        ready=self.ready(), emptied=self.emptied())

    # ---- the pass -----------------------------------------------------------------------

    async def pass_once(self) -> Planned | None:
        """One reconcile pass; None when this agent is not the acting leader."""
        term = self.leader()
        if term is None:
            return None
        desired = self.desired()
        now = self.clock.monotonic()
        observed = await self.observe(term, now)
        if self.leader() != term:
            return None
        result = planned(desired, observed, now, limits=self.limits)
        self.last_plan = result
        if result.actions:
            self._log.info("reconcile_pass", cloud=desired.cloud, term=term,
                           **summarize(result.actions), waiting=len(result.waiting))
        chains: dict[str, list[NodeAction]] = defaultdict(list)
        for action in result.actions:
            if isinstance(action, Fence):
                self._fencing[action.host] = asyncio.create_task(
                    self._fence(action, cloud=desired.cloud, term=term),
                    name=f"fence-{action.host}")
            else:
                chains[action.node].append(action)
        specs = {n.name: n for n in desired.nodes}
        copies = Counter(d.node for d in observed.domains if d.cloud == desired.cloud)
        for node, actions in chains.items():
            self._busy[node] = asyncio.create_task(
                self._chain(actions, spec=specs.get(node), cloud=desired.cloud, term=term,
                            sole=copies[node] <= 1),
                name=f"node-{node}")
        return result

    async def idle(self) -> None:
        """Wait until no action launched by a pass is still running (for tests and shutdown)."""
        while self._busy or self._fencing:
            await asyncio.gather(*self._busy.values(), *self._fencing.values(),
                                 return_exceptions=True)

    async def run(self) -> None:
        """Pass on every poke and every `resync` seconds, until cancelled."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resync):
                        await self._poke.wait()
                self._poke.clear()
                try:
                    await self.pass_once()
                except ClouddError as exc:
                    self._log.error("reconcile_pass_failed", reason=str(exc))
        finally:
            # the actions it launched end with it: none outlives the leader's shutdown
            launched = [*self._busy.values(), *self._fencing.values()]
            for task in launched:
                task.cancel()
            await asyncio.gather(*launched, return_exceptions=True)

    # ---- performing ---------------------------------------------------------------------

    def _record(self, kind: LogKind, *, cloud: str, subject: str, reason: str,
                term: int) -> None:
        self.events.append(LogEvent(self.clock.wall(), cloud, kind, subject, reason, term))

    async def _chain(self, actions: list[NodeAction], *, spec: NodeSpec | None, cloud: str,
                     term: int, sole: bool = True) -> None:
        """Perform one node's actions in order (`sole`: the node had no other copy, so an
        undefine leaves it without a VM and what its agent reported is forgotten)."""
        node = actions[0].node
        try:
            for action in actions:
                if self.leader() != term:
                    self._log.warning("actions_dropped", node=node, term=term,
                                      reason="no longer the acting leader")
                    return
                hung = hung_for(action)
                if hung is not None:
                    self._log.warning("node_reset", cloud=cloud, node=node, host=action.host,
                                      term=term, unreachable_for=round(hung, 1),
                                      reason=f"{type(action).__name__.lower()}: "
                                             f"{action.reason}")
                error = await self._perform(action, spec=spec, cloud=cloud, term=term)
                what = f"{type(action).__name__.lower()} on {action.host}"
                if error is None:
                    restart = isinstance(action, Reset) or (
                        isinstance(action, Start) and action.respawn)
                    self._record(LogKind.RESTART if restart else LogKind.ACTION, cloud=cloud,
                                 subject=node, reason=f"{what}: {action.reason}", term=term)
                    self._log.info("action_done", cloud=cloud, node=node, host=action.host,
                                   term=term, reason=f"{what}: {action.reason}")
                    # a duplicate's undefine leaves the copy that runs, and its reports
                    if isinstance(action, Undefine) and sole:
                        self.undefined(node)
                    continue
                now = self.clock.monotonic()
                record = self.node_fails.failed(node, now=now)
                # a failed copy backs off the node only: the source may be the one at fault
                if isinstance(action, Define | Start | CreateOverlay):
                    self.host_fails.failed(action.host, now=now)
                self._record(LogKind.FAILURE, cloud=cloud, subject=node, term=term,
                             reason=f"{what} failed ({record.count} in a row, next try in "
                                    f"{record.not_before - now:.1f}s): {error}")
                self._log.warning("action_failed", cloud=cloud, node=node, host=action.host,
                                  term=term, reason=f"{what}: {error}", count=record.count)
                return
        finally:
            self._busy.pop(node, None)
            self.poke()

    async def _perform(self, action: NodeAction, *, spec: NodeSpec | None, cloud: str,
                       term: int) -> str | None:
        """Run one action; None on success, else why it failed."""
        local = {CopyImage: (self.fetch, "no image copy configured"),
                 CreateOverlay: (self.overlay, "no overlay support configured")}
        try:
            if type(action) in local:
                # performed here, through the host client, not as one host command
                perform, missing = local[type(action)]
                if perform is None or spec is None:
                    return missing
                await perform(action.host, spec)
                return None
            command = self._command(action, spec=spec, cloud=cloud, term=term)
            if command is None:
                return f"node {action.node} is not in the manifest"
            with self.unreachable.sending((action.node, action.host)) \
                    if isinstance(action, Reset) else contextlib.nullcontext():
                result = await self._send(action.host, command, term=term)
        except (ClouddError, OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
        if result.outcome is CommandOutcome.STALE_TERM:
            return f"refused: {result.message} (this leader is deposed)"
        if result.outcome is CommandOutcome.FAILED:
            return result.message or "failed"
        self._done(action)
        return None

    async def _send(self, host: str, command: HostCommand, *, term: int) -> HostResult:
        """Send `command`, and again while the host answers PENDING (in the same term, within
        `pending_limit`)."""
        async with asyncio.timeout(self.call_timeout):
            result = await self.client.call(host, command)
        if result.outcome is not CommandOutcome.PENDING:
            return result
        try:
            async with asyncio.timeout(self.pending_limit):
                while result.outcome is CommandOutcome.PENDING:
                    await asyncio.sleep(PENDING_PAUSE)
                    if self.leader() != term:
                        raise TemporaryError("no longer the acting leader")
                    async with asyncio.timeout(self.call_timeout):
                        result = await self.client.call(host, command)
        except TimeoutError:
            raise TemporaryError(f"{command.op.value} of {command.domain} on {host} not done "
                                 f"within {self.pending_limit:g}s") from None
        return result

    def _command(self, action: NodeAction, *, spec: NodeSpec | None, cloud: str,
                 term: int) -> HostCommand | None:
        """The host command for a domain action (None: a Define for a node not declared)."""
        domain = domain_name(cloud, action.node)
        op = _OPS[type(action)]
        if isinstance(action, RemoveImage):
            return HostCommand(op, term, domain, image=action.image)
        if isinstance(action, Migrate):
            here, there = self.migration(action.host), self.migration(action.target)
            if here is None or there is None:  # the manifest changed since the plan
                raise TemporaryError(f"hosts {action.host} and {action.target} take no live "
                                     "migration now")
            return HostCommand(op, term, domain, target=action.target, target_uri=there.uri,
                               target_address=there.address, unsafe=here.unsafe,
                               tls=there.tls)
        if op is not Op.DEFINE:
            return HostCommand(op, term, domain)
        return HostCommand(op, term, domain, self.render(spec, term)) if spec else None

    def _done(self, action: NodeAction) -> None:
        """What a done action changes in what the next observation will say."""
        key, now = (action.node, action.host), self.clock.monotonic()
        op = _OPS[type(action)]
        if op is Op.SHUTDOWN:
            self._shutdowns.setdefault(key, now)
        if op in (Op.START, Op.UNDEFINE):
            self._reasons.pop(key, None)
        self.unreachable.done(op, key, now=now)
        if hung_for(action) is not None:
            # counts against the node's backoff like a failed restart, at the very `now` the
            # reset's domain runs since (or a running domain would settle the count at once)
            self.node_fails.failed(action.node, now=now)
        if op in (Op.START, Op.RESET):
            # running since now, not since the next report: the stable period (and, after a
            # reset, the hung-guest rule's count) starts here
            self._seen[key] = (DomainState.RUNNING, now)

    async def _fence(self, action: Fence, *, cloud: str, term: int) -> None:
        try:
            if self.fencer is None:
                raise PermanentError("no fencer configured")
            await self.fencer.fence(action.host)
        except (ClouddError, OSError) as exc:
            record = self.host_fails.failed(action.host, now=self.clock.monotonic())
            self._record(LogKind.FAILURE, cloud=cloud, subject=action.host, term=term,
                         reason=f"fence failed ({record.count} in a row): {exc}")
            self._log.error("fence_failed", cloud=cloud, host=action.host, reason=str(exc))
        else:
            self.fenced.add(action.host)
            # the fence powered the host off: whatever its last report said ran there does not
            # (and must not win over the re-placed copies when the host comes back)
            seen, _ = self._reports.get(action.host, ((), None))
            self._reports[action.host] = (tuple(
                replace(d, state=DomainState.SHUTOFF, reason="fenced") for d in seen), None)
            self._record(LogKind.ACTION, cloud=cloud, subject=action.host, term=term,
                         reason=f"fenced: {action.reason}")
            self._log.warning("host_fenced", cloud=cloud, host=action.host, term=term)
        finally:
            self._fencing.pop(action.host, None)
            self.poke()
