"""What a node agent holds where a pool host holds the leader's parts.

Only pool hosts lead, so a node's member builds no controller, provider hooks, elastic loop
or host calls (nor imports their modules: see docs/operations.md, "An agent's footprint").
The member still asks the same questions of them on every agent (poke, hold, view); these
answer as the real parts answer on an agent that never leads: nothing held, nothing seen.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from cloudd.daemon.leader.views import CallTiming, ControllerView, ElasticView, HooksView
from cloudd.vmctl.plan import Planned

if TYPE_CHECKING:
    from cloudd.providers.base import Finding
    from cloudd.vmctl import backend as vb


class IdleController:
    """A node's controller: it never acts on domains."""

    fenced: frozenset[str] = frozenset()

    def poke(self) -> None:
        pass

    def domain_event(self, host: str, event: vb.DomainEvent) -> None:
        pass

    def reset(self, subject: str) -> None:
        pass

    def view(self) -> ControllerView:
        return ControllerView(hosts={}, last_plan=Planned(()), node_fails=MappingProxyType({}),
                              host_fails=MappingProxyType({}))


class IdleHooks:
    """A node's provider hooks: it never calls them, so it never holds the cloud."""

    def poke(self) -> None:
        pass

    def holding(self) -> bool:
        return False

    def view(self, *, also: tuple[Finding, ...] = ()) -> HooksView:
        return HooksView(findings=also)


class IdleElastic:
    """A node's elastic loop: it finds nothing, decides nothing, empties nothing."""

    def findings(self) -> tuple[Finding, ...]:
        return ()

    def view(self) -> ElasticView:
        return ElasticView()

    def emptied(self) -> frozenset[str]:
        return frozenset()


class IdleHostCalls:
    """A node's host calls: it makes none."""

    def timings(self) -> tuple[CallTiming, ...]:
        return ()
