"""The read-only API operations over the daemon's state: `events` and `inspect`, and where a
cloud's view comes from."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import EventView, InspectDoc, Source, decode_event
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.operator.queries import event_json, events_stream, inspect_op, view_source
from cloudd.errors import RemoteProtocolError

NOW = 1_796_000_000.0


def test_event_json_matches_the_event_view(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3")
    stored = log.append(LogEvent(time=NOW, cloud="shop", kind=LogKind.RESTART,
                              subject="webrick", reason="exited 1", term=3))
    assert decode_event(json.loads(json.dumps(event_json(stored)))) == EventView(
        id=stored.id or 0, time=NOW, cloud="shop", kind="restart", subject="webrick",
        reason="exited 1", term=3)
    with pytest.raises(RemoteProtocolError, match=r"event.term: expected int"):
        decode_event({**event_json(stored), "term": None})
    log.close()


async def test_events_stream_refuses_bad_arguments(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3")
    handler = events_stream(log)
    cases: list[tuple[dict[str, Any], str]] = [
                         ({"limit": 0}, "'limit' must be a positive whole number, got 0"),
                          ({"since": "yesterday"}, "'since' must be epoch seconds or null"),
                          ({"follow": "yes"}, "'follow' must be true or false"),
                          ({"cloud": 3}, "'cloud' must be a cloud name or null")]
    for args, message in cases:
        with pytest.raises(ApiError, match=message):
            async for _ in handler(args):
                pass
    log.close()


async def test_events_stream_history_then_follow_misses_nothing(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite3")
    for i in range(5):
        log.append(LogEvent(time=NOW + i, cloud="shop" if i % 2 else "lab",
                         kind=LogKind.ACTION, subject=f"n{i}", reason="defined"))
    stream = events_stream(log)({"since": NOW, "limit": 2, "follow": True, "cloud": None})
    # the first `limit` from `since`, then the rest of the history, then what comes next
    got = [(await asyncio.wait_for(anext(stream), 10))["id"] for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]
    log.append(LogEvent(time=NOW + 9, cloud="shop", kind=LogKind.FAILURE, subject="n1",
                     reason="crashed"))
    assert (await asyncio.wait_for(anext(stream), 10))["reason"] == "crashed"
    await stream.aclose()  # type: ignore[attr-defined]
    only_shop = events_stream(log)({"cloud": "shop", "limit": 10})
    assert [e["subject"] async for e in only_shop] == ["n1", "n3", "n1"]
    log.close()


@pytest.mark.parametrize(("leading", "at", "expected"), [
    (True, None, Source.LEADER), (False, NOW - 1, Source.LEADER),
    (False, NOW - 1.5, Source.LEADER), (False, NOW - 1.6, Source.STALE),
    (False, None, Source.LOCAL)])
def test_view_source(leading: bool, at: float | None, expected: Source) -> None:
    assert view_source(leading=leading, leader_view_at=at, now=NOW,
                       stale_after=1.5) == expected


def _doc(cloud: str | None) -> InspectDoc:
    """A document that says which cloud it was built for."""
    return InspectDoc(answered_by=f"pm1 for {cloud}", generated_at=NOW)


async def test_inspect_op() -> None:
    def build(cloud: str | None) -> InspectDoc:
        if cloud not in (None, "shop"):
            raise ApiError(f"no cloud named {cloud!r}")
        return _doc(cloud)

    op = inspect_op(build)
    assert await op({"cloud": "shop"}) == _doc("shop").to_json()
    assert await op({}) == _doc(None).to_json()
    with pytest.raises(ApiError, match="no cloud named 'lab'"):
        await op({"cloud": "lab"})
    with pytest.raises(ApiError, match="'cloud' must be a cloud name or null, got 3"):
        await op({"cloud": 3})
