"""The event log never takes the agent down: a full disk drops events (counted, logged once per
burst) until it has room again, and a file that is not a usable database is set aside.

The full disk is SQLite's own: `PRAGMA max_page_count` makes the file refuse to grow with the
same error a full filesystem gives ("database or disk is full"). tests/real/daemon fills a
real tmpfs.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import structlog

from cloudd.config.agent import EventLogSettings
from cloudd.daemon.base.eventlog import REOPEN_EVERY, EventLog, LogEvent, LogKind

T0 = 1_800_000_000.0


def ev(i: int) -> LogEvent:
    return LogEvent(time=T0 + i, cloud="c1", kind=LogKind.ELECTION, subject="pm1",
                    reason="x" * 2000, term=i)


def fill_to_the_brim(log: EventLog) -> None:
    """From now on the file cannot grow by one page."""
    db = log._db
    assert db is not None
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(log: EventLog) -> None:
    db = log._db
    assert db is not None
    db.execute("PRAGMA max_page_count = 1000000")


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


def test_a_full_disk_drops_events_logs_once_and_resumes_by_itself(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3")
    log.append(ev(0))
    fill_to_the_brim(log)
    with structlog.testing.capture_logs() as logs:
        dropped = [log.append(ev(i)) for i in range(1, 30)]
        assert log.dropped > 0
        lost = log.dropped
        make_room(log)
        resumed = log.append(ev(100))
        log.append(ev(101))
    assert all(d.id is None for d in dropped[-5:])  # the last ones surely found no room
    (failed,) = named(logs, "event_log_write_failed")
    assert "full" in failed["reason"] and failed["dropped"] == 1
    (back,) = named(logs, "event_log_write_resumed")
    assert back["dropped"] == lost
    assert resumed.id is not None and log.query(limit=1)[0].term == 101
    assert log.dropped == lost  # only the refused ones
    log.close()


def test_a_prune_on_a_full_disk_does_not_raise(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3", settings=EventLogSettings(prune_every=1))
    log.append(ev(0))
    fill_to_the_brim(log)
    for i in range(1, 10):
        log.append(ev(i))
    assert log.prune(now=T0 + 100) >= 0
    log.close()


def test_a_truncated_database_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    for i in range(200):
        log.append(ev(i))
    log.close()
    with path.open("r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with structlog.testing.capture_logs() as logs:
        again = EventLog(path)
    (aside,) = named(logs, "state_file_set_aside")
    assert aside["path"] == str(path) and "not a usable SQLite database" in aside["reason"]
    assert Path(aside["moved_to"]).exists()
    assert again.query() == [] and again.append(ev(1)).id == 1
    again.close()


def test_a_damaged_page_is_found_at_start_and_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    for i in range(200):
        log.append(ev(i))
    log.close()
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:  # scribble over an index page in the middle of the file
        f.seek(page * 5)
        f.write(b"\xa5" * page)
    again = EventLog(path)
    assert list(tmp_path.glob("events.sqlite3.corrupt-*"))
    assert again.append(ev(1)).id == 1
    again.close()


def test_a_log_the_disk_will_not_open_drops_and_tries_again(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.mkdir()  # not a file: cannot be opened at all
    with structlog.testing.capture_logs() as logs:
        log = EventLog(path)
        assert log.append(ev(0)).id is None and log.query() == [] and log.last_id() == 0
    assert named(logs, "event_log_unavailable") and log.dropped == 1
    path.rmdir()
    assert log.append(ev(1)).id is None  # not tried again so soon
    assert log.append(ev(int(REOPEN_EVERY) + 1)).id == 1
    assert not list(tmp_path.glob("*.corrupt-*"))  # the disk's fault, not the file's
    log.close()


def test_the_log_and_its_companions_are_private(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    log = EventLog(path)
    log.append(ev(0))
    for f in tmp_path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    log.close()
