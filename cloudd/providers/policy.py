"""The supervision policy of one service: a pure state machine, fed events, returning actions.

Theory of operation. A service is in one of seven states (supervisord's, `State`). The runner
(`cloudd.providers.supervisor`) feeds `step()` an event with the current monotonic time and
performs the actions it returns: spawn the process, signal its process group, wake the machine
up at a time, report a state change. Nothing here reads a clock, sleeps or touches a process,
so every transition is tested with a fake clock and a seeded `random.Random`.

- A start counts only once the process stayed up `start_grace` seconds AND passed its readiness
  probe (when it has one): STARTING -> RUNNING.
- A failed start (spawn error, exit while STARTING) goes to BACKOFF and is retried after an
  exponential delay with jitter; an exit from RUNNING goes through EXITED and is restarted at
  once the first time, with backoff if it keeps happening. Running `stable_after` seconds
  forgets past failures.
- `max_failures` failures within `failure_window` seconds -> FATAL. Unlike supervisord, FATAL
  is retried after `fatal_cooldown`; `fatal_count` keeps how often it happened.
- Liveness failing `threshold` times in a row restarts the service; readiness only reports.
- An event that makes no sense in the current state raises `IllegalTransition`; the state
  passed in is frozen, so nothing changed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from cloudd.backoff import Backoff
from cloudd.errors import ClouddError


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class IllegalTransition(ClouddError):
    """An event arrived that the current state cannot take: a bug in the caller."""


@dataclass(frozen=True)
class PolicyConfig:
    """How one service is supervised (times in seconds of the runner's monotonic clock)."""

    #: Seconds the process must stay up before its start counts (ServiceSpec.start_grace).
    start_grace: float = 1.0
    #: Seconds between SIGTERM and SIGKILL to the process group (ServiceSpec.stop_grace).
    stop_grace: float = 10.0
    #: Whether the start also waits for a passing readiness probe.
    has_readiness: bool = False
    #: Consecutive liveness failures that restart the service (ProbeSpec.failure_threshold).
    liveness_threshold: int = 3
    #: First backoff delay; doubles with every further failure, up to `backoff_max`.
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    #: Share of the delay taken off at random, so that many services do not retry in step.
    jitter: float = 0.2
    #: Seconds of RUNNING after which earlier failures are forgotten.
    stable_after: float = 60.0
    #: This many failures within `failure_window` seconds make the service FATAL.
    max_failures: int = 5
    failure_window: float = 120.0
    #: Seconds a FATAL service waits before it is tried again (with a fresh failure budget).
    fatal_cooldown: float = 300.0
    #: The restart delays (cloudd's one backoff), built from the fields above.
    backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built here, so that nonsense is refused with the config, not at the first failure.
        object.__setattr__(self, "backoff", Backoff(base=self.backoff_base,
                                                    cap=self.backoff_max, jitter=self.jitter))


# ---- events -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartRequested:
    pass


@dataclass(frozen=True)
class StopRequested:
    pass


@dataclass(frozen=True)
class Spawned:
    pid: int


@dataclass(frozen=True)
class Adopted:
    """A process of this service found alive after an agent restart."""

    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True)
class Exited:
    #: Exit status, negative for a signal; None when the process was not our child (adopted).
    code: int | None


