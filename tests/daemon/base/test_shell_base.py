"""The shell's base: one backoff, one clock, one durable write."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from cloudd.backoff import Backoff, hashed_unit
from cloudd.daemon.base.clock import FakeClock, SystemClock
from cloudd.daemon.base.durable import write_durable


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


def test_fake_clock_moves_only_when_told() -> None:
    c = FakeClock(monotonic=5.0, wall=100.0)
    c.advance(2.5)
    c.step_wall(-50.0)
    assert (c.monotonic(), c.wall()) == (7.5, 52.5)
    with pytest.raises(ValueError):
        c.advance(-1)
    s = SystemClock()
    assert s.monotonic() <= s.monotonic()


def test_durable_write_replaces_privately_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state" / "term"
    write_durable(target, "1\n")
    write_durable(target, b"2\n")
    assert target.read_text() == "2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert os.listdir(target.parent) == ["term"]


def test_durable_write_keeps_the_old_content_when_the_write_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "term"
    write_durable(target, "1\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_durable(target, "2\n")
    assert target.read_text() == "1\n"
    assert os.listdir(tmp_path) == ["term"]


def test_durable_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "file"
    write_durable(target, "new")
    assert victim.read_text() == "untouched"
    assert target.read_text() == "new"
