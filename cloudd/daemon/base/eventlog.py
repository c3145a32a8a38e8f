"""The persisted event log: what the cloud went through, for `cloudd-cli events` and `inspect`.

Every election, action, failure, restart and operator command is one row in an SQLite file in
the state directory (stdlib sqlite3, WAL, one connection). An append is one small write
transaction without fsync (synchronous=NORMAL in WAL mode: a power cut may lose the last
moments, never corrupt the file), cheap enough to run on the event loop. Old rows are pruned:
everything past the retention (at least seven days), and the oldest beyond `max_rows`, so that
an event storm cannot fill the disk (both set in the agent settings' `events` group). Ids only
grow (AUTOINCREMENT), so a follower that remembers the last id it saw never misses or repeats
an event, even across pruning.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from cloudd import log
from cloudd.config.agent import EventLogSettings
from cloudd.errors import PermanentError

FILENAME = "events.sqlite3"

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
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise PermanentError(f"event log {path} is not a usable SQLite database: {exc}") \
                from exc

    @classmethod
    def in_state_dir(cls, state_dir: Path, *,
                     settings: EventLogSettings | None = None) -> EventLog:
        return cls(state_dir / FILENAME, settings=settings)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise PermanentError(f"event log {self.path} is closed")
        return self._db

    def append(self, event: LogEvent) -> LogEvent:
        """Store `event`; returns it with its id. Wakes every follower."""
        with self._lock:
            db = self._conn()
            cur = db.execute(
                "INSERT INTO events (time, cloud, kind, subject, reason, term) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (event.time, event.cloud, event.kind.value, event.subject, event.reason,
                 event.term))
            stored = replace(event, id=cur.lastrowid)
            self._since_prune += 1
            due = self._since_prune >= self.settings.prune_every
        if due:
            self.prune(now=event.time)
        for loop, wake in list(self._followers):
            if not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)
        return stored

    def prune(self, *, now: float) -> int:
        """Drop events past the retention, then the oldest beyond `max_rows`; returns how many."""
        with self._lock:
            db = self._conn()
            self._since_prune = 0
            old = db.execute("DELETE FROM events WHERE time < ?",
                             (now - self.settings.retention,)).rowcount
            cut = db.execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?",
                             (self.settings.max_rows,)).fetchone()
            storm = 0
            if cut is not None:
                storm = db.execute("DELETE FROM events WHERE id <= ?", (cut[0],)).rowcount
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
            rows = self._conn().execute(sql, (*args, limit)).fetchall()
        events = [_row(r) for r in rows]
        return events[::-1] if newest else events

    def last_id(self) -> int:
        with self._lock:
            row = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

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
            if self._db is not None:
                self._db.close()
                self._db = None
