"""The persisted event log: what the cloud went through, for `cloudd-cli events` and `inspect`.

Every election, action, failure, restart and operator command is one row in an SQLite file in
the state directory (stdlib sqlite3, WAL, one connection). An append is one small write
transaction without fsync (synchronous=NORMAL in WAL mode: a power cut may lose the last
moments, never corrupt the file), cheap enough to run on the event loop. Old rows are pruned:
everything past the retention (at least seven days), and the oldest beyond `max_rows`, so that
an event storm cannot fill the disk (both set in the agent settings' `events` group). Ids only
grow (AUTOINCREMENT), so a follower that remembers the last id it saw never misses or repeats
an event, even across pruning.

The log is history, not state: nothing the agent decides depends on it, so it never takes the
agent down. A file that is not a usable database when the agent starts (garbage, truncated,
failing SQLite's quick check) is set aside (`cloudd.durable.set_aside`) and a new log begins.
An append the disk refuses (full, I/O error, locked) is dropped, counted in `dropped` (shown by
`inspect` and the metrics as `events_dropped`) and logged once per burst
(`event_log_write_failed`, then `event_log_write_resumed` with how many the burst lost); the
next append simply tries again, so the log resumes by itself once the disk has room. A read
that fails answers nothing rather than raising. The file is private (0600), and so are
SQLite's -wal and -shm files, which take its mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from cloudd import log
from cloudd.config.agent import EventLogSettings
from cloudd.durable import set_aside
from cloudd.errors import PermanentError

FILENAME = "events.sqlite3"

#: Seconds (of event time) between two tries to open a log the disk would not open at start.
REOPEN_EVERY = 5.0

_log = log.get("events")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    cloud TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    term INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_cloud ON events (cloud, id);
"""


class LogKind(enum.Enum):
    ELECTION = "election"
    ACTION = "action"
    FAILURE = "failure"
    RESTART = "restart"
    COMMAND = "command"
    """An operator's command (start, stop, a manifest dropped or removed)."""


@dataclass(frozen=True)
class LogEvent:
    time: float
    """Seconds since the epoch, from the daemon's one clock."""
    cloud: str
    kind: LogKind
    subject: str
    """What it happened to: a node, a host, a service, an agent."""
    reason: str
    term: int = 0
    id: int | None = None
    """Assigned by `append`; grows by one at least per event, never reused."""


class CorruptLog(Exception):
    """SQLite opened the file but its own check found it damaged."""


def _row(r: tuple[int, float, str, str, str, str, int]) -> LogEvent:
    return LogEvent(id=r[0], time=r[1], cloud=r[2], kind=LogKind(r[3]), subject=r[4],
                 reason=r[5], term=r[6])


