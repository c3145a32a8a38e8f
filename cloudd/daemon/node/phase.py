"""The node's phase machine: what a node reports about its role, written down as tables.

Theory of operation. A node agent tells its leader where it stands with its role as one
`NodePhase`: unassigned, converging, ready, degraded, failed, stopping, stopped. The phase is
not kept and set by hand; it is decided by a few facts (`NodeFacts`) that change only through
events the node side feeds here as they happen:

    Assigned           the first assignment is in force (from the leader, or saved on disk)
    StopOrdered        `ensure: stopped`: the services are being stopped
    Halted             every service of the role has stopped
    Resumed            a new assignment after a stop: start afresh
    ConvergeFailed     the last converge raised (the shell retries it after a backoff)
    ConvergeSucceeded  a converge succeeded
    ServicesStarted    a fresh set of services is under supervision (first, or a changed spec)
    ServicesSeen       the supervised services as they are now (all running and ready or not)
    ServicesDropped    supervision ended with the services left running (agent shutdown)

`TRANSITIONS[(phase, event type)]` says which events each phase takes and how they change the
facts; `DECISIONS` then decides the phase from the facts, first rule that holds:

- no assignment yet: UNASSIGNED. No event leads back to it.
- a stop order dominates everything: STOPPING until every service stopped, then STOPPED.
  `Resumed` (only from STOPPED) forgets the services and their readiness.
- a converge error: FAILED, with the error as the message, until a converge succeeds.
- no services supervised yet: CONVERGING.
- every service RUNNING and ready: READY, and the services count as "ready once".
- otherwise CONVERGING before they were ready once and DEGRADED after, with what is waited
  for as the message. A fresh set of services (`ServicesStarted`) is not ready once yet.

An event a phase does not take (a halt nobody asked for, a resume of a node that is not
stopped, a second first assignment, a converge result while stopped) raises
`IllegalTransition`: a bug in the shell. The facts are frozen, so nothing changed.

While services are supervised the shell feeds a fresh `ServicesSeen` before it reads the
phase, so the phase it reports reflects the services as they are (between two reads the
decided phase may lag them; the four phases where that can happen take the same events).
Pure: no clock and no I/O here; the shell stamps `since` with its wall clock when the phase
it reports changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from cloudd.daemon.network.catalogue import NodePhase
from cloudd.providers.policy import IllegalTransition, State


@dataclass(frozen=True)
class NodeFacts:
    """Everything the phase depends on."""

    assigned: bool = False
    """A role assignment is in force (it is never withdrawn, only replaced)."""
    stopping: bool = False
    """A stop order is in force (`ensure: stopped`)."""
    halted: bool = False
    """Every service of the stop order has stopped."""
    error: str = ""
    """The last converge's error; empty once a converge succeeded."""
    supervising: bool = False
    """The role's services are under supervision."""
    ready: bool = False
    """Every supervised service was RUNNING and ready when last seen."""
    waiting: str = ""
    """The services that were not, as `name STATE (last error)`, joined by `; `."""
    ready_once: bool = False
    """The current set of services has been all ready at least once."""


# ---- events -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assigned:
    pass


@dataclass(frozen=True)
class StopOrdered:
    pass


@dataclass(frozen=True)
class Halted:
    pass


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class ConvergeFailed:
    error: str


@dataclass(frozen=True)
class ConvergeSucceeded:
    pass


@dataclass(frozen=True)
class ServicesStarted:
    pass


@dataclass(frozen=True)
class ServicesSeen:
    ready: bool
    waiting: str = ""


@dataclass(frozen=True)
class ServicesDropped:
    pass


Event = (Assigned | StopOrdered | Halted | Resumed | ConvergeFailed | ConvergeSucceeded
         | ServicesStarted | ServicesSeen | ServicesDropped)


