"""The event log on a real SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudd.config.agent import DAY, EventLogSettings
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.errors import PermanentError

T0 = 1_800_000_000.0


def ev(t: float, subject: str = "n1", *, cloud: str = "c1",
       kind: LogKind = LogKind.ACTION, term: int = 3) -> LogEvent:
    return LogEvent(time=t, cloud=cloud, kind=kind, subject=subject, reason=f"why {subject}",
                 term=term)


@pytest.fixture
def events(tmp_path: Path):
    log = EventLog.in_state_dir(tmp_path)
    yield log
    log.close()


def test_append_and_query_round_trip_on_disk(tmp_path: Path) -> None:
    log = EventLog.in_state_dir(tmp_path)
    stored = log.append(ev(T0, kind=LogKind.ELECTION))
    assert stored.id == 1 and stored == LogEvent(T0, "c1", LogKind.ELECTION, "n1", "why n1", 3, 1)
    log.close()
    log.close()  # twice is fine
    with pytest.raises(PermanentError, match="is closed"):
        log.append(ev(T0))
    again = EventLog(tmp_path / "events.sqlite3")
    assert again.query() == [stored]
    assert again._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_query_by_since_cloud_kind_and_limit(events: EventLog) -> None:
    for i in range(10):
        events.append(ev(T0 + i, f"n{i}", cloud="c1" if i % 2 else "c2",
                         kind=LogKind.FAILURE if i == 7 else LogKind.ACTION))
    assert [e.subject for e in events.query(limit=3)] == ["n7", "n8", "n9"]
    assert [e.subject for e in events.query(since=T0 + 4, limit=3)] == ["n4", "n5", "n6"]
    assert [e.subject for e in events.query(cloud="c1", limit=100)] == ["n1", "n3", "n5", "n7",
                                                                          "n9"]
    assert [e.subject for e in events.query(cloud="c1", since=T0 + 4)] == ["n5", "n7", "n9"]
    assert [e.subject for e in events.query(kind=LogKind.FAILURE)] == ["n7"]
    assert [e.subject for e in events.query(after_id=8)] == ["n8", "n9"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit_is_refused_with_one_message(events: EventLog, limit: object) -> None:
    events.append(ev(T0))
    with pytest.raises(PermanentError, match="limit must be a positive whole number"):
        events.query(limit=limit)  # type: ignore[arg-type]
    assert len(events.query()) == 1


def test_settings_keep_at_least_seven_days() -> None:
    with pytest.raises(ValueError, match=r"must be at least 7 days \(604800 s\), "
                                              r"got 518400 s"):
        EventLogSettings(retention=6 * DAY)


def test_prune_drops_what_is_past_retention(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.db", settings=EventLogSettings(retention=7 * DAY))
    log.append(ev(T0, "old"))
    log.append(ev(T0 + 1 * DAY, "recent"))
    assert log.prune(now=T0 + 7 * DAY) == 0  # exactly seven days old: kept
    assert log.prune(now=T0 + 7 * DAY + 1) == 1
    assert [e.subject for e in log.query()] == ["recent"]
    log.close()


def test_size_bound_prunes_oldest_and_ids_are_never_reused(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.db", settings=EventLogSettings(max_rows=5, prune_every=3))
    ids = [log.append(ev(T0 + i, f"n{i}")).id for i in range(12)]
    assert ids == list(range(1, 13))
    kept = log.query(since=0, limit=100)
    assert 5 <= len(kept) <= 5 + 2  # pruned every 3 appends, to 5 rows
    assert kept[-1].subject == "n11" and [e.id for e in kept] == sorted(e.id for e in kept)
    log.prune(now=T0 + 12)
    assert [e.subject for e in log.query(limit=100)] == [f"n{i}" for i in range(7, 12)]
    log.close()
    again = EventLog(tmp_path / "e.db")
    assert again.append(ev(T0 + 20, "after")).id == 13
    again.close()


def test_a_file_that_is_not_sqlite_is_set_aside_and_a_new_log_begins(tmp_path: Path) -> None:
    bad = tmp_path / "events.sqlite3"
    bad.write_bytes(b"this is not a database, just text" * 100)
    log = EventLog(bad)
    assert log.append(ev(T0)).id == 1
    log.close()
    (kept,) = tmp_path.glob("events.sqlite3.corrupt-*")
    assert kept.read_bytes() == b"this is not a database, just text" * 100


async def _next(it: AsyncIterator[LogEvent]) -> LogEvent:
    # bounded: a broken wake-up fails the test instead of hanging it
    return await asyncio.wait_for(it.__anext__(), 10.0)


async def test_follow_yields_backlog_then_live_events(events: EventLog) -> None:
    events.append(ev(T0, "before"))
    start = events.last_id()
    events.append(ev(T0 + 1, "backlog"))
    it = events.follow(after_id=start)
    assert (await _next(it)).subject == "backlog"
    pending = asyncio.ensure_future(_next(it))
    await asyncio.sleep(0)
    assert not pending.done()
    events.append(ev(T0 + 2, "other", cloud="c2"))
    assert (await pending).subject == "other"
    await it.aclose()  # type: ignore[attr-defined]
    assert events._followers == set()


async def test_follow_filters_by_cloud_and_wakes_on_appends_from_threads(
        events: EventLog) -> None:
    it = events.follow(cloud="c1")
    pending = asyncio.ensure_future(_next(it))
    await asyncio.sleep(0)

    def writer() -> None:
        events.append(ev(T0, "not-mine", cloud="c2"))
        events.append(ev(T0 + 1, "mine", cloud="c1"))

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=10)
    got = await pending
    assert (got.subject, got.cloud) == ("mine", "c1")
    await it.aclose()  # type: ignore[attr-defined]


def test_another_connection_sees_committed_events(events: EventLog) -> None:
    events.append(ev(T0, "n1"))
    with sqlite3.connect(events.path) as other:
        assert other.execute("SELECT subject, kind FROM events").fetchall() == [("n1", "action")]