class EventLog:
    """One SQLite file, one connection, usable from the loop and from worker threads."""

    def __init__(self, path: Path, *, settings: EventLogSettings | None = None) -> None:
        self.settings = settings or EventLogSettings()
        self.path = path
        self._lock = threading.Lock()
        self._followers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._since_prune = 0
        self._closed = False
        #: events that could not be stored since this log was opened (`events_dropped`)
        self.dropped = 0
        #: the reason of the write failures under way, and how many that burst dropped
        self._failing: str | None = None
        self._burst = 0
        self._read_failing = False
        self._last_id = 0
        self._next_open = float("-inf")
        self._db: sqlite3.Connection | None = self._open()

    def _open(self) -> sqlite3.Connection | None:
        """Open the file, setting aside one that is not a usable database. None when the
        disk will not let it be opened now (full, failing): appends try again later."""
        try:
            return self._connect()
        except (sqlite3.OperationalError, OSError) as e:  # the disk's fault, not the file's
            _log.warning("event_log_unavailable", path=str(self.path), reason=str(e))
            return None
        except (sqlite3.DatabaseError, CorruptLog) as e:
            set_aside(self.path, reason=f"not a usable SQLite database: {e}")
        try:
            return self._connect()
        except (sqlite3.Error, OSError, CorruptLog) as e:
            _log.warning("event_log_unavailable", path=str(self.path), reason=str(e))
            return None

    def _connect(self) -> sqlite3.Connection:
        # Created private: SQLite gives its -wal and -shm files the database file's mode.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise CorruptLog(f"quick check: {check[0] if check else 'no answer'}")
            self._last_id = int(db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def in_state_dir(cls, state_dir: Path, *,
                     settings: EventLogSettings | None = None) -> EventLog:
        return cls(state_dir / FILENAME, settings=settings)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise PermanentError(f"event log {self.path} is closed")
        if self._db is None:
            raise sqlite3.OperationalError(f"event log {self.path} could not be opened")
        return self._db

    def _reopen(self, now: float) -> None:
        """Under the lock: try again to open a log that could not be opened, now and then."""
        if self._db is None and not self._closed and now >= self._next_open:
            self._next_open = now + REOPEN_EVERY
            with contextlib.suppress(sqlite3.Error, OSError, CorruptLog):
                self._db = self._connect()

    def append(self, event: LogEvent) -> LogEvent:
        """Store `event`; returns it with its id, or as it was (id None) when the disk refused
        it (counted in `dropped`, see the module docstring). Wakes every follower. Never
        raises, but on a closed log (a bug)."""
        with self._lock:
            self._reopen(event.time)
            try:
                cur = self._conn().execute(
                    "INSERT INTO events (time, cloud, kind, subject, reason, term) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event.time, event.cloud, event.kind.value, event.subject, event.reason,
                     event.term))
            except (sqlite3.Error, OSError) as e:
                self._dropped(e)
                return event
            stored = replace(event, id=cur.lastrowid)
            self._last_id = cur.lastrowid or self._last_id
            self._since_prune += 1
            due = self._since_prune >= self.settings.prune_every
            if self._failing is not None:
                _log.info("event_log_write_resumed", dropped=self._burst)
                self._failing, self._burst = None, 0
        if due:
            self.prune(now=event.time)
        for loop, wake in list(self._followers):
            if not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)
        return stored

    def _dropped(self, error: Exception) -> None:
        self.dropped += 1
        self._burst += 1
        if self._failing is None:
            self._failing = str(error) or type(error).__name__
            _log.warning("event_log_write_failed", reason=self._failing, dropped=self.dropped)

    def _read_failed(self, error: Exception) -> None:
        if not self._read_failing:
            self._read_failing = True
            _log.warning("event_log_read_failed", reason=str(error) or type(error).__name__)

    def prune(self, *, now: float) -> int:
        """Drop events past the retention, then the oldest beyond `max_rows`; returns how many."""
        with self._lock:
            self._since_prune = 0
            try:
                db = self._conn()
                old = db.execute("DELETE FROM events WHERE time < ?",
                                 (now - self.settings.retention,)).rowcount
                cut = db.execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?",
                                 (self.settings.max_rows,)).fetchone()
                storm = 0
                if cut is not None:
                    storm = db.execute("DELETE FROM events WHERE id <= ?", (cut[0],)).rowcount
            except (sqlite3.Error, OSError) as e:
                # a delete needs room in the write-ahead log too: the next prune tries again
                self._read_failed(e)
                return 0
        if storm:
            _log.warning("event log full: dropped the oldest events within retention",
                         dropped=storm, max_rows=self.settings.max_rows)
        return old + storm

    def query(self, *, since: float | None = None, cloud: str | None = None,
              kind: LogKind | None = None, after_id: int | None = None,
              limit: int = 100) -> list[LogEvent]:
        """Events in order of id. With `since` or `after_id`: the first `limit` from there;
        without either: the last `limit`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise PermanentError(f"limit must be a positive whole number, got {limit!r}")
        where: list[str] = ["1=1"]
        args: list[object] = []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if after_id is not None:
            where.append("id > ?")
            args.append(after_id)
        if cloud is not None:
            where.append("cloud = ?")
            args.append(cloud)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind.value)
        newest = since is None and after_id is None
        sql = (f"SELECT id, time, cloud, kind, subject, reason, term FROM events "
               f"WHERE {' AND '.join(where)} ORDER BY id {'DESC' if newest else 'ASC'} LIMIT ?")
        with self._lock:
            try:
                rows = self._conn().execute(sql, (*args, limit)).fetchall()
            except (sqlite3.Error, OSError) as e:
                self._read_failed(e)
                return []
            self._read_failing = False
        events = [_row(r) for r in rows]
        return events[::-1] if newest else events

    def last_id(self) -> int:
        """The id of the newest event stored (0 for none); the last one known when the file
        cannot be read."""
        with self._lock:
            try:
                row = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            except (sqlite3.Error, OSError) as e:
                self._read_failed(e)
                return self._last_id
        self._last_id = int(row[0])
        return self._last_id

    def follow(self, *, cloud: str | None = None, after_id: int | None = None,
               batch: int = 100) -> AsyncIterator[LogEvent]:
        """Every event after `after_id` (default: from this call on, not from the first
        iteration), then each new one as it is appended, until the consumer stops."""
        last = self.last_id() if after_id is None else after_id
        return self._follow(last, cloud=cloud, batch=batch)

    async def _follow(self, last: int, *, cloud: str | None,
                      batch: int) -> AsyncIterator[LogEvent]:
        wake = asyncio.Event()
        me = (asyncio.get_running_loop(), wake)
        self._followers.add(me)
        try:
            while True:
                # clear before reading: an append after the read sets it again, so none is lost
                wake.clear()
                events = self.query(after_id=last, cloud=cloud, limit=batch)
                for event in events:
                    assert event.id is not None
                    last = event.id
                    yield event
                if len(events) < batch:
                    await wake.wait()
        finally:
            self._followers.discard(me)

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None
