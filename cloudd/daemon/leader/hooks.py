"""The leader's side of providers: the shell that calls `configure`, `monitor` and `stop`.

Theory of operation. One task per member runs this loop; it does anything only while the
member acts as the cloud's leader in a term (`term()`: the reconciling term, so not during the
operator's maintenance of the whole cloud). On every poke (a node's report, a new
generation, a leadership change) and at least every `WAKE` seconds it observes the facts
(the provider's roles with their nodes' addresses and health, whether the cloud is to be
stopped), asks the pure core (`hookplan`) which hook is due, and calls it, one at a time,
each within `call_within` seconds. What a call did goes back into the core: a failure is kept
with its backoff (and shown by `inspect`), never retried inline.

The hooks reach nodes through `ask` (the provider's `ClusterView.ask`): a `NodeAction` request
of the current term to a node of the cloud, answered by its role (`cloudd.daemon.node.actions`).
The findings of the last `monitor` are kept here, shown by `inspect` beside the node they name,
and logged (`provider_finding`, and the event log) only when they change (`findings`).

While the cloud is to be stopped and the provider's stop is not done (`holding()`), the member
leaves the domains and the nodes' services alone, so that `stop` finds them serving; the hold
ends when the stop succeeds, fails for good, or after `stop_within` seconds.

A call whose term ended while it ran changes nothing: the next term starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

from cloudd import log
from cloudd.config.catalog import settings_dict, settings_json
from cloudd.config.model import Cloud, Ensure
from cloudd.daemon.base.clock import SYSTEM, Clock
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.leader import findings, hookplan
from cloudd.daemon.leader.hookplan import Facts, Hook, HookCall, HookState, HookTiming, RoleFacts
from cloudd.daemon.leader.views import HookFailure as HookFailure
from cloudd.daemon.leader.views import HooksView as HooksView
from cloudd.daemon.network.catalogue import NodeActed, NodeAction
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.base import (
    ACT_ANSWER_LIMIT,
    ClusterView,
    Finding,
    Peer,
    Pending,
    Provider,
)

#: Longest the loop sleeps without a poke, seconds: health seen by the member's liveness
#: (not only by reports) reaches the core within it.
WAKE = 1.0
#: Seconds one hook call may take: a configure that registers a few nodes on a head takes a
#: few seconds; one that hangs must not keep the other hooks waiting for ever.
CALL_WITHIN = 120.0


class ProviderHooks:
    """Calls one cloud's provider hooks while this agent acts as its leader."""

    def __init__(self, *, cloud: Callable[[], Cloud], term: Callable[[], int | None],
                 healthy: Callable[[], Collection[str]], provider: Callable[[str], Provider],
                 request: Callable[[str, Any], Awaitable[Any]], events: EventLog,
                 released: Callable[[], None] = lambda: None, clock: Clock = SYSTEM,
                 timing: HookTiming | None = None, rng: random.Random | None = None,
                 call_within: float = CALL_WITHIN) -> None:
        self._cloud, self._term, self._healthy = cloud, term, healthy
        self._provider, self._request, self.events, self.clock = provider, request, events, clock
        self._released = released
        self.timing = timing or HookTiming()
        self._rng = rng or random.Random()
        self.call_within = call_within
        self.state = HookState()
        self._findings: dict[findings.Key, Finding] = {}
        self._poke = asyncio.Event()
        self._missing: str | None = None
        self._settings: tuple[str, str] = ("", "")  # (cloud digest, its settings' digest)
        self.log = log.get("hooks")

    # ---- inputs and outputs -------------------------------------------------------------
    def poke(self) -> None:
        self._poke.set()

    def holding(self) -> bool:
        """Whether the domains and services are held for the provider's stop (see above)."""
        facts = self._facts()
        if facts is None or facts.term is None:
            return False
        self._settle(facts)
        return hookplan.holding(self.state)

    def view(self, *, also: tuple[Finding, ...] = ()) -> HooksView:
        """What the hooks found, and `also` (the elastic loop's findings) beside it."""
        return HooksView(
            findings=(*self._findings.values(), *also),
            failures=tuple(HookFailure(f.hook.value, subject, f.count, f.not_before, f.error)
                           for subject, f in sorted(self.state.failures.items())),
            holding=hookplan.holding(self.state))

    def cluster_now(self) -> ClusterView | None:
        """The nodes and their health as the hooks would be given them now (None: not
        acting, or no provider)."""
        facts = self._facts()
        return None if facts is None or facts.term is None else self._cluster(facts)

    # ---- the leader's channel to nodes --------------------------------------------------
    async def ask(self, node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        """`ClusterView.ask`: have `node`'s role do `action`, in the current term."""
        term, cloud = self._term(), self._cloud()
        if term is None:
            raise TemporaryError(f"cannot ask {node} for {action!r}: this agent no longer "
                                 "acts as the cloud's leader")
        if node not in {n.name for n in cloud.nodes}:
            raise PermanentError(f"cloud {cloud.name} has no node {node}")
        msg = NodeAction(cloud.name, term, action, tuple(sorted(args.items())))
        try:
            answer = await self._request(node, msg)
        except OSError as exc:
            raise TemporaryError(f"{node} cannot be reached: {exc}") from None
        if not isinstance(answer, NodeActed) or (answer.node, answer.action) != (node, action):
            raise PermanentError(f"{node} answered {type(answer).__name__} to {action!r}")
        if sum(len(k) + len(v) for k, v in answer.answer) > ACT_ANSWER_LIMIT:
            raise PermanentError(f"{node} answered {action!r} with more than "
                                 f"{ACT_ANSWER_LIMIT} characters")
        return dict(answer.answer)

    # ---- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Call the hooks that are due, one at a time, until cancelled."""
        while True:
            if await self.step() is not None:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep()):
                    await self._poke.wait()
            self._poke.clear()

    async def step(self) -> HookCall | None:
        """Observe, and call the hook that is due now (if any): the call made."""
        facts = self._facts()
        if facts is None:
            return None
        self._settle(facts)
        call = hookplan.next_call(self.state, facts, now=self.clock.monotonic())
        if call is not None:
            await self._perform(call, facts)
        return call

    def _sleep(self) -> float:
        """Seconds until something is due without new facts (at most `WAKE`)."""
        facts, now = self._facts(), self.clock.monotonic()
        at = hookplan.next_wake(self.state, facts, now=now) if facts is not None else None
        return WAKE if at is None else min(WAKE, max(at - now, 0.0))

    def _settle(self, facts: Facts) -> None:
        before = self.state.term
        self._update(hookplan.settle(self.state, facts, now=self.clock.monotonic(),
                                     timing=self._timing()))
        if self.state.term != before:
            self._findings.clear()  # a new leader's findings are its own

    def _update(self, state: HookState) -> None:
        """Take the core's new state; a hold that ends wakes the member's other duties."""
        held, self.state = hookplan.holding(self.state), state
        if held and not hookplan.holding(state):
            self._released()

    def _facts(self) -> Facts | None:
        """The facts now; None when the cloud's type has no provider here. Not acting, only
        that: a follower never looks its provider up."""
        cloud, term = self._cloud(), self._term()
        stopping = cloud.ensure is Ensure.STOPPED
        if term is None:
            return Facts(term=None, stopping=stopping, roles=())
        try:
            provider = self._provider(cloud.type)
        except ClouddError as exc:
            if self._missing != cloud.type:
                self._missing = cloud.type
                self.log.warning("provider_missing", cloud=cloud.name, reason=str(exc))
            return None
        self._missing = None
        healthy = self._healthy()
        roles = tuple(RoleFacts(
            name, tuple(provider.roles[name].depends_on),
            tuple((n.name, n.address, n.name in healthy) for n in cloud.nodes_of(name)))
            for name in provider.role_order)
        if self._settings[0] != cloud.digest:
            self._settings = (cloud.digest, hashlib.sha256(
                settings_json(cloud.settings)).hexdigest())
        return Facts(term=term, stopping=stopping, roles=roles, settings=self._settings[1],
                     monitor_every=cloud.monitor_interval)

    def _cluster(self, facts: Facts) -> ClusterView:
        cloud = self._cloud()
        return ClusterView(
            cloud=cloud.name,
            nodes=tuple(Peer(node, role.name, ip_address(address), ok)
                        for role in facts.roles for node, address, ok in role.members),
            settings=settings_dict(cloud.settings), ask=self.ask)

    async def _perform(self, call: HookCall, facts: Facts) -> None:
        provider, cluster = self._provider(self._cloud().type), self._cluster(facts)
        found: tuple[Finding, ...] = ()
        try:
            async with asyncio.timeout(self.call_within):
                if call.hook is Hook.CONFIGURE:
                    await provider.configure(cluster, call.role)
                elif call.hook is Hook.MONITOR:
                    found = tuple(await provider.monitor(cluster))
                else:
                    await provider.stop(cluster)
        except TimeoutError:
            self._failed(call, facts, f"did not finish within {self.call_within:g}s",
                         temporary=True)
        except Pending as exc:
            self._failed(call, facts, str(exc), temporary=True, delay=exc.delay, pending=True)
        except TemporaryError as exc:
            self._failed(call, facts, str(exc), temporary=True, delay=exc.delay)
        except ClouddError as exc:
            self._failed(call, facts, str(exc), temporary=False)
        except Exception as exc:  # a provider's bug: logged with its traceback, kept as one
            self.log.exception("provider_hook_crashed", hook=call.hook.value, role=call.role)
            self._failed(call, facts, f"{type(exc).__name__}: {exc}", temporary=False)
        else:
            self._succeeded(call, facts, found)

    def _timing(self) -> HookTiming:
        """The leader's bounds, the stop's raised to the provider's own when it asks more."""
        try:
            own = self._provider(self._cloud().type).stop_within
        except ClouddError:
            return self.timing
        if own <= self.timing.stop_within:
            return self.timing
        return replace(self.timing, stop_within=own)

    def _current(self, term: int | None) -> bool:
        """Whether a call made in `term` still counts (the term did not end meanwhile)."""
        return term is not None and self._term() == term == self.state.term

    def _record(self, kind: LogKind, subject: str, reason: str, term: int) -> None:
        self.events.append(LogEvent(self.clock.wall(), self._cloud().name, kind, subject,
                                    reason, term))

    def _succeeded(self, call: HookCall, facts: Facts, found: tuple[Finding, ...]) -> None:
        term = facts.term
        if not self._current(term):
            return
        assert term is not None
        now, cloud = self.clock.monotonic(), self._cloud().name
        self._update(hookplan.succeeded(self.state, call, now=now, facts=facts))
        if call.hook is Hook.CONFIGURE:
            members = call.signature[0] if call.signature else ()
            reason = (f"configured role {call.role}: {len(members)} node(s), "
                      f"{sum(1 for *_, ok in members if ok)} healthy")
            self.log.info("provider_configured", cloud=cloud, role=call.role, term=term,
                          reason=reason)
            self._record(LogKind.ACTION, call.role, reason, term)
        elif call.hook is Hook.STOP:
            self.log.info("provider_stopped", cloud=cloud, term=term,
                          reason="the provider's stop is done: the cloud stops")
            self._record(LogKind.ACTION, cloud, "provider stop done", term)
        else:
            self._take(found, term)

    def _failed(self, call: HookCall, facts: Facts, error: str, *, temporary: bool,
                delay: float = 0.0, pending: bool = False) -> None:
        term = facts.term
        if not self._current(term):
            return
        assert term is not None
        now, cloud = self.clock.monotonic(), self._cloud().name
        before = self.state.failures.get(call.subject)
        self._update(hookplan.failed(self.state, call, now=now, facts=facts,
                                     timing=self._timing(), error=error, temporary=temporary,
                                     delay=delay, unit=self._rng.random(), pending=pending))
        record = self.state.failures[call.subject]
        if pending:
            self.log.info("provider_hook_pending", cloud=cloud, hook=call.hook.value,
                          role=call.role or None, term=term,
                          reason=f"{error}; next look in {delay:g}s")
            if before is None or before.error != error:
                self._record(LogKind.ACTION, call.role or cloud, error, term)
            return
        given_up = call.hook is Hook.STOP and self.state.stop is hookplan.StopPhase.GIVEN_UP
        then = ("the cloud stops without it" if given_up
                else f"next try in {record.not_before - now:.1f}s")
        reason = f"{call.hook.value} {call.role or ''}".strip() + f" failed: {error}"
        self.log.warning("provider_hook_failed", cloud=cloud, hook=call.hook.value,
                         role=call.role or None, term=term, count=record.count,
                         reason=f"{reason}; {then}")
        if call.hook is Hook.MONITOR:
            # the last findings stay, with one saying that they may be out of date (the
            # event log hears of it as of any finding: when it changes)
            self._take((*(f for f in self._findings.values() if f.check != "monitor"),
                        Finding("monitor", False, f"monitor failed: {error}")), term)
        elif before is None or before.error != error or given_up:
            # A head that is not up yet fails the same way many times: the event log gets
            # the first failure and each new reason, the agent's log every one.
            self._record(LogKind.FAILURE, call.role or cloud,
                         f"{reason} ({record.count} in a row; {then})", term)

    def _take(self, found: tuple[Finding, ...], term: int) -> None:
        """The findings of a monitor round: kept, and their changes logged."""
        after = findings.keyed(found)
        cloud = self._cloud().name
        for change in findings.changes(self._findings, after):
            f = change.finding
            (self.log.info if f.ok else self.log.warning)(
                "provider_finding", cloud=cloud, check=f.check, ok=f.ok, node=f.node or None,
                term=term, reason=f.message)
            self._record(LogKind.ACTION if f.ok else LogKind.FAILURE, f.node or cloud,
                         f"check {f.check} {'ok' if f.ok else 'failing'}: {f.message}", term)
        self._findings = after
