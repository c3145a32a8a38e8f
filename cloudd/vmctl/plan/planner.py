"""The leader's reconcile planner: `plan(desired, observed, now) -> [actions]`, pure.

Theory of operation. Each pass looks at every node of the cloud and the domains the hosts
report for it, and says what to do next; it never waits for anything and never remembers:
the controller performs the actions, records failures and in-flight work into the next
`Observed`, and calls again (level-triggered, like a Kubernetes controller).

Safety rules, in the order they are checked:
- A domain on a fenced host is gone (the fence powered the host off). Every other domain of a
  node, wherever it is, counts as a live copy, even on a host the leader cannot reach.
- A node gets a new domain only when it has no live copy. So a node is re-placed away from a
  host only once that host is dead by quorum AND its copy is proven gone: destroyed and
  undefined by the host itself (reachable despite the verdict), or the host was fenced.
- Two live copies (a fenced host came back) are resolved by removing all but the newest
  (running first, then highest term); nothing is started until one is left.
- Only domains whose metadata names this cloud are ever touched.
- A node in maintenance (`held`) is left where and as it is: never placed, never taken off
  a dead host to be re-placed (duplicates are still resolved).
- A drained host (`Desired.drained`) is never a placement's target; its nodes leave it one
  role-safe step at a time (`drain`): live (`Migrate`) to a host that shares its storage
  (`Desired.storage`) and can take the node now, else by stop-and-re-place. While a domain
  migrates it is on both hosts (paused and incoming on the target); the hosts report it as
  migrating, and the controller counts such a node in flight whoever started the move, so
  no pass takes the two for duplicates.
Liveness rules: a copy on a live host is restarted in place according to its run strategy;
a running copy whose agent stays unreachable is reset, then destroyed to be started again
(`hung`); a node or host backing off after failures is skipped until its deadline.
Images: a new domain goes to a host that has the node's image, or its base image (then
CreateOverlay comes first), or, failing both, to a host that can get it from the node's
source host (then CopyImage comes first); a copy is planned only from a source that is alive,
reachable and reports the image, and always before the CreateOverlay or Define that needs it.
Overlays no node needs any more (its node left the manifest, or the cloud is stopped) are
removed once their node's domains are gone; see `leftovers`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from cloudd.config.intent import Ensure, RunStrategy
from cloudd.vmctl.plan import drain
from cloudd.vmctl.plan.hung import hung
from cloudd.vmctl.plan.leftovers import leftovers
from cloudd.vmctl.plan.model import (
    GUEST_SHUTDOWN,
    Action,
    CopyImage,
    CreateOverlay,
    Define,
    Desired,
    Destroy,
    DomainObs,
    DomainState,
    Fence,
    HostObs,
    Limits,
    Liveness,
    Migrate,
    NodeAction,
    NodeSpec,
    Observed,
    Planned,
    Shutdown,
    Start,
    Undefine,
    Waiting,
)
from cloudd.vmctl.plan.placement import Placer

#: States in which a domain is up (or on its way down by itself): nothing to start.
_UP = frozenset({DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED,
                 DomainState.PMSUSPENDED, DomainState.SHUTDOWN})
#: Shutoff reasons that mean the domain never ran since it was defined.
_NEVER_RAN = frozenset({"", "unknown"})


def plan(desired: Desired, observed: Observed, now: float, *,
         limits: Limits | None = None) -> list[Action]:
    """The actions that move `observed` towards `desired`, in the order to perform them."""
    return list(planned(desired, observed, now, limits=limits).actions)


def planned(desired: Desired, observed: Observed, now: float, *,
            limits: Limits | None = None) -> Planned:
    """`plan`, plus the nodes it had to leave waiting and why."""
    return _Pass(desired, observed, now, limits or Limits()).run()


class _Pass:
    def __init__(self, desired: Desired, observed: Observed, now: float,
                 limits: Limits) -> None:
        self.desired = desired
        self.observed = observed
        self.now = now
        self.limits = limits
        self.hosts: dict[str, HostObs] = {h.name: h for h in observed.hosts}
        self.copies: dict[str, list[DomainObs]] = defaultdict(list)
        self.replaced_from: dict[str, str] = {}
        fenced = {h.name for h in observed.hosts if h.fenced}
        cloud = desired.cloud
        for d in observed.domains:
            if d.cloud != cloud:
                continue
            if d.host in fenced:
                prior = self.replaced_from.get(d.node)
                self.replaced_from[d.node] = d.host if prior is None else min(prior, d.host)
            else:
                self.copies[d.node].append(d)
        for node_copies in self.copies.values():
            if len(node_copies) > 1:
                # the hosts' reports arrive in any order; the plan must not depend on it
                node_copies.sort(key=lambda d: d.host)
        self.by_node: dict[str, list[NodeAction]] = defaultdict(list)
        self.fences: dict[str, Fence] = {}
        self.waiting: dict[str, str] = {}
        self.roles = {n.name: n.role for n in desired.nodes}
        self.specs = {n.name: n for n in desired.nodes}
        self.homeless: frozenset[str] = frozenset()
        #: (node, drained host) given their drain step in this pass (the others wait)
        self.leaving: list[tuple[str, str]] = []
        rank = {role: i for i, role in enumerate(desired.role_order)}
        self.order = sorted(desired.nodes,
                            key=lambda n: (rank.get(n.role, len(rank)), n.role, n.name))

    # ---- helpers ----------------------------------------------------------------------

    def _wait(self, node: str, reason: str) -> None:
        self.waiting.setdefault(node, reason)

    def _backing_off(self, node: str) -> bool:
        if not self.observed.node_failures:
            return False
        record = self.observed.node_failures.get(node)
        if record is not None and record.not_before > self.now:
            self._wait(node, f"backing off after {record.count} failure(s) "
                             f"until {record.not_before:.1f}")
            return True
        return False

    def _host_usable(self, host: HostObs) -> bool:
        record = self.observed.host_failures.get(host.name)
        return (host.liveness is Liveness.ALIVE and host.reachable and not host.fenced
                and (record is None or record.not_before <= self.now))

    def _remove(self, d: DomainObs, *, why: str, graceful: bool) -> None:
        """Take one domain down and away: shutdown (then destroy on timeout), undefine."""
        host = self.hosts.get(d.host)
        if host is None or not host.reachable:
            self._wait(d.node, f"{why}, but host {d.host} is unreachable")
            return
        out = self.by_node[d.node]
        if d.state is DomainState.SHUTOFF:
            out.append(Undefine(d.node, d.host, why))
        elif d.state in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.SHUTDOWN) \
                and graceful:
            asked = self.observed.shutdowns.get((d.node, d.host))
            if asked is None:
                out.append(Shutdown(d.node, d.host, why))
            elif self.now - asked >= self.limits.shutdown_timeout:
                out.append(Destroy(d.node, d.host,
                                   f"{why}; no power-off {self.limits.shutdown_timeout:g}s "
                                   "after shutdown"))
            else:
                self._wait(d.node, "waiting for the guest to power off")
        else:
            out.append(Destroy(d.node, d.host, why))

    # ---- the pass ---------------------------------------------------------------------

    def run(self) -> Planned:
        managed = {n.name for n in self.desired.nodes if n.managed}
        known = {n.name for n in self.desired.nodes}
        busy = self.observed.in_flight
        stopping = self.desired.ensure is Ensure.STOPPED
        for node in sorted(self.copies):
            if node in known or node in busy:
                continue
            for d in self.copies[node]:
                self._remove(d, why="node is no longer in the manifest", graceful=True)
        if stopping:
            for spec in self.order:
                if spec.name in managed and spec.name not in busy:
                    for d in self.copies.get(spec.name, []):
                        self._remove(d, why="cloud is to be stopped", graceful=True)
            self._leftovers()
            return self._result(placer=None)
        drained = self.desired.drained
        placer = Placer((h for h in self.observed.hosts
                         if self._host_usable(h) and h.name not in drained),
                        servers=(h for h in self.observed.hosts
                                 if h.liveness is Liveness.ALIVE and h.reachable
                                 and not h.fenced))
        roles = self.roles
        placer.count_all((d.host, roles.get(d.node, ""))
                         for node_copies in self.copies.values() for d in node_copies)
        homeless: list[NodeSpec] = []
        self.homeless = frozenset(n for n in managed if not self.copies.get(n))
        for spec in self.order:
            if spec.name not in managed or spec.name in busy:
                continue
            copies = self.copies.get(spec.name, [])
            if not copies:
                homeless.append(spec)
            elif len(copies) > 1:
                self._dedupe(spec, copies)
            else:
                self._keep(spec, copies[0], placer)
        unknown = sorted(h.name for h in self.observed.hosts if not h.reported and not h.fenced)
        for name in unknown:
            host = self.hosts[name]
            if host.liveness is Liveness.DEAD and not host.reachable:
                self._fence(name, "host is dead by quorum and its domains are unknown")
        # before placement: a node that now names another disk has its old one removed
        # before its new domain is defined (the host refuses while the name is defined)
        self._leftovers()
        for spec in homeless:
            if unknown:
                # any of them may run this node's domain: placing it could make a second one
                if not self._backing_off(spec.name):
                    self._wait(spec.name, f"domains of host {unknown[0]} are unknown")
                continue
            self._place(spec, placer)
        return self._result(placer)

    def _leftovers(self) -> None:
        """Remove the overlays no node needs any more."""
        busy = self.observed.in_flight
        live = {node for node, node_copies in self.copies.items() if node_copies}
        for action in leftovers(self.desired, self.observed.hosts, live=live,
                                held=lambda n: n in busy or self._backing_off(n)):
            self.by_node[action.node].append(action)

    def _fence(self, host: str, reason: str) -> None:
        if host in self.observed.fencing or host in self.fences:
            return
        record = self.observed.host_failures.get(host)
        if record is None or record.not_before <= self.now:
            self.fences[host] = Fence(host, reason)

    def _dedupe(self, spec: NodeSpec, copies: list[DomainObs]) -> None:
        def rank(d: DomainObs) -> tuple[bool, bool, int, str]:
            host = self.hosts.get(d.host)
            reachable = host is not None and host.reachable
            return (d.state is DomainState.RUNNING, reachable, d.term, d.host)

        # keep what runs, as known from a fresh report, newest term first
        keep = max(copies, key=rank)
        for d in copies:
            if d is not keep:
                self._remove(d, why=f"duplicate of the copy on {keep.host} "
                                    f"(term {keep.term})", graceful=False)
        self._wait(spec.name, f"{len(copies)} copies; removing all but the one on {keep.host}")

    def _keep(self, spec: NodeSpec, d: DomainObs, placer: Placer) -> None:
        """One live copy: keep it, restart it in place, or take it off a dead host."""
        host = self.hosts.get(d.host)
        if host is None:
            self._wait(spec.name, f"host {d.host} is not in the pool")
            return
        if host.liveness is Liveness.DEAD:
            if spec.held:
                # re-placing is the only reason to take it off (or fence) its host: a held
                # node is not re-placed
                self._wait(spec.name, f"in maintenance: left on host {d.host}, which is dead")
                return
            if host.reachable:
                self._remove(d, why=f"host {d.host} is dead by quorum; removing before "
                                    "re-placing", graceful=False)
            else:
                self._fence(d.host, f"host is dead by quorum and runs {spec.name}")
                self._wait(spec.name, f"host {d.host} is dead; waiting for it to be fenced")
            return
        if host.liveness is Liveness.SUSPECT or not host.reachable:
            self._wait(spec.name, f"host {d.host} is {host.liveness.value}"
                                  f"{'' if host.reachable else ' and unreachable'}")
            return
        if d.host in self.desired.drained and self._drain(spec, d, placer):
            return
        if d.state is DomainState.RUNNING and spec.run is not RunStrategy.MANUAL:
            self._hung(d)
            return
        if d.state in _UP or d.state is DomainState.NOSTATE:
            return
        if spec.run is RunStrategy.MANUAL:
            return
        if spec.run is RunStrategy.RERUN_ON_FAILURE and d.state is DomainState.SHUTOFF \
                and d.reason == GUEST_SHUTDOWN:
            return
        if self._backing_off(spec.name):
            return
        if d.state is DomainState.CRASHED:
            self.by_node[spec.name].append(
                Destroy(spec.name, d.host, "crashed; clearing it to restart in place"))
            return
        placer.charge(d.host, spec.memory_mib)
        never = d.reason in _NEVER_RAN
        self.by_node[spec.name].append(Start(
            spec.name, d.host, "defined, not started" if never
            else f"{d.state.value} ({d.reason}); restarting in place", respawn=not never))

    def _drain(self, spec: NodeSpec, d: DomainObs, placer: Placer) -> bool:
        """A copy on a drained host: take the move's next step, or say what it waits for.
        True when that settles the node for this pass (False: it stays, and a copy that is
        down is restarted in place as on any host)."""
        on_host = [self.specs[n] for n, copies in self.copies.items()
                   if n in self.specs and any(c.host == d.host for c in copies)]
        decided = drain.step(spec, d, desired=self.desired, observed=self.observed,
                             on_host=on_host, homeless=self.homeless, fits=placer.fits,
                             leaving=self.leaving)
        if isinstance(decided, drain.Leave):
            # one step at a time within the pass too: the next node waits for this one
            self.leaving.append((spec.name, d.host))
            if self._backing_off(spec.name):
                return True
            target = self._live_target(spec, d, placer)
            if target is not None:
                out = self.by_node[spec.name]
                if spec.base_image is not None:
                    # the target records the overlay as well (it finds it there, on the
                    # shared storage): it can remove it once no node needs it, even after
                    # the drained host has left the pool
                    out.append(CreateOverlay(spec.name, target,
                                             f"{target} takes over {spec.name}'s overlay"))
                out.append(Migrate(spec.name, d.host, target,
                                   f"{decided.reason}, live to {target} (storage "
                                   f"{self.desired.storage[target]} is shared)"))
            else:
                self._remove(d, why=decided.reason, graceful=True)
            return True
        self._wait(spec.name, decided.reason)
        return d.state is DomainState.RUNNING

    def _live_target(self, spec: NodeSpec, d: DomainObs, placer: Placer) -> str | None:
        """The host `spec`'s running copy `d` moves to live, already booked; None when it
        moves by stop-and-re-place: it does not run, or its stop has begun; its host takes
        part in no live migration, or no host sharing its storage can take it now; or it has
        failures on record (a migration that failed once is not tried again: the node
        leaves the way that always works)."""
        storage = self.desired.storage.get(d.host)
        if (storage is None or d.state is not DomainState.RUNNING
                or (spec.name, d.host) in self.observed.shutdowns
                or spec.name in self.observed.node_failures):
            return None
        return placer.choose(spec, among={h for h, s in self.desired.storage.items()
                                          if s == storage and h != d.host})

    def _hung(self, d: DomainObs) -> None:
        """A running domain on a live host: reset it, or destroy it, when its agent has been
        unreachable too long (`hung`)."""
        found = hung(d, self.observed, bound=self.desired.unreachable_reset_after, now=self.now)
        if found is None:
            return
        if isinstance(found, Waiting):
            self._wait(d.node, found.reason)
        elif not self._backing_off(d.node):
            self.by_node[d.node].append(found)

    def _place(self, spec: NodeSpec, placer: Placer) -> None:
        if spec.held:
            self._wait(spec.name, "in maintenance: no domain, and none is made while held")
            return
        if self._backing_off(spec.name):
            return
        host = placer.choose(spec)
        if host is None:
            drained = sorted(self.desired.drained)
            self._wait(spec.name, placer.explain(spec) + (
                f" (drained, so taking no node: {', '.join(drained)})" if drained else ""))
            return
        old = self.replaced_from.get(spec.name)
        why = (f"re-placing: host {old} is dead and fenced" if old is not None
               else "no domain anywhere")
        out = self.by_node[spec.name]
        images = placer.hosts[host].images
        if spec.image not in images:
            if spec.base_image is None or spec.base_image not in images:
                # placement chose a host without the image only because the source has it
                assert spec.source is not None
                out.append(CopyImage(spec.name, host, spec.source.host, spec.copied_image,
                                     f"{host} lacks {spec.copied_image}; "
                                     f"{spec.source.host} has it"))
            if spec.base_image is not None:
                out.append(CreateOverlay(spec.name, host, f"{host} has base {spec.base_image}"))
        out.append(Define(spec.name, host, why))
        if spec.run is not RunStrategy.MANUAL:
            out.append(Start(spec.name, host, "newly defined", respawn=old is not None))

    def _result(self, placer: Placer | None) -> Planned:
        actions: list[Action] = [self.fences[h] for h in sorted(self.fences)]
        rank = {n.name: i for i, n in enumerate(self.order)}
        for node in sorted(self.by_node, key=lambda n: (rank.get(n, -1), n)):
            actions.extend(self.by_node[node])
        waiting = tuple(Waiting(n, r) for n, r in sorted(self.waiting.items(),
                                                          key=lambda i: (rank.get(i[0], -1),
                                                                         i[0])))
        return Planned(tuple(actions), waiting)


def summarize(actions: list[Action] | tuple[Action, ...]) -> Mapping[str, int]:
    """How many actions of each kind, for logs and `inspect`."""
    counts: dict[str, int] = {}
    for a in actions:
        counts[type(a).__name__] = counts.get(type(a).__name__, 0) + 1
    return counts
