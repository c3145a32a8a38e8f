"""When the leader calls a provider's cluster-level hooks: `configure`, `monitor`, `stop`.

Theory of operation. The acting leader runs one hook at a time, and this core says which one
is due now, given what the shell observed (`Facts`: the term it acts in, whether the cloud is
to be stopped, and every role of the provider in role order with its nodes, their addresses
and their health) and what it remembers (`HookState`). Pure: the shell hands it `now` (the
monotonic clock) and the random unit of the backoff's jitter, and performs what it returns.

- `configure(role)` is due when the role's signature (its nodes with their addresses and
  health, and the cloud's settings) differs from the one last configured in this term, and
  every role it depends on is configured as it is now and, when it has nodes, has a healthy
  one. Every role is configured once in a term, even one with no nodes: configure is
  level-triggered ("this is the role now"), so a provider removes from its scheduler what is
  no longer there. Roles go in role order; a role that keeps failing holds back only the
  roles that depend on it.
- A failed configure is tried again after the backoff (at least the delay of a
  TemporaryError), unless its signature changed meanwhile: new facts are tried at once.
- `monitor` is due every `Facts.monitor_every` seconds, and at once after a configure
  succeeded.
- `stop` is due when the cloud is to be stopped and some node is still healthy (with none,
  there is nothing left to stop). Until it succeeded, failed for good, or `stop_within`
  seconds passed since it was first due, the cloud is *held*: the shell leaves the domains
  and the nodes' services running, so that `stop` still finds the head node serving.
- Configure and monitor are not called while the cloud is to be stopped; a stopped cloud
  forgets what it configured, so that a cloud started again is configured afresh.
- A new term (or none) forgets everything: a new leader configures every role again.
Order when several are due: the configures (role order), then the stop, then the monitor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cloudd.backoff import Backoff

#: (node, address, healthy) of each node of a role, in the manifest's order.
Members = tuple[tuple[str, str, bool], ...]
Signature = tuple[Members, str]


class Hook(enum.Enum):
    CONFIGURE = "configure"
    MONITOR = "monitor"
    STOP = "stop"


class StopPhase(enum.Enum):
    NONE = "none"
    """The cloud is not to be stopped (or the leader is not acting)."""
    PENDING = "pending"
    """To be stopped: the provider's stop is due or being retried; the cloud is held."""
    DONE = "done"
    """The provider's stop succeeded, or there was nothing left to stop."""
    GIVEN_UP = "given-up"
    """The provider's stop failed for good or ran out of time; the cloud stops anyway."""


@dataclass(frozen=True)
class RoleFacts:
    name: str
    depends_on: tuple[str, ...] = ()
    members: Members = ()

    @property
    def healthy(self) -> bool:
        return any(ok for _, _, ok in self.members)


@dataclass(frozen=True)
class Facts:
    """What the shell observed for one decision."""

    term: int | None
    """The term this agent acts in on the cloud (None: it does not act)."""
    stopping: bool
    roles: tuple[RoleFacts, ...]
    """Every role of the provider, in its role order."""
    settings: str = ""
    """A digest of the cloud's settings: a change configures every role again."""
    monitor_every: float = 30.0
    """Seconds between two monitors (the manifest's `timing.monitor_interval`)."""

    def signature(self, role: RoleFacts) -> Signature:
        return (role.members, self.settings)


@dataclass(frozen=True)
class HookCall:
    hook: Hook
    role: str = ""
    signature: Signature | None = None
    """For a configure: what it configures (recorded when it succeeds)."""

    @property
    def subject(self) -> str:
        """What its failures are kept under: the role for a configure, else the hook."""
        return self.role if self.hook is Hook.CONFIGURE else self.hook.value


@dataclass(frozen=True)
class HookFault:
    """A hook that failed `count` times in a row, tried again from `not_before` on."""

    hook: Hook
    count: int
    not_before: float
    error: str
    signature: Signature | None = None


#: Seconds the cloud is held for the provider's stop at most: a stop that cannot finish (its
#: head node gone) must not keep the cloud running for long.
STOP_WITHIN = 120.0


@dataclass(frozen=True)
class HookTiming:
    stop_within: float = STOP_WITHIN
    """Seconds the cloud is held for the provider's stop at most."""
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    """Of failed calls (the agent's `reconcile.backoff_base` and `backoff_max`)."""


@dataclass(frozen=True)
class HookState:
    term: int | None = None
    configured: Mapping[str, Signature] = field(default_factory=dict)
    failures: Mapping[str, HookFault] = field(default_factory=dict)
    monitor_at: float = float("-inf")
    """When the next monitor is due (monotonic)."""
    stop: StopPhase = StopPhase.NONE
    stop_since: float = 0.0


