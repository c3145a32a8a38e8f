"""The read-only operations of the local API, `inspect` and `events`, over the daemon's own state.

They check their arguments (an `ApiError` names the bad one), turn the event log's `LogEvent`s
into the document's `EventView`s and say where a cloud's cluster-wide view came from. The
document itself and its decoding are the client's (`cloudd.client.inspectdoc`): the CLI
reads what these write without importing the daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import EventView, InspectDoc, Source
from cloudd.daemon.base.eventlog import EventLog, LogEvent


def view_source(*, leading: bool, leader_view_at: float | None, now: float,
                stale_after: float) -> Source:
    """Where a cloud's cluster-wide parts come from, for `CloudView.source`: the leader's own
    view, a leader's view received less than `stale_after` seconds ago (a probe round is a
    good value), a staler one, or none at all (the agent's own)."""
    if leading:
        return Source.LEADER
    if leader_view_at is None:
        return Source.LOCAL
    return Source.LEADER if now - leader_view_at <= stale_after else Source.STALE


def inspect_op(build: Callable[[str | None], InspectDoc]) -> Callable[[dict[str, Any]],
                                                                      Awaitable[Any]]:
    """The `inspect` operation for `ApiServer.register("inspect", ...)`: checks the `cloud`
    argument and answers `build(cloud).to_json()`; `build` raises `ApiError` for a cloud
    the agent does not know."""

    async def handler(args: dict[str, Any]) -> Any:
        cloud = args.get("cloud")
        if cloud is not None and not isinstance(cloud, str):
            raise ApiError(f"inspect: 'cloud' must be a cloud name or null, got {cloud!r}")
        return build(cloud).to_json()

    return handler


def event_json(event: LogEvent) -> dict[str, Any]:
    """One event as the `events` operation streams it (the keys of `EventView`)."""
    assert event.id is not None, "only stored events (with an id) are shown"
    return {"id": event.id, "time": event.time, "cloud": event.cloud, "kind": event.kind.value,
            "subject": event.subject, "reason": event.reason, "term": event.term}


def event_view(event: LogEvent) -> EventView:
    return EventView(**event_json(event))


def _events_args(args: dict[str, Any]) -> tuple[float | None, str | None, bool, int]:
    since, cloud = args.get("since"), args.get("cloud")
    follow, limit = args.get("follow", False), args.get("limit", 20)
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        raise ApiError(f"events: 'since' must be epoch seconds or null, got {since!r}")
    if cloud is not None and not isinstance(cloud, str):
        raise ApiError(f"events: 'cloud' must be a cloud name or null, got {cloud!r}")
    if not isinstance(follow, bool):
        raise ApiError(f"events: 'follow' must be true or false, got {follow!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ApiError(f"events: 'limit' must be a positive whole number, got {limit!r}")
    return since, cloud, follow, limit


def events_stream(log: EventLog) -> Callable[[dict[str, Any]], AsyncIterator[Any]]:
    """The `events` stream operation over `log`, for `ApiServer.register_stream("events", ...)`.

    Without `follow`: the last `limit` events (or the first `limit` from `since`). With it:
    those, then every new one until the client goes away, none missed or repeated.
    """

    async def handler(args: dict[str, Any]) -> AsyncIterator[Any]:
        since, cloud, follow, limit = _events_args(args)
        # Read the newest id before querying: whatever is appended after it is followed.
        start = log.last_id()
        last = None
        for event in log.query(since=since, cloud=cloud, limit=limit):
            last = event.id
            yield event_json(event)
        if follow:
            async for event in log.follow(cloud=cloud, after_id=last if last else start):
                yield event_json(event)

    return handler
