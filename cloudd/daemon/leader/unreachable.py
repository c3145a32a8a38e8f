"""What the leader remembers between passes for the hung-guest rule (`cloudd.vmctl.plan.hung`):
since when each node's agent has been dead here, and which domains it has reset.

Dead, not merely suspect: a suspicion may be another member's gossip, a death is this agent's
own failed probes (`cloudd.election.swim`), so no member can get another's guest reset. A
reset is remembered per (node, host) from the moment it is sent until the agent is alive
again, or the domain is started, destroyed, undefined or found gone: then the rule starts over
with a reset. Not merely when it is found not running: while a reset is remembered, a
power-off of that domain is the reset's doing (a template whose `on_reboot` is destroy turns a
reset into one), not the guest's, and the guest is seen shutting down before its stop event
comes. Such a stop keeps the reason `AFTER_RESET`, so that the planner starts the domain again
whatever its run strategy. The controller feeds it (`observe`, `sending`, `done`) and hands the
planner its `since` and `resets`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator

from cloudd.vmctl.hostagent import Op
from cloudd.vmctl.plan import AFTER_RESET, GUEST_SHUTDOWN, Liveness

Key = tuple[str, str]
"""(node, host)"""

#: The ops after which a domain's reset is forgotten: it started again, or it is gone.
_FORGETTING = frozenset({Op.START, Op.DESTROY, Op.UNDEFINE})


class Unreachable:
    """Node agents dead here and domains reset, on the controller's monotonic clock."""

    def __init__(self) -> None:
        #: node -> since when its agent has been dead here
        self.since: dict[str, float] = {}
        #: (node, host) -> when that domain was reset
        self.resets: dict[Key, float] = {}
        self._sending: set[Key] = set()

    def observe(self, nodes: Iterable[str], liveness: Callable[[str], Liveness], *,
                present: Collection[Key], now: float) -> None:
        """A pass's look: the managed `nodes` and the domains the hosts reported."""
        wanted = set(nodes)
        for node in [n for n in self.since if n not in wanted]:
            del self.since[node]
        for node in sorted(wanted):
            if liveness(node) is Liveness.DEAD:
                self.since.setdefault(node, now)
            else:
                self.since.pop(node, None)
        for key in [k for k in self.resets if k not in present or k[0] not in self.since]:
            del self.resets[key]

    @contextlib.contextmanager
    def sending(self, key: Key) -> Iterator[None]:
        """A RESET of `key` on its way: its power-off, should it come first, is the reset's."""
        self._sending.add(key)
        try:
            yield
        finally:
            self._sending.discard(key)

    def done(self, op: Op, key: Key, *, now: float) -> None:
        """A host command on `key` is done."""
        if op in _FORGETTING:
            self.resets.pop(key, None)
        if op is Op.RESET:
            self.resets[key] = now

    def reason(self, key: Key, detail: str) -> str:
        """The reason to keep for a domain's stop event of this `detail`."""
        reset = key in self.resets or key in self._sending
        return AFTER_RESET if reset and detail == GUEST_SHUTDOWN else detail
