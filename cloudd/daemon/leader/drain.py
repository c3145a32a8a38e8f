"""The operator's drained hosts, as the leader reads them: a view of the cloud's record, and
how each role may leave a drained host.

`cloudd-cli drain HOST` keeps the leader from placing anything new on HOST and has it move
the nodes there elsewhere, one role-safe step at a time (the rules are the planner's,
`cloudd.vmctl.plan.drain`); `undrain HOST` lets placements back and moves nothing back. The
drains are part of the cloud's replicated record (`cloudd.daemon.member.record.with_drain`):
written to a majority of the pool hosts before the operator hears they are in force, and
inherited by every new leader, which carries on where the last one stopped (the planner
remembers nothing: it reads the drains and the domains anew on every pass).

How a role leaves (`MOVES`): a role whose disk holds the cloud's data (a database, a batch
head's spool, AppScale's datastore and coordination roles) is stateful, moved last and only
with the operator's word (`--move-stateful`); a batch compute node may be running jobs that a
stop would kill, so it needs the same word (cloudd does not yet drain it in the scheduler);
any other role is a stateless replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd.daemon.network.catalogue import Drain
from cloudd.vmctl.plan import DrainMove

#: (cloud type, role) -> how its nodes leave a drained host; any other role is a replica.
MOVES: Mapping[tuple[str, str], DrainMove] = {
    ("web", "database"): DrainMove.STATEFUL,
    ("torque", "head"): DrainMove.STATEFUL,
    ("torque", "compute"): DrainMove.SCHEDULED,
    ("slurm", "head"): DrainMove.STATEFUL,
    ("slurm", "compute"): DrainMove.SCHEDULED,
    ("appscale", "master"): DrainMove.STATEFUL,
    ("appscale", "database"): DrainMove.STATEFUL,
    ("appscale", "zookeeper"): DrainMove.STATEFUL,
}

#: The order in which a node's roles decide: the most careful wins.
_CARE = (DrainMove.STATEFUL, DrainMove.SCHEDULED, DrainMove.REPLICA)


def move_of(cloud_type: str, roles: Iterable[str]) -> DrainMove:
    """How a node holding `roles` leaves a drained host: its most careful role's way."""
    moves = {MOVES.get((cloud_type, r), DrainMove.REPLICA) for r in roles}
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
