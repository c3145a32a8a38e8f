"""The operator's maintenance holds, as the leader reads them: a view of the cloud's record.

`cloudd-cli maintenance on NODE` keeps the leader from starting, stopping, moving or
re-assigning that node; `maintenance on CLOUD` pauses the leader's reconciling altogether.
The holds are part of the cloud's replicated record (`cloudd.daemon.member.record`): written
to a majority of the pool hosts before the operator hears they are in force, and inherited by
every new leader. No local file is their source: a damaged or missing one changes nothing.
In the record a hold is a node's name, and "" stands for the whole cloud.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: How the whole cloud shows in the operator's list of holds.
WHOLE_CLOUD = "(cloud)"


@dataclass(frozen=True)
class Maintenance:
    """The holds in force: node names, None for the whole cloud."""

    held: frozenset[str | None] = frozenset()

    @classmethod
    def of(cls, holds: Iterable[str]) -> Maintenance:
        """The holds as the record keeps them ("" for the whole cloud)."""
        return cls(frozenset(h or None for h in holds))

    @property
    def whole_cloud(self) -> bool:
        return None in self.held

    def view(self) -> list[str]:
        return view(self.held)


def view(held: Iterable[str | None]) -> list[str]:
    """The holds as the operator reads them."""
    return sorted(s or WHOLE_CLOUD for s in held)
