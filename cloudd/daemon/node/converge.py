"""The node side of an agent: turns the leader's `RoleAssignment` into supervised services.

Theory of operation. The leader tells a node its role, peers and role secrets (`assign`); the
node keeps the newest assignment (by term), converges the role in a task of its own (first
what every node gets, `nodebase`: the assignment's secrets written 0600, the cloud's names in
`/etc/hosts`, the manifest's users; then packages, files, one-time preparation) and runs the
role's services under a `Supervisor` whose state lives in the node root. When only files changed
(peers came or went), the services those files name are reloaded, not restarted. A failed
converge is reported (FAILED) and retried after the reconcile backoff, or after a
`TemporaryError`'s own delay; nothing is retried inline.

What the node reports is its phase (`phase.py`, a pure table this class only feeds) with its
services: a `NodeReport` whenever either changes, and at least every `heartbeat` seconds, from
its start (UNASSIGNED until the leader's assignment comes). The
accepted assignment is kept in the node root (`saved_assignment.py`), so an agent that
restarts converges at once and its Supervisor re-adopts the running processes (never a second
copy), without waiting for the leader.

Durations (heartbeat, backoff) are read from the clock's `monotonic()`; the `since` of a
report, which people read, from its `wall()`. The converge task belongs to `run()`'s task
group: it ends when the node side does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cloudd import log
from cloudd.backoff import Backoff
from cloudd.config.agent import AgentSettings
from cloudd.config.catalog import settings_dict
from cloudd.config.model import Cloud
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, RoleAssignment, ServiceReport
from cloudd.daemon.node import actions, phase
from cloudd.daemon.node.nodebase import NodeBase
from cloudd.daemon.node.saved_assignment import load_assignment, save_assignment
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.base import Assignment, Peer, converge, node_services
from cloudd.providers.policy import PolicyConfig, State
from cloudd.providers.registry import Registry, default_registry
from cloudd.providers.service import ServiceSpec
from cloudd.providers.supervisor import ServiceStatus, Supervisor

#: How long stop_services waits for each service beyond its own stop grace, in seconds.
STOP_WITHIN = 60.0
#: Share of a converge retry's delay taken off at random, so that the nodes of a cloud that
#: failed together (a peer down for all of them) do not all retry in the same instant.
CONVERGE_JITTER = 0.2
#: Shortest sleep of the loop, seconds: something due now is done on the next turn, not in
#: a busy loop.
MIN_WAIT = 0.01


def node_root(settings: AgentSettings, me: str) -> Path:
    """Where one node keeps everything: rendered files, secrets, services.json, assignment."""
    return Path(settings.state_dir) / "nodes" / me


class ServiceSupervisor(Protocol):
    """What the node side needs of a supervisor (`cloudd.providers.supervisor.Supervisor`)."""

    async def start(self, names: Iterable[str] | None = None) -> None: ...
    async def stop(self, names: Iterable[str] | None = None, *,
                   within: float = 60.0) -> None: ...
    async def restart(self, name: str) -> None: ...
    async def reload(self, name: str, *, within: float = 30.0) -> None: ...
    def detach(self) -> None: ...
    def status(self) -> Mapping[str, ServiceStatus]: ...
    async def wait_for(self, name: str, predicate: Callable[[ServiceStatus], bool], *,
                       within: float) -> ServiceStatus: ...


class SupervisorFactory(Protocol):
    def __call__(self, specs: tuple[ServiceSpec, ...], *, state_dir: Path,
                 defaults: PolicyConfig, node: str) -> ServiceSupervisor: ...


class NodeSide:
    """The part of an agent that runs on a node. All methods run on the agent's event loop."""

    def __init__(self, *, me: str, cloud: Cloud, settings: AgentSettings,
                 report: Callable[[NodeReport], None], registry: Registry | None = None,
                 clock: Clock = SYSTEM, heartbeat: float = 2.0,
                 exec_prefix: tuple[str, ...] = (), rng: random.Random | None = None,
                 supervisor_factory: SupervisorFactory = Supervisor) -> None:
        self.me, self.cloud, self.settings = me, cloud, settings
        self.root = node_root(settings, me)
        self._report, self._clock, self.heartbeat = report, clock, heartbeat
        self._registry = registry if registry is not None else default_registry()
        self._exec_prefix, self._rng = exec_prefix, rng or random.Random()
        self._base = NodeBase(self.root / "secrets", system_root=settings.node.system_root,
                              exec_prefix=exec_prefix)
        self._new_supervisor = supervisor_factory
        s, r = settings.supervisor, settings.reconcile
        self._policy = PolicyConfig(start_grace=s.start_grace, stop_grace=s.stop_grace,
                                    fatal_cooldown=s.fatal_cooldown)
        self._backoff = Backoff(base=r.backoff_base, cap=r.backoff_max, factor=2.0,
                                jitter=CONVERGE_JITTER)
        self.log = log.get("nodeside", cloud=cloud.name, node=me)
        self._wake = asyncio.Event()
        self._stop_lock = asyncio.Lock()
        self._sup: ServiceSupervisor | None = None
        self._specs: tuple[ServiceSpec, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._applied: tuple[Any, ...] | None = None  # the converge key last done
        self._pending_reload: set[str] = set()
        self._failures = 0
        self._retry_at = 0.0  # monotonic
        self._failed_key: tuple[Any, ...] | None = None
        self._resume = self._detached = False
        self._facts = phase.NodeFacts()
        self._last: tuple[Any, ...] | None = None
        self._last_sent = float("-inf")  # monotonic
        self._phase: NodePhase | None = None  # as last viewed, with its wall-clock time
        self._since = clock.wall()
        self._current = load_assignment(self.root, node=me, cloud=cloud.name)
        self._saved = self._current
        self._term = self._current.term if self._current else 0
        if self._current is not None:
            self._feed(phase.Assigned())

    # ---- inputs -------------------------------------------------------------------------
    def update_cloud(self, cloud: Cloud) -> None:
        """A new manifest generation: converge again with its settings and secrets."""
        if cloud.name != self.cloud.name:
            self.log.error("node.cloud_refused", other=cloud.name)
            return
        if cloud.digest != self.cloud.digest:
            self.log.info("node.cloud_updated", generation=cloud.digest)
        self.cloud = cloud
        self._wake.set()

    def assign(self, a: RoleAssignment) -> None:
        """Take an assignment from the leader; returns at once (the loop does the work)."""
        if a.node != self.me or a.cloud != self.cloud.name:
            self.log.warning("node.assignment_refused", peer_node=a.node, peer_cloud=a.cloud,
                             term=a.term, reason="meant for another node or cloud")
            return
        if a.term < self._term:
            self.log.info("node.assignment_stale", term=a.term, highest=self._term)
            return
        self._term = a.term
        if a == self._current:
            return
        # Told to run again after stop_services: the loop starts afresh once the stop is done.
        self._resume = self._facts.stopping
        self.log.info("node.assignment", term=a.term, role=a.role, generation=a.generation,
                      peers=[p.node for p in a.peers if p.healthy])
        if self._current is None:
            self._feed(phase.Assigned())
        self._current = a
        self._wake.set()

    def _feed(self, event: phase.Event) -> None:
        self._facts = phase.step(self._facts, event)

    # ---- the root task ------------------------------------------------------------------
    async def run(self) -> None:
        """Converge, supervise and report until cancelled; then detach (services keep running)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                await self._loop(tasks)
        finally:
            if not self._detached:
                self.detach()

    async def _loop(self, tasks: asyncio.TaskGroup) -> None:
        while True:
            self._wake.clear()
            now = self._clock.monotonic()
            if self._detached or self._current is None:
                if not self._detached:
                    # An agent with no assignment says so: a leader that still holds the
                    # report of this node's previous VM (a node re-placed on a fresh disk)
                    # then sees it unassigned and sends its role again.
                    self._maybe_report(now)
                await self._wait(self.heartbeat)
                continue
            self._persist()
            a = self._current
            if self._resume and self._facts.halted:
                self.log.info("node.resumed", term=a.term, role=a.role)
                self._resume = False
                self._sup, self._applied = None, None
                self._feed(phase.Resumed())
            converge_at = self._converge_at(a)
            if converge_at is not None and now >= converge_at:
                self._task = tasks.create_task(self._converge(a, self.cloud),
                                               name=f"cloudd:converge:{self.me}")
                converge_at = None
            self._maybe_report(now)
            due = self._last_sent + self.heartbeat
            if converge_at is not None:
                due = min(due, converge_at)
            await self._wait(max(due - now, MIN_WAIT))

    def _key(self, a: RoleAssignment) -> tuple[Any, ...]:
        return (a.role, a.roles, a.address, a.generation, a.peers, a.secrets,
                self.cloud.digest)

    def _converge_at(self, a: RoleAssignment) -> float | None:
        """When to converge `a` next (monotonic), or None when there is nothing to do."""
        key = self._key(a)
        if self._facts.stopping or self._task is not None or key == self._applied:
            return None
        # A new assignment or manifest is tried at once; the same one again after backoff.
        return self._retry_at if key == self._failed_key else float("-inf")

    async def _wait(self, within: float) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        sup = self._sup
        names = list(sup.status()) if sup is not None else []
        if sup is not None and names and not self._detached and self._last is not None:
            # Any service change wakes us: wait_for re-checks on every change of any unit.
            reported = self._last[2]
            waits.append(asyncio.ensure_future(sup.wait_for(
                names[0], lambda _: self._services() != reported, within=within)))
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    # ---- converge -----------------------------------------------------------------------
    def _assignment(self, a: RoleAssignment, cloud: Cloud) -> Assignment:
        return Assignment(cloud=cloud.name, node=self.me, role=a.role, address=a.address,
                          root=self.root, secrets_dir=self.root / "secrets",
                          settings=settings_dict(cloud.settings),
                          peers=tuple(Peer(p.node, p.role, p.address, p.healthy, p.roles)
                                      for p in a.peers),
                          exec_prefix=self._exec_prefix, roles=a.roles)

    async def _converge(self, a: RoleAssignment, cloud: Cloud) -> None:
        key = self._key(a)
        try:
            assignment = self._assignment(a, cloud)
            await self._base.prepare(a, cloud, logger=self.log)
            provider = self._registry.get(cloud.type)
            done = await converge(provider, assignment)
            self._pending_reload |= set(done.changes.reload)
            await self._supervise(done.services)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider's bug must not end supervision
            self._failures += 1
            delay = (exc.delay if isinstance(exc, TemporaryError)
                     else self._backoff.delay(self._failures, self._rng.random()))
            self._retry_at = self._clock.monotonic() + delay
            self._failed_key = key
            error = str(exc) if isinstance(exc, ClouddError) else f"{type(exc).__name__}: {exc}"
            self._feed(phase.ConvergeFailed(error))
            self.log.warning("node.converge_failed", role=a.role, term=a.term, error=error,
                             failures=self._failures, retry_in=round(delay, 3),
                             exc_info=not isinstance(exc, ClouddError))
        else:
            if self._facts.error:
                self.log.info("node.converge_recovered", role=a.role, failures=self._failures)
            self._applied, self._failures = key, 0
            self._feed(phase.ConvergeSucceeded())
        finally:
            self._task = None
            self._wake.set()

    def _supervisor(self, specs: tuple[ServiceSpec, ...]) -> ServiceSupervisor:
        """A fresh supervisor of `specs` (not started yet), now the one in charge."""
        sup = self._new_supervisor(specs, state_dir=self.root, defaults=self._policy,
                                   node=self.me)
        self._sup, self._specs = sup, specs
        self._feed(phase.ServicesStarted())
        return sup

    async def _supervise(self, specs: tuple[ServiceSpec, ...]) -> None:
        """Start the services, or restart them when their specs changed, or reload them."""
        if self._sup is not None and specs != self._specs:
            if set(self._specs) <= set(specs):
                # a role added (its prerequisites got ready): what runs keeps running, and the
                # new supervisor adopts it as after an agent restart
                self.log.info("node.services_added", services=[
                    s.name for s in specs if s not in self._specs])
            else:
                self.log.info("node.services_replaced", services=[s.name for s in specs])
                await self._sup.stop(within=STOP_WITHIN)
            self._sup.detach()
            self._sup = None
            self._feed(phase.ServicesDropped())
        if self._sup is None:
            sup = self._supervisor(specs)
            await sup.start()
            # Spawned now: they read the new files. Adopted: they run with what they read.
            self._pending_reload &= {n for n, st in sup.status().items() if st.adopted}
        assert self._sup is not None
        for name in sorted(self._pending_reload):
            st = self._sup.status().get(name)
            # Without a process it reads its files when it next starts.
            if st is not None and st.pid is not None and st.state in (State.RUNNING,
                                                                     State.STARTING):
                await self._sup.reload(name)
            self._pending_reload.discard(name)

    def _persist(self) -> None:
        a = self._current
        if a is None or a == self._saved:
            return
        try:
            save_assignment(self.root, a)
        except OSError as exc:  # only a restart's head start is lost: keep supervising
            self.log.error("node.assignment_unsaved", path=str(self.root), error=str(exc))
        self._saved = a

    # ---- reports ------------------------------------------------------------------------
    def _services(self) -> tuple[ServiceReport, ...]:
        if self._sup is None:
            return ()
        # A service without a readiness probe is ready once RUNNING (start grace passed).
        probed = {s.name for s in self._specs if s.readiness is not None}
        return tuple(ServiceReport(s.name, s.state.value, s.pid,
                                   s.ready or (s.state is State.RUNNING and s.name not in probed),
                                   s.starts, s.fatal_count, s.last_error)
                     for s in self._sup.status().values())

    def view(self) -> NodeReport:
        """The node's phase and services now (what the next report would say)."""
        a = self._current
        services = self._services()
        if self._sup is not None:
            self._feed(phase.seen(services))
        current, message = phase.decide(self._facts)
        if current is not self._phase:
            if self._phase is not None:
                self.log.info("node.phase", phase=current, was=self._phase, reason=message)
            self._phase, self._since = current, self._clock.wall()
        return NodeReport(node=self.me, term=a.term if a else self._term,
                          generation=a.generation if a else "", phase=current,
                          message=message, services=services, since=self._since)

    def _maybe_report(self, now: float) -> None:
        r = self.view()
        sig = (r.phase, r.message, r.services, r.term, r.generation)
        if sig == self._last and now < self._last_sent + self.heartbeat:
            return
        self._last, self._last_sent = sig, now
        try:
            self._report(r)
        except Exception:  # the transport's problem; the next heartbeat tries again
            self.log.exception("node.report_failed")

    # ---- the leader's actions -----------------------------------------------------------
    async def act(self, action: str, args: actions.Pairs, *, peer: str = "",
                  term: int = 0) -> actions.Pairs:
        """The leader's `NodeAction` (from `peer`, in `term`): one of the role's named
        actions, checked against the role first (`actions.refusal`); raises ClouddError with
        one sentence when refused (`action_refused`) or failed (`action_failed`)."""
        a = self._current
        try:
            role = (None if a is None else
                    actions.acting_role(self._registry.get(self.cloud.type), a.role, a.roles,
                                        action))
        except ClouddError as exc:
            self.log.warning("action_refused", peer=peer, term=term, action=action,
                             reason=str(exc))
            raise
        why = actions.refusal(role, action, args, node=self.me)
        if why is not None:
            self.log.warning("action_refused", peer=peer, term=term, action=action, reason=why)
            raise PermanentError(why)
        assert a is not None and role is not None
        try:
            answer = await actions.perform(role, self._assignment(a, self.cloud).as_role(
                role.name), action, args)
        except ClouddError as exc:
            self.log.warning("action_failed", peer=peer, term=term, action=action,
                             role=a.role, reason=str(exc))
            raise
        self.log.debug("node.acted", peer=peer, term=term, action=action, role=a.role)
        return answer

    # ---- operator and shutdown ----------------------------------------------------------
    async def cleanup(self, service: str) -> None:
        """The operator's `cleanup NODE/SERVICE`: forget the service's failures and start it
        again now (a FATAL service is retried at once instead of after its cool-down)."""
        if self._sup is None or service not in self._sup.status():
            known = ", ".join(sorted(self._sup.status())) if self._sup else "none"
            raise PermanentError(f"{self.me} runs no service {service!r} (services: {known})")
        await self._sup.restart(service)

    async def stop_services(self) -> None:
        """`ensure: stopped`: stop every service of the node, in reverse dependency order.

        Stop orders run one at a time, in the order given: a second one never ends (Halted)
        while the node already resumed after the first."""
        async with self._stop_lock:
            await self._stop_services()

    async def _stop_services(self) -> None:
        self._resume = False
        self._feed(phase.StopOrdered())
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its end, whichever; our own cancellation still ends us
        sup, a = self._sup, self._current
        if sup is None and a is not None:
            # Nothing converged yet in this agent: adopt what an earlier one left, to stop it.
            try:
                specs = node_services(self._registry.get(self.cloud.type),
                                      self._assignment(a, self.cloud))
            except ClouddError as exc:
                self.log.error("node.stop_failed", error=str(exc))
                specs = ()
            if specs:
                sup = self._supervisor(specs)
                await sup.start(names=[])
        if sup is not None:
            await sup.stop(within=STOP_WITHIN)
        self._feed(phase.Halted())
        self.log.info("node.services_stopped", services=[s.name for s in self._specs])
        self._wake.set()

    def detach(self) -> None:
        """Agent shutdown: stop supervising and reporting, leave every service running.

        The converge task is cancelled here; run()'s task group awaits its end."""
        self._detached = True
        if self._task is not None:
            self._task.cancel()
        if self._sup is not None:
            # Forgotten, not only detached: a later stop_services adopts the processes afresh.
            self._sup.detach()
            self._sup = None
            self._feed(phase.ServicesDropped())
        self.log.info("node.detached")
