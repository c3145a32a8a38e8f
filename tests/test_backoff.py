"""The one backoff: exponential, capped, jitter that only shortens, and a replayable unit."""

from __future__ import annotations

import random

import pytest

from cloudd.backoff import Backoff, hashed_unit


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    b = Backoff(base=1.0, cap=10.0, jitter=0.5)
    assert [b.nominal(n) for n in range(0, 6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    rng = random.Random(7)
    for n in range(1, 200):
        d = b.delay(n, rng.random())
        assert b.nominal(n) * 0.5 <= d <= b.nominal(n) <= 10.0
    assert b.delay(10_000, 0.0) == 10.0  # a huge count neither overflows nor passes the cap


def test_backoff_refuses_nonsense() -> None:
    for bad in ({"base": 0.0}, {"base": 2.0, "cap": 1.0}, {"jitter": 1.5}, {"factor": 0.5}):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


def test_hashed_unit_is_fixed_by_subject_and_count() -> None:
    assert hashed_unit("web1", 3) == hashed_unit("web1", 3)
    assert hashed_unit("web1", 3) != hashed_unit("web1", 4)
    assert 0.0 <= hashed_unit("db", 1) < 1.0