class ServiceLike(Protocol):
    """What `seen` needs of a service report (`catalogue.ServiceReport` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def last_error(self) -> str: ...


def seen(services: Iterable[ServiceLike]) -> ServicesSeen:
    """The `ServicesSeen` event for the services as reported now."""
    waiting = [s for s in services if not (s.state == State.RUNNING and s.ready)]
    text = "; ".join(f"{s.name} {s.state}" + (f" ({s.last_error})" if s.last_error else "")
                     for s in waiting)
    return ServicesSeen(ready=not waiting, waiting=text)


# ---- the decision -------------------------------------------------------------------------
def _quiet(f: NodeFacts) -> str:
    return ""


def _error(f: NodeFacts) -> str:
    return f.error


def _waiting(f: NodeFacts) -> str:
    return f.waiting


P = NodePhase
#: (holds, phase, message) in order: the first rule that holds decides the phase.
DECISIONS: tuple[tuple[Callable[[NodeFacts], bool], NodePhase, Callable[[NodeFacts], str]],
                 ...] = (
    (lambda f: not f.assigned, P.UNASSIGNED, _quiet),
    (lambda f: f.stopping and f.halted, P.STOPPED, _quiet),
    (lambda f: f.stopping, P.STOPPING, _quiet),
    (lambda f: bool(f.error), P.FAILED, _error),
    (lambda f: not f.supervising, P.CONVERGING, _quiet),
    (lambda f: f.ready, P.READY, _quiet),
    (lambda f: f.ready_once, P.DEGRADED, _waiting),
    (lambda f: True, P.CONVERGING, _waiting),
)


def decide(facts: NodeFacts) -> tuple[NodePhase, str]:
    """The phase the facts make, and the message a report carries with it."""
    for holds, phase, message in DECISIONS:
        if holds(facts):
            return phase, message(facts)
    raise AssertionError("the last decision always holds")


# ---- handlers -----------------------------------------------------------------------------
_Handler = Callable[[NodeFacts, Event], NodeFacts]


def _assigned(f: NodeFacts, ev: Event) -> NodeFacts:
    return replace(f, assigned=True)


def _stop(f: NodeFacts, ev: Event) -> NodeFacts:
    # A second stop order while stopped keeps `halted`: the services are down already.
    return replace(f, stopping=True)


def _halted(f: NodeFacts, ev: Event) -> NodeFacts:
    return replace(f, halted=True)


def _resumed(f: NodeFacts, ev: Event) -> NodeFacts:
    # The error of a converge before the stop stands until a converge succeeds.
    return replace(f, stopping=False, halted=False, supervising=False, ready=False,
                   waiting="", ready_once=False)


def _converge_failed(f: NodeFacts, ev: Event) -> NodeFacts:
    assert isinstance(ev, ConvergeFailed)
    return replace(f, error=ev.error or "converge failed")


def _converged(f: NodeFacts, ev: Event) -> NodeFacts:
    return replace(f, error="")


def _services_started(f: NodeFacts, ev: Event) -> NodeFacts:
    return replace(f, supervising=True, ready=False, waiting="", ready_once=False)


def _services_seen(f: NodeFacts, ev: Event) -> NodeFacts:
    assert isinstance(ev, ServicesSeen)
    if not f.supervising:
        raise IllegalTransition("services seen while none is supervised")
    new = replace(f, ready=ev.ready, waiting=ev.waiting)
    if decide(new)[0] is P.READY:
        new = replace(new, ready_once=True)
    return new


def _services_dropped(f: NodeFacts, ev: Event) -> NodeFacts:
    return replace(f, supervising=False, ready=False, waiting="")


_RUNNING: dict[type, _Handler] = {
    StopOrdered: _stop,
    ConvergeFailed: _converge_failed,
    ConvergeSucceeded: _converged,
    ServicesStarted: _services_started,
    ServicesSeen: _services_seen,
    ServicesDropped: _services_dropped,
}
#: (phase, event type) -> handler. A pair missing here is an illegal transition.
TRANSITIONS: dict[tuple[NodePhase, type], _Handler] = {
    (P.UNASSIGNED, Assigned): _assigned,
    (P.UNASSIGNED, StopOrdered): _stop,
    (P.UNASSIGNED, Halted): _halted,
    **{(phase, kind): handler
       for phase in (P.CONVERGING, P.READY, P.DEGRADED, P.FAILED)
       for kind, handler in _RUNNING.items()},
    # A converge cancelled by the stop may still end either way; it changes no phase here.
    **{(P.STOPPING, kind): handler for kind, handler in _RUNNING.items()},
    (P.STOPPING, Halted): _halted,
    (P.STOPPED, StopOrdered): _stop,
    (P.STOPPED, Halted): _halted,
    (P.STOPPED, Resumed): _resumed,
    (P.STOPPED, ServicesStarted): _services_started,  # a second stop adopts the services
    (P.STOPPED, ServicesSeen): _services_seen,
    (P.STOPPED, ServicesDropped): _services_dropped,
}


def step(facts: NodeFacts, event: Event) -> NodeFacts:
    """Apply one event: the new facts (`decide` them for the phase)."""
    phase = decide(facts)[0]
    handler = TRANSITIONS.get((phase, type(event)))
    if handler is None:
        raise IllegalTransition(f"{type(event).__name__} is not allowed in {phase.value}")
    return handler(facts, event)
