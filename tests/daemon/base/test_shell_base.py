"""The shell's base: one clock."""

from __future__ import annotations

import pytest

from cloudd.daemon.base.clock import FakeClock, SystemClock


def test_fake_clock_moves_only_when_told() -> None:
    c = FakeClock(monotonic=5.0, wall=100.0)
    c.advance(2.5)
    c.step_wall(-50.0)
    assert (c.monotonic(), c.wall()) == (7.5, 52.5)
    with pytest.raises(ValueError):
        c.advance(-1)
    s = SystemClock()
    assert s.monotonic() <= s.monotonic()
