"""How the leader reaches the pool's host agents: its own in-process, the others through the
`request` callable it is given (the transport, one room down, never imported here).

Every call is timed on the monotonic clock; the metrics feed reads the recent timings from
the member's snapshot, numbered so that it counts each call once.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudd.daemon.base.clock import Clock
from cloudd.errors import TemporaryError
from cloudd.vmctl.hostagent import HostAgent, HostCommand, HostResult

#: Timings kept for the metrics feed, which reads them every second: far more than a pass
#: sends in one second, and a bound on what nobody reading them costs.
KEPT_TIMINGS = 1000


@dataclass(frozen=True)
class CallTiming:
    seq: int
    """Numbers every call since the agent started, so a reader counts each one once."""
    op: str
    seconds: float


class HostCalls:
    """The leader's `HostClient`: the local host agent directly, any other by request."""

    def __init__(self, *, me: str, local: Callable[[], HostAgent | None],
                 request: Callable[[str, Any], Awaitable[Any]], clock: Clock) -> None:
        self.me, self._local, self._request, self._clock = me, local, request, clock
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
        agent = self._local() if host == self.me else None
        if agent is not None:
            return await agent.execute(command)
        reply = await self._request(host, command)
        if not isinstance(reply, HostResult):
            raise TemporaryError(f"host {host} answered {type(reply).__name__}, not a result")
        return reply

    def timings(self) -> tuple[CallTiming, ...]:
        return tuple(self._timings)
