"""How the leader reaches the pool's host agents: its own in-process, the others through the
`request` callable it is given (the transport, one room down, never imported here).

Its own host is reached through that host's duty (`LocalHost`, the member's `HostDuties`),
with this agent's name as the sender: the same lease and admission checks as a command from
the wire, except that its own host also admits this agent while it acts in the command's
term (it may lead on the other hosts' leases while its own grantor is still fenced; see the
member's wiring). Commands that a host checks against its manifest (`MANIFEST_CHECKED`:
DEFINE, OVERLAY, FETCH, REMOVE_IMAGE) go out stamped with the generation the leader rendered
and chose them from (`generation`), so that a host that has not taken it yet says so instead
of refusing them as foreign.

Every call is timed on the monotonic clock; the metrics feed reads the recent timings from
the member's snapshot, numbered so that it counts each call once.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from cloudd.daemon.base.clock import Clock
from cloudd.daemon.leader.views import CallTiming as CallTiming
from cloudd.errors import TemporaryError
from cloudd.vmctl.hostagent import MANIFEST_CHECKED, HostCommand, HostResult

#: Timings kept for the metrics feed, which reads them every second: far more than a pass
#: sends in one second, and a bound on what nobody reading them costs.
KEPT_TIMINGS = 1000


class LocalHost(Protocol):
    """This agent's own host duty (`cloudd.daemon.host.duties.HostDuties`)."""

    async def execute(self, sender: str, command: HostCommand) -> HostResult: ...


class HostCalls:
    """The leader's `HostClient`: the local host duty directly, any other by request."""

    def __init__(self, *, me: str, local: Callable[[], LocalHost | None],
                 request: Callable[[str, Any], Awaitable[Any]], clock: Clock,
                 generation: Callable[[], str] = lambda: "") -> None:
        self.me, self._local, self._request, self._clock = me, local, request, clock
        self._generation = generation
        self._timings: collections.deque[CallTiming] = collections.deque(maxlen=KEPT_TIMINGS)
        self._seq = 0

    async def call(self, host: str, command: HostCommand) -> HostResult:
        started = self._clock.monotonic()
        try:
            return await self._call(host, command)
        finally:
            self._seq += 1
            self._timings.append(CallTiming(self._seq, command.op.value,
                                            self._clock.monotonic() - started))

    async def _call(self, host: str, command: HostCommand) -> HostResult:
        if command.op in MANIFEST_CHECKED and not command.generation:
            command = replace(command, generation=self._generation())
        duty = self._local() if host == self.me else None
        if duty is not None:
            return await duty.execute(self.me, command)
        reply = await self._request(host, command)
        if not isinstance(reply, HostResult):
            raise TemporaryError(f"host {host} answered {type(reply).__name__}, not a result")
        return reply

    def timings(self) -> tuple[CallTiming, ...]:
        return tuple(self._timings)