def settle(state: HookState, facts: Facts, *, now: float, timing: HookTiming) -> HookState:
    """The state as of `facts`: a new term starts afresh, a stop order starts or ends the
    hold, and a hold that ran out of time ends."""
    if facts.term != state.term:
        state = HookState(term=facts.term)
    if facts.term is None:
        return state
    if not facts.stopping:
        if state.stop is StopPhase.NONE:
            return state
        return replace(state, stop=StopPhase.NONE, failures={
            k: v for k, v in state.failures.items() if k != Hook.STOP.value})
    if state.stop is StopPhase.NONE:
        state = replace(state, configured={}, stop=StopPhase.PENDING, stop_since=now,
                        failures={k: v for k, v in state.failures.items()
                                  if k == Hook.STOP.value})
    if state.stop is StopPhase.PENDING:
        if not any(r.healthy for r in facts.roles):
            return replace(state, stop=StopPhase.DONE)
        if now - state.stop_since >= timing.stop_within:
            return replace(state, stop=StopPhase.GIVEN_UP)
    return state


def holding(state: HookState) -> bool:
    """Whether the cloud is held for the provider's stop (see the module docstring)."""
    return state.term is not None and state.stop is StopPhase.PENDING


def _waits(state: HookState, subject: str, signature: Signature | None, now: float) -> bool:
    failed = state.failures.get(subject)
    return failed is not None and failed.signature == signature and now < failed.not_before


def _ready(state: HookState, facts: Facts, role: RoleFacts) -> bool:
    """A role others may be configured after: configured as it is now, and with a healthy
    node when it has nodes."""
    configured = state.configured.get(role.name) == facts.signature(role)
    return configured and (role.healthy or not role.members)


def next_call(state: HookState, facts: Facts, *, now: float) -> HookCall | None:
    """The hook to call now, if any (`state` settled for `facts`)."""
    if state.term is None or facts.term != state.term:
        return None
    if facts.stopping:
        if state.stop is StopPhase.PENDING and not _waits(state, Hook.STOP.value, None, now):
            return HookCall(Hook.STOP)
        return None
    roles = {r.name: r for r in facts.roles}
    for role in facts.roles:
        sig = facts.signature(role)
        if state.configured.get(role.name) == sig:
            continue
        if not all(_ready(state, facts, roles[d]) for d in role.depends_on if d in roles):
            continue
        if not _waits(state, role.name, sig, now):
            return HookCall(Hook.CONFIGURE, role.name, sig)
    if now >= state.monitor_at:
        return HookCall(Hook.MONITOR)
    return None


def next_wake(state: HookState, facts: Facts, *, now: float) -> float | None:
    """When something is due next (monotonic) without new facts; None: nothing is."""
    if state.term is None:
        return None
    times = [f.not_before for f in state.failures.values() if f.not_before > now]
    if not facts.stopping:
        times.append(state.monitor_at)
    return min(times, default=None)


def succeeded(state: HookState, call: HookCall, *, now: float, facts: Facts) -> HookState:
    failures = {k: v for k, v in state.failures.items() if k != call.subject}
    if call.hook is Hook.CONFIGURE:
        assert call.signature is not None
        return replace(state, configured={**state.configured, call.role: call.signature},
                       failures=failures, monitor_at=now)
    if call.hook is Hook.MONITOR:
        return replace(state, failures=failures, monitor_at=now + facts.monitor_every)
    return replace(state, failures=failures, stop=StopPhase.DONE)


def failed(state: HookState, call: HookCall, *, now: float, facts: Facts, timing: HookTiming,
           error: str, temporary: bool, delay: float = 0.0, unit: float = 0.0,
           pending: bool = False) -> HookState:
    """A call failed: `temporary` with the error's own `delay` (a floor under the backoff);
    `unit` is the jitter's random number in [0, 1). `pending`: not a failure but work going
    on elsewhere: tried again after exactly `delay`, the count of failures unchanged."""
    before = state.failures.get(call.subject)
    if pending:
        count = before.count if before is not None else 0
        wait = delay
    else:
        count = before.count + 1 if before is not None else 1
        wait = max(delay, timing.backoff.delay(count, unit))
    record = HookFault(call.hook, count, now + wait, error, call.signature)
    state = replace(state, failures={**state.failures, call.subject: record})
    if call.hook is Hook.MONITOR:
        return replace(state, monitor_at=now + facts.monitor_every)
    if call.hook is Hook.STOP and (not temporary or now + wait - state.stop_since
                                   >= timing.stop_within):
        return replace(state, stop=StopPhase.GIVEN_UP)
    return state