@dataclass(frozen=True)
class ProbeResult:
    liveness: bool  # True: the liveness probe; False: the readiness probe
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passed: the wake-up asked for with `WakeAt` (grace periods, backoff, cool-down)."""


Event = (StartRequested | StopRequested | Spawned | Adopted | SpawnFailed | Exited | ProbeResult
         | Tick)


# ---- actions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spawn:
    pass


@dataclass(frozen=True)
class KillGroup:
    signal: str  # "TERM" or "KILL"


@dataclass(frozen=True)
class WakeAt:
    at: float


@dataclass(frozen=True)
class Report:
    state: State
    message: str


Action = Spawn | KillGroup | WakeAt | Report


@dataclass(frozen=True)
class ServiceState:
    """Everything the policy remembers about one service."""

    state: State = State.STOPPED
    want_running: bool = False
    pid: int | None = None
    #: When the current process was spawned (STARTING/RUNNING) or the state was entered.
    since: float = 0.0
    ready: bool = False
    live_failures: int = 0
    #: Times of failures still inside the window; their number drives backoff and FATAL.
    failures: tuple[float, ...] = ()
    fatal_count: int = 0
    starts: int = 0
    #: When the pending wake-up is due (BACKOFF, EXITED, FATAL, SIGKILL in STOPPING, grace).
    due: float | None = None
    killed: bool = False
    last_error: str = ""


Result = tuple[ServiceState, list[Action]]
_Handler = Callable[[ServiceState, Event, float, PolicyConfig, random.Random], Result]


def backoff_delay(failures: int, cfg: PolicyConfig, rng: random.Random) -> float:
    """Delay before the next try after `failures` recent failures: 0 for the first."""
    if failures <= 1:
        return 0.0
    # The first failure restarts at once, so the backoff counts from the second.
    return cfg.backoff.delay(failures - 1, rng.random())


def _go(st: ServiceState, state: State, now: float, message: str, **changes: object) -> Result:
    new = replace(st, state=state, since=now, **changes)  # type: ignore[arg-type]
    return new, [Report(state, message)]


def _spawn(st: ServiceState, now: float, why: str) -> Result:
    new, acts = _go(st, State.STARTING, now, why, pid=None, ready=False, live_failures=0,
                    due=None, killed=False, starts=st.starts + 1)
    return new, [*acts, Spawn()]


def _fail(st: ServiceState, now: float, cfg: PolicyConfig, rng: random.Random, *,
          error: str, from_running: bool) -> Result:
    """Count one failure; decide between restarting now, backing off, and FATAL."""
    window = (*(t for t in st.failures if now - t < cfg.failure_window), now)
    st = replace(st, pid=None, ready=False, failures=window, last_error=error)
    if not st.want_running:
        return _go(st, State.STOPPED, now, error)
    if len(window) >= cfg.max_failures:
        due = now + cfg.fatal_cooldown
        new, acts = _go(st, State.FATAL, now, f"{error}; {len(window)} failures in "
                        f"{cfg.failure_window:g}s, retrying in {cfg.fatal_cooldown:g}s",
                        fatal_count=st.fatal_count + 1, due=due)
        return new, [*acts, WakeAt(due)]
    delay = backoff_delay(len(window), cfg, rng)
    state = State.EXITED if from_running else State.BACKOFF
    if delay == 0.0:
        new, acts = _go(st, state, now, f"{error}; restarting")
        new, more = _spawn(new, now, "restarting")
        return new, acts + more
    due = now + delay
    new, acts = _go(st, state, now, f"{error}; retrying in {delay:.2f}s", due=due)
    return new, [*acts, WakeAt(due)]


# ---- handlers -----------------------------------------------------------------------------
def _start_idle(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                rng: random.Random) -> Result:
    return _spawn(replace(st, want_running=True, failures=(), due=None), now, "start requested")


def _start_noop(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                rng: random.Random) -> Result:
    return replace(st, want_running=True), []


def _stop_noop(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
               rng: random.Random) -> Result:
    return replace(st, want_running=False), []


def _stop_idle(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
               rng: random.Random) -> Result:
    return _go(st, State.STOPPED, now, "stop requested", want_running=False, due=None)


def _stop_live(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
               rng: random.Random) -> Result:
    return _terminate(replace(st, want_running=False), now, cfg, "stop requested")


def _terminate(st: ServiceState, now: float, cfg: PolicyConfig, why: str) -> Result:
    if st.pid is None:  # spawn still in flight: SIGTERM goes out when `Spawned` arrives
        return _go(st, State.STOPPING, now, why, due=None, killed=False)
    due = now + cfg.stop_grace
    new, acts = _go(st, State.STOPPING, now, why, due=due, killed=False)
    return new, [*acts, KillGroup("TERM"), WakeAt(due)]


def _spawned(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
             rng: random.Random) -> Result:
    assert isinstance(ev, Spawned | Adopted)
    if st.pid is not None:
        raise IllegalTransition(f"{type(ev).__name__} in {st.state.value} with pid {st.pid}")
    if st.state is State.STOPPING:
        due = now + cfg.stop_grace
        return replace(st, pid=ev.pid, due=due), [KillGroup("TERM"), WakeAt(due)]
    due = now + cfg.start_grace
    new = replace(st, pid=ev.pid, since=now, due=due)
    return new, [WakeAt(due)]


def _adopted(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
             rng: random.Random) -> Result:
    new, acts = _go(st, State.STARTING, now, "adopted a running process", want_running=True,
                    ready=False, live_failures=0, killed=False)
    new, more = _spawned(new, ev, now, cfg, rng)
    return new, acts + more


def _spawn_failed(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                  rng: random.Random) -> Result:
    assert isinstance(ev, SpawnFailed)
    if st.pid is not None:
        raise IllegalTransition(f"SpawnFailed in {st.state.value} with pid {st.pid}")
    return _fail(st, now, cfg, rng, error=f"spawn failed: {ev.reason}", from_running=False)


def _exit_text(ev: Event) -> str:
    assert isinstance(ev, Exited)
    if ev.code is None:
        return "exited"
    return f"killed by signal {-ev.code}" if ev.code < 0 else f"exited with status {ev.code}"


def _exited_starting(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                     rng: random.Random) -> Result:
    _need_pid(st, ev)
    return _fail(st, now, cfg, rng, error=f"{_exit_text(ev)} while starting",
                 from_running=False)


def _exited_running(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                    rng: random.Random) -> Result:
    _need_pid(st, ev)
    return _fail(st, now, cfg, rng, error=_exit_text(ev), from_running=True)


def _exited_stopping(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
                     rng: random.Random) -> Result:
    _need_pid(st, ev)
    if st.want_running:  # a restart (requested, or liveness failing)
        return _spawn(replace(st, pid=None), now, "restarting")
    return _go(st, State.STOPPED, now, "stopped", pid=None, ready=False, due=None)


def _need_pid(st: ServiceState, ev: Event) -> None:
    if st.pid is None:
        raise IllegalTransition(f"{type(ev).__name__} in {st.state.value} with no process")


def _probe(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
           rng: random.Random) -> Result:
    assert isinstance(ev, ProbeResult)
    _need_pid(st, ev)
    if st.state is State.STOPPING:
        return st, []
    if not ev.liveness:
        if ev.ok == st.ready:
            return st, []
        new = replace(st, ready=ev.ok)
        if st.state is State.STARTING:
            return _maybe_running(new, now, cfg)
        word = "ready" if ev.ok else f"not ready: {ev.detail}"
        return new, [Report(st.state, word)]
    if ev.ok or st.state is State.STARTING:
        return replace(st, live_failures=0), []
    fails = st.live_failures + 1
    if fails < cfg.liveness_threshold:
        return replace(st, live_failures=fails), []
    return _terminate(replace(st, live_failures=fails, last_error=f"liveness: {ev.detail}"),
                      now, cfg, f"liveness failed {fails} times: {ev.detail}; restarting")


def _maybe_running(st: ServiceState, now: float, cfg: PolicyConfig) -> Result:
    if st.pid is None or now < st.since + cfg.start_grace:
        return st, []
    if cfg.has_readiness and not st.ready:
        return st, []
    due = now + cfg.stable_after
    new, acts = _go(st, State.RUNNING, now, "running", due=due)
    return new, [*acts, WakeAt(due)]


def _tick(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
          rng: random.Random) -> Result:
    if st.due is None or now < st.due:
        if st.state is State.STARTING:
            return _maybe_running(st, now, cfg)
        return st, []
    if st.state is State.STARTING:
        return _maybe_running(replace(st, due=None), now, cfg)
    if st.state is State.RUNNING:  # stable: forget the past failures
        return replace(st, due=None, failures=()), []
    if st.state is State.STOPPING:
        if st.killed or st.pid is None:
            return replace(st, due=None), []
        return replace(st, due=None, killed=True), [KillGroup("KILL")]
    if st.state is State.FATAL:
        return _spawn(replace(st, failures=()), now, "cool-down over, trying again")
    return _spawn(st, now, "backoff over, trying again")  # BACKOFF, EXITED


def _tick_noop(st: ServiceState, ev: Event, now: float, cfg: PolicyConfig,
               rng: random.Random) -> Result:
    return st, []


S = State
#: (state, event type) -> handler. A pair missing here is an illegal transition.
TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (S.STOPPED, StartRequested): _start_idle,
    (S.STOPPED, StopRequested): _stop_noop,
    (S.STOPPED, Adopted): _adopted,
    (S.STOPPED, Tick): _tick_noop,
    (S.STARTING, StartRequested): _start_noop,
    (S.STARTING, StopRequested): _stop_live,
    (S.STARTING, Spawned): _spawned,
    (S.STARTING, SpawnFailed): _spawn_failed,
    (S.STARTING, Exited): _exited_starting,
    (S.STARTING, ProbeResult): _probe,
    (S.STARTING, Tick): _tick,
    (S.RUNNING, StartRequested): _start_noop,
    (S.RUNNING, StopRequested): _stop_live,
    (S.RUNNING, Exited): _exited_running,
    (S.RUNNING, ProbeResult): _probe,
    (S.RUNNING, Tick): _tick,
    (S.BACKOFF, StartRequested): _start_noop,
    (S.BACKOFF, StopRequested): _stop_idle,
    (S.BACKOFF, Tick): _tick,
    (S.EXITED, StartRequested): _start_noop,
    (S.EXITED, StopRequested): _stop_idle,
    (S.EXITED, Tick): _tick,
    (S.STOPPING, StartRequested): _start_noop,
    (S.STOPPING, StopRequested): _stop_noop,
    (S.STOPPING, Spawned): _spawned,
    (S.STOPPING, SpawnFailed): _spawn_failed,
    (S.STOPPING, Exited): _exited_stopping,
    (S.STOPPING, ProbeResult): _probe,
    (S.STOPPING, Tick): _tick,
    (S.FATAL, StartRequested): _start_idle,
    (S.FATAL, StopRequested): _stop_idle,
    (S.FATAL, Tick): _tick,
}


def step(st: ServiceState, event: Event, *, now: float, cfg: PolicyConfig,
         rng: random.Random) -> Result:
    """Apply one event at time `now`: the new state and the actions to perform, in order."""
    handler = TRANSITIONS.get((st.state, type(event)))
    if handler is None:
        raise IllegalTransition(f"{type(event).__name__} is not allowed in {st.state.value}")
    return handler(st, event, now, cfg, rng)
