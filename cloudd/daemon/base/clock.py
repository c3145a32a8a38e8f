"""The agent's one clock: `monotonic()` for every duration, `wall()` for what people read.

Durations (leases, backoff, timeouts, stable periods) must not jump when an operator or NTP
steps the system clock, so they come from `monotonic()`. Times a person reads (the event log,
`inspect`, the manifest's load time) come from `wall()`. One object is made by the agent and
passed down; tests pass a `FakeClock` and move it by hand. The pure cores never see a clock:
the shell reads it and hands them `now`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never steps; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for people (may step)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock for tests: both readings move only when the test says so."""

    def __init__(self, *, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono, self._wall = monotonic, wall

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._mono += seconds
        self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """The system clock stepped (by NTP or an operator); the monotonic clock did not."""
        self._wall += seconds


SYSTEM = SystemClock()
