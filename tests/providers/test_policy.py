"""The supervision policy, deterministically: a fake clock, a seeded Random, every transition."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudd.providers.policy import (
    TRANSITIONS,
    Adopted,
    Exited,
    IllegalTransition,
    KillGroup,
    PolicyConfig,
    ProbeResult,
    Report,
    ServiceState,
    Spawn,
    Spawned,
    SpawnFailed,
    StartRequested,
    State,
    StopRequested,
    Tick,
    WakeAt,
    backoff_delay,
    step,
)

CFG = PolicyConfig(start_grace=1.0, stop_grace=5.0, backoff_base=1.0, backoff_max=8.0,
                   jitter=0.0, stable_after=30.0, max_failures=4, failure_window=60.0,
                   fatal_cooldown=100.0, liveness_threshold=2)


class Driver:
    """One service's policy with a fake clock; keeps every action it was told to perform."""

    def __init__(self, cfg: PolicyConfig = CFG, seed: int = 1) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.now = 0.0
        self.st = ServiceState()
        self.actions: list[object] = []

    def feed(self, event: object, at: float | None = None) -> list[object]:
        if at is not None:
            self.now = at
        self.st, acts = step(self.st, event, now=self.now, cfg=self.cfg, rng=self.rng)  # type: ignore[arg-type]
        self.actions += acts
        return list(acts)

    def running(self, pid: int = 100) -> None:
        self.feed(StartRequested())
        self.feed(Spawned(pid))
        self.feed(Tick(), at=self.now + self.cfg.start_grace)
        assert self.st.state is State.RUNNING


def states(acts: list[object]) -> list[State]:
    return [a.state for a in acts if isinstance(a, Report)]


def test_start_counts_after_grace() -> None:
    d = Driver()
    acts = d.feed(StartRequested())
    assert d.st.state is State.STARTING and Spawn() in acts
    assert d.feed(Spawned(42), at=0.1) == [WakeAt(1.1)]
    assert d.feed(Tick(), at=0.5) == [] and d.st.state is State.STARTING
    acts = d.feed(Tick(), at=1.1)
    assert states(acts) == [State.RUNNING] and WakeAt(31.1) in acts
    assert d.st.pid == 42 and d.st.starts == 1


def test_start_waits_for_readiness_as_well_as_grace() -> None:
    d = Driver(PolicyConfig(start_grace=1.0, has_readiness=True))
    d.feed(StartRequested())
    d.feed(Spawned(7))
    d.feed(Tick(), at=1.0)
    assert d.st.state is State.STARTING
    d.feed(ProbeResult(liveness=False, ok=False, detail="refused"), at=2.0)
    assert d.st.state is State.STARTING
    acts = d.feed(ProbeResult(liveness=False, ok=True), at=3.0)
    assert states(acts) == [State.RUNNING]


def test_ready_before_grace_waits_for_grace() -> None:
    d = Driver(PolicyConfig(start_grace=2.0, has_readiness=True))
    d.feed(StartRequested())
    d.feed(Spawned(7))
    d.feed(ProbeResult(liveness=False, ok=True), at=0.5)
    assert d.st.state is State.STARTING
    d.feed(Tick(), at=2.0)
    assert d.st.state is State.RUNNING


def test_failed_starts_back_off_exponentially_then_fatal_then_retry() -> None:
    d = Driver()
    d.feed(StartRequested())
    d.feed(Spawned(1))
    # 1st failure: retried at once (BACKOFF then STARTING in one step)
    acts = d.feed(Exited(1), at=0.2)
    assert states(acts) == [State.BACKOFF, State.STARTING] and Spawn() in acts
    d.feed(Spawned(2))
    acts = d.feed(Exited(1), at=0.4)
    assert d.st.state is State.BACKOFF and acts[-1] == WakeAt(1.4)  # base 1 s
    assert d.feed(Tick(), at=1.0) == []  # early tick: nothing
    assert Spawn() in d.feed(Tick(), at=1.4)
    d.feed(Spawned(3))
    acts = d.feed(Exited(1), at=1.5)
    assert acts[-1] == WakeAt(3.5)  # doubled
    d.feed(Tick(), at=3.5)
    d.feed(Spawned(4))
    acts = d.feed(Exited(1), at=3.6)  # 4th failure within the window
    assert d.st.state is State.FATAL and d.st.fatal_count == 1
    assert acts[-1] == WakeAt(103.6)
    assert d.feed(Tick(), at=50.0) == []
    acts = d.feed(Tick(), at=103.6)
    assert d.st.state is State.STARTING and Spawn() in acts
    assert d.st.failures == () and d.st.fatal_count == 1 and d.st.starts == 5


