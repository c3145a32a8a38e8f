"""A drained host's nodes: whether one may leave now, and if not, what it waits for. Pure.

Theory of operation. The operator drains a host (`cloudd-cli drain HOST`): the planner
places nothing new there (`Desired.drained`), and takes each node on it away, live when the
host shares its storage with another that can take the node (the planner's `Migrate`: the
guest runs on throughout), else by stop-and-re-place: a graceful shutdown, the undefine,
then the node has no domain and is placed like any homeless node, on a host that is not
drained. This module decides, per pass and per node, whether the node may leave now,
whichever way it goes. The rules, in the order checked:

- A node pinned to the drained host, or held for maintenance, stays (the drain cannot
  complete while it is there; `inspect` says so).
- One step at a time: no node leaves while another is leaving a drained host (asked to shut
  down, or down there, or with an action under way there, as a live migration is until it
  ends, or given its step earlier in the same pass), nor while another node of
  the cloud (off the drained hosts) has no domain yet or is not ready: the node moved before
  has to be serving again first. Two servers on one drained host thus never go at once.
- Stateless nodes (`DrainMove.REPLICA`) go first. A node of a role with other nodes leaves only
  while another node of its role is ready, so the role keeps serving; the sole node of its
  role leaves at once (nothing can keep its role up: as Pacemaker's standby, or a pod with no
  disruption budget under `kubectl drain`).
- Batch compute nodes (`DrainMove.SCHEDULED`, their running jobs would be killed) leave once
  their scheduler shows them drained with no job left (`Observed.emptied`: the leader asks
  the scheduler for that drain), or at once with the operator's word (`drain HOST
  --move-stateful`), after every stateless node. Stateful nodes (`DrainMove.STATEFUL`, whose
  local disk holds the role's data) leave only with that word (as `kubectl drain
  --delete-emptydir-data`), last of all.
- A node leaves only when some other host can take it now (image and memory), so a drain
  that cannot complete leaves the node running where it is and says why.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from cloudd.config.intent import DrainMove
from cloudd.vmctl.plan.model import Desired, DomainObs, DomainState, NodeSpec, Observed

#: Which kinds must be gone from the host before a node of this kind may leave.
_AFTER: Mapping[DrainMove, frozenset[DrainMove]] = {
    DrainMove.REPLICA: frozenset(),
    DrainMove.SCHEDULED: frozenset({DrainMove.REPLICA}),
    DrainMove.STATEFUL: frozenset({DrainMove.REPLICA, DrainMove.SCHEDULED}),
}

_WORD: Mapping[DrainMove, str] = {
    DrainMove.SCHEDULED: "a batch compute node: drained in its scheduler first, it leaves "
                         "once its jobs end (or at once, its jobs killed,",
    DrainMove.STATEFUL: "stateful (its disk is local and holds the role's data): moved only",
}


def _may_move(spec: NodeSpec, d: DomainObs, desired: Desired, observed: Observed) -> bool:
    """Whether the node's kind lets its copy `d`, on a drained host, leave at all now. A
    batch compute node may once its scheduler shows it drained with no job, or once its copy
    is stopped or asked to (its move under way, or down by itself: it runs no job), so that
    a pass without the scheduler's word (a slow head, a new leader's first pass) never
    starts it again where it is."""
    if spec.move is DrainMove.REPLICA or d.host in desired.move_stateful:
        return True
    return spec.move is DrainMove.SCHEDULED and (
        spec.name in observed.emptied or d.state is not DomainState.RUNNING
        or (spec.name, d.host) in observed.shutdowns)


@dataclass(frozen=True)
class Leave:
    """The node may leave its drained host now."""

    reason: str


@dataclass(frozen=True)
class Stay:
    """The node stays on its drained host for now, and why."""

    reason: str


def step(spec: NodeSpec, d: DomainObs, *, desired: Desired, observed: Observed,
         on_host: Collection[NodeSpec], homeless: Collection[str],
         fits: Callable[[NodeSpec], str | None],
         leaving: Collection[tuple[str, str]] = ()) -> Leave | Stay:
    """Whether `spec`, whose copy `d` is on a drained host, may leave it now.

    `on_host`: the cloud's nodes with a copy on that host (movable or not); `homeless`:
    nodes of the cloud with no domain anywhere; `fits(spec)`: None when another host can take
    the node now, else why not; `leaving`: (node, host) given `Leave` earlier in this pass."""
    host = d.host
    if spec.pin == host:
        return Stay(f"pinned to drained host {host}: it stays (the drain cannot complete)")
    if spec.held:
        return Stay(f"in maintenance: left on drained host {host}")
    if not _may_move(spec, d, desired, observed):
        close = ")" if spec.move is DrainMove.SCHEDULED else ""
        return Stay(f"{_WORD[spec.move]} with `cloudd-cli drain {host} --move-stateful`{close}")
    # A move already under way (asked to shut down, or down) is finished whatever else
    # waits: the node no longer serves where it is.
    started = d.state is not DomainState.RUNNING or (spec.name, host) in observed.shutdowns
    if not started:
        first = sorted(n.name for n in on_host
                       if n.name != spec.name and n.move in _AFTER[spec.move]
                       and n.pin != host and not n.held)
        if first:
            return Stay(f"{spec.move.value} nodes leave after the others: {', '.join(first)} "
                        f"still on {host}")
        peers = sorted(n.name for n in desired.nodes
                       if n.role == spec.role and n.name != spec.name)
        if spec.move is DrainMove.REPLICA and peers and not any(p in observed.ready for p in peers):
            return Stay(f"waiting for another {spec.role} to be ready before leaving drained "
                        f"host {host} (none of {', '.join(peers)} is)")
        pending = _pending(spec, desired=desired, observed=observed, homeless=homeless,
                           leaving=leaving)
        if pending:
            return Stay(f"one step at a time: {pending}")
    why = fits(spec)
    if why is not None:
        return Stay(f"no other host can take it: {why}")
    return Leave(f"host {host} is drained: moving {spec.name} ({spec.move.value})")


def _pending(spec: NodeSpec, *, desired: Desired, observed: Observed,
             homeless: Collection[str], leaving: Collection[tuple[str, str]]) -> str:
    """What the previous step still waits for: a node leaving a drained host, or a node of
    the cloud, off the drained hosts, that has no domain or is not ready yet ("" when
    nothing)."""
    for node, host in leaving:
        if node != spec.name:
            return f"{node} is leaving drained host {host}"
    specs = {n.name: n for n in desired.nodes}
    for d in observed.domains:
        n = specs.get(d.node)
        if (n is None or n.name == spec.name or d.cloud != desired.cloud
                or d.host not in desired.drained or n.held or n.pin == d.host
                or not _may_move(n, d, desired, observed)):
            continue
        if d.state is not DomainState.RUNNING or (n.name, d.host) in observed.shutdowns \
                or n.name in observed.in_flight:  # a live migration runs all along
            return f"{n.name} is leaving drained host {d.host}"
    for n in desired.nodes:
        if n.name == spec.name or not n.managed or n.held:
            continue
        if n.name in homeless:
            return f"{n.name} has no domain yet"
    on = {d.node: d.host for d in observed.domains if d.cloud == desired.cloud}
    for n in desired.nodes:
        if n.name == spec.name or n.held or n.name in observed.ready:
            continue
        if on.get(n.name) is not None and on[n.name] not in desired.drained:
            return f"{n.name} is not ready yet"
    return ""
