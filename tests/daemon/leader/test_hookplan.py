"""The provider hooks' core: which hook is due when, and what a call's outcome changes.
Pure: facts, a state and `now` in, a call or a new state out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloudd.backoff import Backoff
from cloudd.daemon.leader import hookplan
from cloudd.daemon.leader.hookplan import (
    Facts,
    Hook,
    HookCall,
    HookState,
    HookTiming,
    RoleFacts,
    StopPhase,
)

TIMING = HookTiming(stop_within=60.0, backoff=Backoff(base=1.0, cap=8.0, jitter=0.0))
NOW = 100.0


def head(*, healthy: bool = True) -> RoleFacts:
    return RoleFacts("head", (), (("h1", "10.0.0.1", healthy),))


def compute(*states: bool) -> RoleFacts:
    return RoleFacts("compute", ("head",), tuple(
        (f"c{i}", f"10.0.0.{10 + i}", ok) for i, ok in enumerate(states, 1)))


def facts(*roles: RoleFacts, term: int | None = 3, stopping: bool = False) -> Facts:
    return Facts(term=term, stopping=stopping, roles=roles or (head(), compute(True, True)),
                 settings="s1", monitor_every=30.0)


def settled(f: Facts, state: HookState | None = None, *, now: float = NOW) -> HookState:
    return hookplan.settle(state or HookState(), f, now=now, timing=TIMING)


def configured(f: Facts, *roles: str, now: float = NOW) -> HookState:
    """A state in which `roles` were configured with `f`'s facts (and a monitor ran)."""
    state = settled(f, now=now)
    for role in f.roles:
        if role.name in roles:
            state = hookplan.succeeded(state, HookCall(Hook.CONFIGURE, role.name,
                                                   f.signature(role)), now=now, facts=f)
    return hookplan.succeeded(state, HookCall(Hook.MONITOR), now=now, facts=f)


def due(f: Facts, state: HookState, *, now: float = NOW) -> tuple[Hook, str] | None:
    call = hookplan.next_call(settled(f, state, now=now), f, now=now)
    return None if call is None else (call.hook, call.role)


@pytest.mark.parametrize(("f", "done", "expected"), [
    # a new term: every role in role order, the head first
    (facts(), (), (Hook.CONFIGURE, "head")),
    (facts(), ("head",), (Hook.CONFIGURE, "compute")),
    # both configured, monitor ran just now: nothing
    (facts(), ("head", "compute"), None),
    # the head is not healthy: compute (which depends on it) waits, nothing else is due
    (facts(head(healthy=False), compute(True)), ("head",), None),
    # a role with no nodes is configured too (level-triggered: "no compute nodes now")
    (facts(head(), compute()), ("head",), (Hook.CONFIGURE, "compute")),
    # a dependency with no nodes at all does not hold a role back
    (facts(RoleFacts("head"), compute(True)), ("head",), (Hook.CONFIGURE, "compute")),
    # not acting: nothing at all
    (facts(term=None), (), None),
])
def test_configure_is_due_in_role_order_once_dependencies_are_healthy(
        f: Facts, done: tuple[str, ...], expected: tuple[Hook, str] | None) -> None:
    assert due(f, configured(f, *done)) == expected


@pytest.mark.parametrize(("change", "expected"), [
    # a compute node's health changed: configure compute again
    (lambda f: replace(f, roles=(head(), compute(True, False))), (Hook.CONFIGURE, "compute")),
    # a compute node left the manifest
    (lambda f: replace(f, roles=(head(), compute(True))), (Hook.CONFIGURE, "compute")),
    # a node's address changed
    (lambda f: replace(f, roles=(head(), RoleFacts("compute", ("head",), (
        ("c1", "10.0.0.99", True), ("c2", "10.0.0.12", True))))), (Hook.CONFIGURE, "compute")),
    # the head's facts changed: the head first, compute only after it
    (lambda f: replace(f, roles=(RoleFacts("head", (), (("h1", "10.0.0.2", True),)),
                                 compute(True, False))), (Hook.CONFIGURE, "head")),
    # the settings changed: every role again, in order
    (lambda f: replace(f, settings="s2"), (Hook.CONFIGURE, "head")),
    # nothing changed
    (lambda f: f, None),
])
def test_a_role_is_configured_again_when_its_nodes_or_their_health_change(change, expected):
    f = facts()
    assert due(change(f), configured(f, "head", "compute")) == expected