def test_spawn_failure_is_a_failed_start() -> None:
    d = Driver()
    d.feed(StartRequested())
    acts = d.feed(SpawnFailed("no such file: /nope"))
    assert states(acts) == [State.BACKOFF, State.STARTING]
    d.feed(SpawnFailed("no such file: /nope"), at=0.1)
    assert d.st.state is State.BACKOFF and "no such file" in d.st.last_error


def test_backoff_is_capped_and_jittered() -> None:
    cfg = PolicyConfig(backoff_base=1.0, backoff_max=8.0, jitter=0.5)
    rng = random.Random(3)
    delays = [backoff_delay(n, cfg, rng) for n in range(2, 12)]
    assert all(0 < d <= 8.0 for d in delays)
    assert all(d >= 0.5 * min(8.0, 2.0 ** (n - 2)) for n, d in zip(range(2, 12), delays,
                                                                    strict=True))
    assert len(set(delays)) == len(delays)  # jitter makes them differ


def test_backoff_nonsense_is_refused_with_the_config() -> None:
    with pytest.raises(ValueError, match="base <= cap"):
        PolicyConfig(backoff_base=10.0, backoff_max=1.0)


def test_crash_while_running_restarts_at_once_then_backs_off() -> None:
    d = Driver()
    d.running()
    acts = d.feed(Exited(-9), at=5.0)
    assert states(acts) == [State.EXITED, State.STARTING] and Spawn() in acts
    assert "signal 9" in d.st.last_error
    d.feed(Spawned(101))
    d.feed(Tick(), at=6.0)
    acts = d.feed(Exited(-9), at=7.0)
    assert d.st.state is State.EXITED and acts[-1] == WakeAt(8.0)


def test_stable_period_forgets_failures() -> None:
    d = Driver()
    d.running()
    d.feed(Exited(1), at=2.0)
    d.feed(Spawned(5))
    d.feed(Tick(), at=3.0)
    assert d.st.state is State.RUNNING and len(d.st.failures) == 1
    d.feed(Tick(), at=33.0)  # stable_after elapsed
    assert d.st.failures == ()
    acts = d.feed(Exited(1), at=40.0)
    assert Spawn() in acts  # first failure again: at once


def test_stop_terms_then_kills_after_grace() -> None:
    d = Driver()
    d.running()
    acts = d.feed(StopRequested(), at=2.0)
    assert states(acts) == [State.STOPPING] and KillGroup("TERM") in acts and WakeAt(7.0) in acts
    assert d.feed(Tick(), at=6.0) == []
    assert d.feed(Tick(), at=7.0) == [KillGroup("KILL")]
    assert d.feed(Tick(), at=8.0) == []  # KILL only once
    acts = d.feed(Exited(-9), at=8.5)
    assert states(acts) == [State.STOPPED] and d.st.pid is None


def test_stop_while_spawn_in_flight_terms_when_spawned() -> None:
    d = Driver()
    d.feed(StartRequested())
    d.feed(StopRequested())
    assert d.st.state is State.STOPPING
    assert d.feed(Spawned(9), at=1.0) == [KillGroup("TERM"), WakeAt(6.0)]
    d.feed(Exited(-15))
    assert d.st.state is State.STOPPED


def test_stop_in_backoff_and_fatal_just_stops() -> None:
    for exits in (2, 4):
        d = Driver()
        d.feed(StartRequested())
        for i in range(exits):
            if d.st.state is State.BACKOFF:
                d.feed(Tick(), at=d.st.due)
            d.feed(Spawned(i + 1))
            d.feed(Exited(1))
        assert d.st.state in (State.BACKOFF, State.FATAL)
        acts = d.feed(StopRequested())
        assert states(acts) == [State.STOPPED] and d.st.due is None
        assert d.feed(Tick(), at=1000.0) == []


def test_restart_is_stop_then_start() -> None:
    d = Driver()
    d.running()
    d.feed(StopRequested())
    d.feed(StartRequested())
    acts = d.feed(Exited(-15), at=3.0)
    assert states(acts) == [State.STARTING] and Spawn() in acts
    assert d.st.failures == ()  # a requested restart is not a failure


def test_liveness_failures_restart_readiness_only_reports() -> None:
    cfg = PolicyConfig(start_grace=0.0, has_readiness=True, liveness_threshold=2, stop_grace=1)
    d = Driver(cfg)
    d.feed(StartRequested())
    d.feed(Spawned(3))
    d.feed(ProbeResult(liveness=False, ok=True))
    assert d.st.state is State.RUNNING
    acts = d.feed(ProbeResult(liveness=False, ok=False, detail="HTTP 503"))
    assert acts == [Report(State.RUNNING, "not ready: HTTP 503")] and not d.st.ready
    assert d.feed(ProbeResult(liveness=True, ok=False, detail="timeout")) == []
    d.feed(ProbeResult(liveness=True, ok=True))
    assert d.st.live_failures == 0
    d.feed(ProbeResult(liveness=True, ok=False, detail="timeout"))
    acts = d.feed(ProbeResult(liveness=True, ok=False, detail="timeout"))
    assert d.st.state is State.STOPPING and KillGroup("TERM") in acts
    assert d.st.want_running
    acts = d.feed(Exited(-15))
    assert Spawn() in acts


