"""The operator's drained hosts, as the leader reads them: a view of the cloud's record, and
how each role may leave a drained host.

`cloudd-cli drain HOST` keeps the leader from placing anything new on HOST and has it move
the nodes there elsewhere, one role-safe step at a time (the rules are the planner's,
`cloudd.vmctl.plan.drain`); `undrain HOST` lets placements back and moves nothing back. The
drains are part of the cloud's replicated record (`cloudd.daemon.member.record.with_drain`):
written to a majority of the pool hosts before the operator hears they are in force, and
inherited by every new leader, which carries on where the last one stopped (the planner
remembers nothing: it reads the drains and the domains anew on every pass).

How a role leaves is its type's word (`RoleSpec.move`, in each provider's `spec`): a role
whose disk holds the cloud's data (a database, a batch head's spool, AppScale's datastore and
coordination roles) is stateful, moved last and only with the operator's word
(`--move-stateful`); any other role is a stateless replica, except a batch compute node,
which may be running jobs that a stop would kill: the leader first has its scheduler drain
it (`batch_moves`: Slurm's `state=drain`, TORQUE's `pbsnodes -o`, with cloudd's reason for a
move), and the planner moves it once the scheduler shows it drained with no job left
(`Observed.emptied`); once it is ready on another host (or its host is undrained), the drain
is undone. `--move-stateful` moves it at once, its jobs killed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd.config.intent import DrainMove
from cloudd.daemon.network.catalogue import Drain
from cloudd.providers.base import NodeUse
from cloudd.providers.catalog import CATALOG

#: The order in which a node's roles decide: the most careful wins.
_CARE = (DrainMove.STATEFUL, DrainMove.SCHEDULED, DrainMove.REPLICA)


def move_of(cloud_type: str, roles: Iterable[str]) -> DrainMove:
    """How a node holding `roles` leaves a drained host: its most careful role's way (a
    type or role the catalog does not know: a replica)."""
    spec = CATALOG.get(cloud_type)
    known = {r.name: r.move for r in spec.roles} if spec is not None else {}
    moves = {known.get(r, DrainMove.REPLICA) for r in roles}
    return next((m for m in _CARE if m in moves), DrainMove.REPLICA)


@dataclass(frozen=True)
class Drains:
    """The drains in force, as the planner and `inspect` read them."""

    entries: tuple[Drain, ...] = ()

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(d.host for d in self.entries)

    @property
    def move_stateful(self) -> frozenset[str]:
        return frozenset(d.host for d in self.entries if d.move_stateful)

    def view(self) -> list[dict[str, Any]]:
        """The drains as `cloudd-cli drain` answers them."""
        return [{"host": d.host, "move_stateful": d.move_stateful, "at": d.at, "by": d.by}
                for d in self.entries]


#: No host drained.
NO_DRAINS = Drains()


@dataclass(frozen=True)
class BatchMoves:
    """What the leader does this pass about the batch compute nodes of drained hosts."""

    #: To drain in the scheduler, to move (`Release.MOVE`).
    release: tuple[str, ...] = ()
    #: Moved (or their host undrained): the scheduler's drain undone.
    keep: tuple[str, ...] = ()
    #: Drained with no job left, or serving no job at all: the planner may move them now.
    emptied: frozenset[str] = frozenset()


def batch_moves(nodes: Iterable[str], *, where: Mapping[str, str], drains: Drains,
                use: Mapping[str, NodeUse], ready: Collection[str]) -> BatchMoves:
    """For batch compute `nodes` (those of a role whose move is `DrainMove.SCHEDULED`):
    `where` each one's domain is (node -> host), what its scheduler says of each (`use`; a
    node it does not list is left alone), and the nodes whose agent is ready."""
    release, keep, emptied = [], [], set()
    for node in sorted(nodes):
        u, host = use.get(node), where.get(node)
        if u is None or host is None:
            continue
        if host in drains.hosts and host not in drains.move_stateful:
            if u.moving or not (u.ready or u.released):
                # Ours, or taking no job anyway (down, an operator's drain): once no job
                # is left, nothing is lost by the move.
                if not u.busy:
                    emptied.add(node)
            elif not u.released:  # an elastic role's node leaving goes its own way
                release.append(node)
        elif u.moving and host not in drains.hosts and node in ready:
            keep.append(node)
    return BatchMoves(tuple(release), tuple(keep), frozenset(emptied))