def test_monitor_runs_on_its_interval_and_right_after_a_configure() -> None:
    f = facts()
    state = configured(f, "head", "compute")
    assert due(f, state, now=NOW + 29.9) is None
    assert due(f, state, now=NOW + 30.0) == (Hook.MONITOR, "")
    assert hookplan.next_wake(state, f, now=NOW) == NOW + 30.0
    # a configure succeeded: a monitor is due at once
    later = hookplan.succeeded(state, HookCall(Hook.CONFIGURE, "compute", f.signature(f.roles[1])),
                               now=NOW + 5, facts=f)
    assert due(f, later, now=NOW + 5) == (Hook.MONITOR, "")
    # a failed monitor waits for the next interval too
    failed = hookplan.failed(later, HookCall(Hook.MONITOR), now=NOW + 5, facts=f, timing=TIMING,
                             error="x", temporary=True)
    assert due(f, failed, now=NOW + 34.9) is None
    assert due(f, failed, now=NOW + 35.0) == (Hook.MONITOR, "")


def test_a_failed_configure_backs_off_unless_its_facts_change() -> None:
    f = facts()
    state = configured(f, "head")
    call = HookCall(Hook.CONFIGURE, "compute", f.signature(f.roles[1]))
    for count, wait in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)):
        state = hookplan.failed(state, call, now=NOW, facts=f, timing=TIMING, error="no",
                                temporary=True)
        record = state.failures["compute"]
        assert (record.count, record.not_before) == (count, NOW + wait)
    # waiting: nothing is due, but a monitor may run meanwhile (not blocked by the role)
    assert due(f, state, now=NOW + 7.9) is None
    assert due(f, replace(state, monitor_at=NOW), now=NOW + 7.9) == (Hook.MONITOR, "")
    assert hookplan.next_call(state, f, now=NOW + 8.0) == call
    # new facts are tried at once
    other = replace(f, roles=(head(), compute(True)))
    assert due(other, state, now=NOW + 1) == (Hook.CONFIGURE, "compute")
    # a TemporaryError's own delay is a floor under the backoff
    delayed = hookplan.failed(settled(f), call, now=NOW, facts=f, timing=TIMING, error="no",
                              temporary=True, delay=5.0)
    assert delayed.failures["compute"].not_before == NOW + 5.0
    # success forgets the failures
    ok = hookplan.succeeded(state, call, now=NOW + 9, facts=f)
    assert "compute" not in ok.failures and ok.configured["compute"] == call.signature


def test_a_new_term_starts_afresh_and_no_term_forgets_everything() -> None:
    f = facts()
    state = configured(f, "head", "compute")
    state = hookplan.failed(state, HookCall(Hook.MONITOR), now=NOW, facts=f, timing=TIMING,
                            error="x", temporary=False)
    newer = replace(f, term=4)
    assert settled(newer, state) == HookState(term=4)
    assert due(newer, state) == (Hook.CONFIGURE, "head")
    assert settled(replace(f, term=None), state) == HookState(term=None)


def test_a_stop_holds_the_cloud_until_the_providers_stop_is_done() -> None:
    f = facts()
    running = configured(f, "head", "compute")
    stopping = replace(f, stopping=True)
    state = settled(stopping, running)
    assert state.stop is StopPhase.PENDING and hookplan.holding(state)
    assert state.configured == {}  # started again later, every role is configured afresh
    assert hookplan.next_call(state, stopping, now=NOW) == HookCall(Hook.STOP)
    done = hookplan.succeeded(state, HookCall(Hook.STOP), now=NOW + 1, facts=stopping)
    assert done.stop is StopPhase.DONE and not hookplan.holding(done)
    # stopped: nothing is due, neither configure nor monitor
    assert hookplan.next_call(settled(stopping, done, now=NOW + 100), stopping,
                              now=NOW + 100) is None
    # running again: the stop is forgotten and every role configured anew
    again = settled(f, done, now=NOW + 200)
    assert again.stop is StopPhase.NONE and not hookplan.holding(again)
    assert due(f, again, now=NOW + 200) == (Hook.CONFIGURE, "head")


