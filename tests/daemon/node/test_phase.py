"""The node's phase machine, row by row: every (phase, event) of the table, the decisions,
and the pairs the table leaves out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloudd.daemon.network.catalogue import NodePhase, ServiceReport
from cloudd.daemon.node.phase import (
    DECISIONS,
    TRANSITIONS,
    Assigned,
    ConvergeFailed,
    ConvergeSucceeded,
    Event,
    Halted,
    NodeFacts,
    Resumed,
    ServicesDropped,
    ServicesSeen,
    ServicesStarted,
    StopOrdered,
    decide,
    seen,
    step,
)
from cloudd.providers.policy import IllegalTransition

P = NodePhase
ON = NodeFacts(assigned=True)
UP = replace(ON, supervising=True, waiting="app STARTING")  # converging, services starting
#: One set of facts in each phase (services supervised wherever they can be).
IN: dict[NodePhase, NodeFacts] = {
    P.UNASSIGNED: NodeFacts(),
    P.CONVERGING: UP,
    P.READY: replace(ON, supervising=True, ready=True, ready_once=True),
    P.DEGRADED: replace(ON, supervising=True, waiting="app BACKOFF (exited)", ready_once=True),
    P.FAILED: replace(ON, supervising=True, ready=True, ready_once=True, error="boom"),
    P.STOPPING: replace(ON, supervising=True, stopping=True),
    P.STOPPED: replace(ON, supervising=True, stopping=True, halted=True),
}
EVENTS: list[Event] = [Assigned(), StopOrdered(), Halted(), Resumed(), ConvergeFailed("bad"),
                       ConvergeSucceeded(), ServicesStarted(), ServicesSeen(ready=True),
                       ServicesDropped()]
NOT_READY = ServicesSeen(ready=False, waiting="app EXITED (exited with status 1)")

#: (phase, event, phase after, message after): one line per row of TRANSITIONS.
ROWS: list[tuple[NodePhase, Event, NodePhase, str]] = [
    (P.UNASSIGNED, Assigned(), P.CONVERGING, ""),
    (P.UNASSIGNED, StopOrdered(), P.UNASSIGNED, ""),
    (P.UNASSIGNED, Halted(), P.UNASSIGNED, ""),

    (P.CONVERGING, StopOrdered(), P.STOPPING, ""),
    (P.CONVERGING, ConvergeFailed("bad"), P.FAILED, "bad"),
    (P.CONVERGING, ConvergeSucceeded(), P.CONVERGING, "app STARTING"),
    (P.CONVERGING, ServicesStarted(), P.CONVERGING, ""),
    (P.CONVERGING, ServicesSeen(ready=True), P.READY, ""),
    (P.CONVERGING, ServicesDropped(), P.CONVERGING, ""),

    (P.READY, StopOrdered(), P.STOPPING, ""),
    (P.READY, ConvergeFailed("bad"), P.FAILED, "bad"),
    (P.READY, ConvergeSucceeded(), P.READY, ""),
    (P.READY, ServicesStarted(), P.CONVERGING, ""),
    (P.READY, NOT_READY, P.DEGRADED, "app EXITED (exited with status 1)"),
    (P.READY, ServicesDropped(), P.CONVERGING, ""),

    (P.DEGRADED, StopOrdered(), P.STOPPING, ""),
    (P.DEGRADED, ConvergeFailed("bad"), P.FAILED, "bad"),
    (P.DEGRADED, ConvergeSucceeded(), P.DEGRADED, "app BACKOFF (exited)"),
    (P.DEGRADED, ServicesStarted(), P.CONVERGING, ""),
    (P.DEGRADED, ServicesSeen(ready=True), P.READY, ""),
    (P.DEGRADED, ServicesDropped(), P.CONVERGING, ""),

    (P.FAILED, StopOrdered(), P.STOPPING, ""),
    (P.FAILED, ConvergeFailed("worse"), P.FAILED, "worse"),
    (P.FAILED, ConvergeSucceeded(), P.READY, ""),
    (P.FAILED, ServicesStarted(), P.FAILED, "boom"),
    (P.FAILED, NOT_READY, P.FAILED, "boom"),
    (P.FAILED, ServicesDropped(), P.FAILED, "boom"),

    (P.STOPPING, StopOrdered(), P.STOPPING, ""),
    (P.STOPPING, Halted(), P.STOPPED, ""),
    (P.STOPPING, ConvergeFailed("bad"), P.STOPPING, ""),
    (P.STOPPING, ConvergeSucceeded(), P.STOPPING, ""),
    (P.STOPPING, ServicesStarted(), P.STOPPING, ""),
    (P.STOPPING, ServicesSeen(ready=True), P.STOPPING, ""),
    (P.STOPPING, ServicesDropped(), P.STOPPING, ""),

    (P.STOPPED, StopOrdered(), P.STOPPED, ""),
    (P.STOPPED, Halted(), P.STOPPED, ""),
    (P.STOPPED, Resumed(), P.CONVERGING, ""),
    (P.STOPPED, ServicesStarted(), P.STOPPED, ""),
    (P.STOPPED, ServicesSeen(ready=False), P.STOPPED, ""),
    (P.STOPPED, ServicesDropped(), P.STOPPED, ""),
]


def test_each_phase_has_its_sample_facts() -> None:
    assert {p: decide(f)[0] for p, f in IN.items()} == {p: p for p in NodePhase}


def test_the_rows_cover_the_table_exactly() -> None:
    assert sorted((p.value, type(e).__name__) for p, e, _, _ in ROWS) == sorted(
        (p.value, kind.__name__) for p, kind in TRANSITIONS)


@pytest.mark.parametrize(("before", "event", "after", "message"), ROWS,
                         ids=[f"{p.value}-{type(e).__name__}" for p, e, _, _ in ROWS])
def test_row(before: NodePhase, event: Event, after: NodePhase, message: str) -> None:
    facts = IN[before]
    assert decide(step(facts, event)) == (after, message)
    assert decide(facts)[0] is before  # frozen: the facts passed in did not change


ILLEGAL = [(p, e) for p in NodePhase for e in EVENTS if (p, type(e)) not in TRANSITIONS]


@pytest.mark.parametrize(("before", "event"), ILLEGAL,
                         ids=[f"{p.value}-{type(e).__name__}" for p, e in ILLEGAL])
def test_illegal_transition_raises_and_changes_nothing(before: NodePhase, event: Event) -> None:
    facts = IN[before]
    copy = replace(facts)
    with pytest.raises(IllegalTransition, match=f"{type(event).__name__} is not allowed in "
                                                f"{before.value}"):
        step(facts, event)
    assert facts == copy


def test_the_illegal_pairs_are_the_ones_meant() -> None:
    assert {(p.value, type(e).__name__) for p, e in ILLEGAL} == {
        *((p, "Assigned") for p in ("converging", "ready", "degraded", "failed", "stopping",
                                    "stopped")),
        *((p, "Halted") for p in ("converging", "ready", "degraded", "failed")),
        *((p, "Resumed") for p in ("unassigned", "converging", "ready", "degraded", "failed",
                                   "stopping")),
        *(("unassigned", e) for e in ("ConvergeFailed", "ConvergeSucceeded", "ServicesStarted",
                                      "ServicesSeen", "ServicesDropped")),
        ("stopped", "ConvergeFailed"), ("stopped", "ConvergeSucceeded"),
    }


def test_services_seen_without_services_is_illegal() -> None:
    with pytest.raises(IllegalTransition, match="none is supervised"):
        step(ON, ServicesSeen(ready=True))


# ---- the decisions, one line per rule --------------------------------------------------
DECIDED = [
    (NodeFacts(stopping=True, halted=True, error="x"), P.UNASSIGNED, ""),
    (replace(ON, stopping=True, halted=True, error="x"), P.STOPPED, ""),
    (replace(ON, stopping=True, error="x"), P.STOPPING, ""),
    (replace(ON, error="x", supervising=True, ready=True), P.FAILED, "x"),
    (replace(ON, ready=True, ready_once=True, waiting="w"), P.CONVERGING, ""),
    (replace(ON, supervising=True, ready=True), P.READY, ""),
    (replace(ON, supervising=True, ready_once=True, waiting="w"), P.DEGRADED, "w"),
    (replace(ON, supervising=True, waiting="w"), P.CONVERGING, "w"),
]


def test_one_case_per_decision() -> None:
    assert len(DECIDED) == len(DECISIONS)
    for facts, phase, message in DECIDED:
        assert decide(facts) == (phase, message), facts


# ---- histories ---------------------------------------------------------------------------
def run(*events: Event) -> list[NodePhase]:
    facts, phases = NodeFacts(), []
    for e in events:
        facts = step(facts, e)
        phases.append(decide(facts)[0])
    return phases


def test_a_life() -> None:
    assert run(Assigned(), ServicesStarted(), ServicesSeen(ready=False), ServicesSeen(ready=True),
               ConvergeSucceeded(), NOT_READY, ServicesSeen(ready=True), StopOrdered(), Halted(),
               Resumed(), ServicesStarted(), ServicesSeen(ready=True)) == [
        P.CONVERGING, P.CONVERGING, P.CONVERGING, P.READY, P.READY, P.DEGRADED, P.READY,
        P.STOPPING, P.STOPPED, P.CONVERGING, P.CONVERGING, P.READY]


def test_ready_while_failed_does_not_count_as_ready_once() -> None:
    failed = step(UP, ConvergeFailed("bad"))
    facts = step(step(failed, ServicesSeen(ready=True)), NOT_READY)
    assert not facts.ready_once
    assert decide(step(facts, ConvergeSucceeded()))[0] is P.CONVERGING  # not DEGRADED: never ready


def test_replaced_services_must_be_ready_again_before_degraded() -> None:
    facts = step(IN[P.READY], ServicesStarted())
    assert decide(step(facts, NOT_READY))[0] is P.CONVERGING


def test_a_converge_error_outlives_a_stop() -> None:
    facts = step(step(step(UP, ConvergeFailed("bad")), StopOrdered()), Halted())
    assert decide(step(facts, Resumed())) == (P.FAILED, "bad")


def test_a_stop_before_the_first_assignment() -> None:
    assert run(StopOrdered(), Halted(), Assigned(), Resumed()) == [
        P.UNASSIGNED, P.UNASSIGNED, P.STOPPED, P.CONVERGING]


def test_an_empty_error_still_fails() -> None:
    assert decide(step(ON, ConvergeFailed(""))) == (P.FAILED, "converge failed")


def test_seen_names_what_is_not_running_and_ready() -> None:
    def report(name: str, state: str, ready: bool, error: str = "") -> ServiceReport:
        return ServiceReport(name, state, None, ready, 1, 0, error)

    assert seen([]) == ServicesSeen(ready=True)
    assert seen([report("a", "RUNNING", True)]) == ServicesSeen(ready=True)
    assert seen([report("a", "RUNNING", False), report("b", "RUNNING", True),
                 report("c", "BACKOFF", False, "exited with status 2")]) == ServicesSeen(
        ready=False, waiting="a RUNNING; c BACKOFF (exited with status 2)")