def test_adopted_process_must_pass_grace_again() -> None:
    d = Driver()
    acts = d.feed(Adopted(555), at=10.0)
    assert d.st.state is State.STARTING and d.st.pid == 555 and Spawn() not in acts
    d.feed(Tick(), at=11.0)
    assert d.st.state is State.RUNNING and d.st.want_running and d.st.starts == 0


def test_exit_after_stop_requested_in_stopped_is_a_noop_stop() -> None:
    d = Driver()
    assert d.feed(StopRequested()) == [] and d.st.state is State.STOPPED


ILLEGAL = [
    (ServiceState(), Spawned(1)),
    (ServiceState(), Exited(0)),
    (ServiceState(), SpawnFailed("x")),
    (ServiceState(), ProbeResult(liveness=True, ok=True)),
    (ServiceState(state=State.RUNNING, pid=4, want_running=True), Spawned(5)),
    (ServiceState(state=State.RUNNING, pid=4, want_running=True), Adopted(5)),
    (ServiceState(state=State.STARTING, pid=4, want_running=True), Spawned(5)),
    (ServiceState(state=State.STARTING, pid=None, want_running=True), Exited(1)),
    (ServiceState(state=State.STARTING, pid=4, want_running=True), SpawnFailed("x")),
    (ServiceState(state=State.BACKOFF, want_running=True, due=3.0), Exited(1)),
    (ServiceState(state=State.BACKOFF, want_running=True, due=3.0), Spawned(1)),
    (ServiceState(state=State.EXITED, want_running=True, due=3.0), ProbeResult(True, False)),
    (ServiceState(state=State.FATAL, want_running=True, due=3.0), Exited(1)),
    (ServiceState(state=State.STOPPING, pid=None), ProbeResult(liveness=False, ok=True)),
]


@pytest.mark.parametrize(("st", "event"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(st: ServiceState, event: object) -> None:
    before = st
    with pytest.raises(IllegalTransition):
        step(st, event, now=1.0, cfg=CFG, rng=random.Random(0))  # type: ignore[arg-type]
    assert st == before


def test_every_state_takes_stop_start_and_tick() -> None:
    for state in State:
        for ev in (StartRequested, StopRequested, Tick):
            assert (state, ev) in TRANSITIONS, (state, ev)


def test_same_seed_same_transcript() -> None:
    def run(seed: int) -> list[object]:
        d = Driver(PolicyConfig(jitter=0.5, backoff_base=1.0, max_failures=10), seed=seed)
        d.feed(StartRequested())
        for i in range(6):
            d.feed(Spawned(i + 1))
            d.feed(Exited(1))
            if d.st.due is not None:
                d.feed(Tick(), at=d.st.due)
        return d.actions

    assert run(5) == run(5)
    assert run(5) != run(6)


EVENTS = st.one_of(
    st.just(StartRequested()), st.just(StopRequested()), st.just(Tick()),
    st.builds(Spawned, st.integers(2, 99)), st.builds(Adopted, st.integers(2, 99)),
    st.just(SpawnFailed("boom")), st.builds(Exited, st.one_of(st.none(), st.integers(-9, 3))),
    st.builds(ProbeResult, st.booleans(), st.booleans()))


@given(steps=st.lists(st.tuples(EVENTS, st.floats(0, 50)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_event_sequence_keeps_the_invariants(steps: list[tuple[object, float]]) -> None:
    d = Driver()
    for event, dt in steps:
        before = d.st
        try:
            acts = d.feed(event, at=d.now + dt)
        except IllegalTransition:
            assert d.st == before  # refused, nothing changed
            continue
        no_process = (State.STOPPED, State.BACKOFF, State.EXITED, State.FATAL)
        assert d.st.state not in no_process or d.st.pid is None
        if Spawn() in acts:
            assert d.st.state is State.STARTING and d.st.pid is None and d.st.want_running
        if d.st.state in (State.BACKOFF, State.EXITED, State.FATAL):
            assert d.st.want_running and d.st.due is not None  # a wake-up is pending
        assert len(d.st.failures) <= CFG.max_failures
        if d.st.state is State.RUNNING:
            assert d.st.pid is not None