@pytest.mark.parametrize(("outcome", "phase"), [
    # a temporary failure is retried after the backoff, still holding
    (dict(temporary=True), StopPhase.PENDING),
    # a permanent one gives up at once: the cloud stops without it
    (dict(temporary=False), StopPhase.GIVEN_UP),
    # a retry that would come after the bound gives up now
    (dict(temporary=True, delay=60.0), StopPhase.GIVEN_UP),
])
def test_a_failed_stop_is_retried_within_its_bound(outcome: dict, phase: StopPhase) -> None:
    stopping = facts(stopping=True)
    state = settled(stopping)
    state = hookplan.failed(state, HookCall(Hook.STOP), now=NOW, facts=stopping, timing=TIMING,
                            error="head unreachable", **outcome)
    assert state.stop is phase
    assert hookplan.holding(state) is (phase is StopPhase.PENDING)


def test_the_hold_ends_by_itself_after_its_bound_or_with_no_healthy_node() -> None:
    stopping = facts(stopping=True)
    state = settled(stopping)
    assert settled(stopping, state, now=NOW + 59.9).stop is StopPhase.PENDING
    assert settled(stopping, state, now=NOW + 60.0).stop is StopPhase.GIVEN_UP
    # nothing healthy: nothing left to stop
    gone = facts(head(healthy=False), compute(False), stopping=True)
    assert settled(gone).stop is StopPhase.DONE
    assert hookplan.next_call(settled(gone), gone, now=NOW) is None


def test_a_stop_waits_out_its_backoff() -> None:
    stopping = facts(stopping=True)
    state = hookplan.failed(settled(stopping), HookCall(Hook.STOP), now=NOW, facts=stopping,
                            timing=TIMING, error="x", temporary=True)
    assert hookplan.next_call(state, stopping, now=NOW + 0.5) is None
    assert hookplan.next_wake(state, stopping, now=NOW + 0.5) == NOW + 1.0
    assert hookplan.next_call(state, stopping, now=NOW + 1.0) == HookCall(Hook.STOP)


def test_not_acting_holds_nothing() -> None:
    state = settled(facts(term=None, stopping=True))
    assert not hookplan.holding(state)
    assert hookplan.next_call(state, facts(term=None, stopping=True), now=NOW) is None
    assert hookplan.next_wake(state, facts(term=None), now=NOW) is None


def test_a_failing_role_holds_back_only_the_roles_that_depend_on_it() -> None:
    f = facts(head(), compute(True), RoleFacts("login", (), (("l1", "10.0.0.30", True),)))
    state = settled(f)
    call = hookplan.next_call(state, f, now=NOW)
    assert call == HookCall(Hook.CONFIGURE, "head", f.signature(f.roles[0]))
    state = hookplan.failed(state, call, now=NOW, facts=f, timing=TIMING, error="down",
                            temporary=True)
    # compute depends on the head: it waits; login does not: it goes on
    assert due(f, state) == (Hook.CONFIGURE, "login")


def test_a_pending_configure_looks_again_after_its_delay_and_counts_no_failure() -> None:
    f = facts()
    state = configured(f, "head")
    call = HookCall(Hook.CONFIGURE, "compute", f.signature(f.roles[1]))
    for _ in range(20):  # a run going on for long: never backed off past its own delay
        state = hookplan.failed(state, call, now=NOW, facts=f, timing=TIMING,
                                error="appscale up runs", temporary=True, delay=10.0,
                                pending=True)
        record = state.failures["compute"]
        assert (record.count, record.not_before) == (0, NOW + 10.0)
    state = hookplan.failed(state, call, now=NOW, facts=f, timing=TIMING, error="no",
                            temporary=True)
    assert state.failures["compute"].count == 1  # the first real failure is the first


def test_a_stop_held_longer_when_the_timing_allows_it() -> None:
    stopping = facts(stopping=True)
    state = settled(stopping)
    longer = replace(TIMING, stop_within=660.0)
    later = hookplan.settle(state, stopping, now=NOW + 600.0, timing=longer)
    assert later.stop is StopPhase.PENDING
    assert hookplan.settle(state, stopping, now=NOW + 600.0, timing=TIMING).stop \
        is StopPhase.GIVEN_UP
