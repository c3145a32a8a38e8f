"""The operator's view of a cloud: the `inspect` document, its JSON form and its text form.

`cloudd-cli inspect` shows a cloud on one screen, the way Pacemaker's crm_mon shows a cluster:
who leads and since when, whether the leader has its quorum, every host and node with its
liveness, every service with its restarts, the actions that keep failing and when they are
tried next, and the last events. Any agent may answer; the document says which one did and
whether its cluster-wide parts came from the leader, from the agent's own view, or from a
leader's view it has not refreshed for a while (stale).

The document is frozen dataclasses. Its JSON keys are the field names and are documented in
docs/inspect.md; `version` grows when a key changes meaning or goes away (new keys may appear
without it). `from_json` validates everything, because the CLI must never trust a peer's
bytes: a bad document raises `RemoteProtocolError` naming the key path.

The text renderer is pure: it takes the document, `now`, whether to colour and the width.
Events travel as `event_json(Event)`; `events_stream(log)` is the `events` API operation.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudd.daemon.base.eventlog import Event, EventLog
from cloudd.daemon.operator.api import ApiError
from cloudd.errors import RemoteProtocolError

#: The document's version; see the module docstring for when it changes.
VERSION = 1


class Liveness(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class ElectionState(enum.StrEnum):
    STABLE = "stable"
    """A leader is known and holds its quorum."""
    ELECTING = "electing"
    """An election is running; nobody acts on the cloud meanwhile."""
    NO_QUORUM = "no-quorum"
    """A leader is known but reaches too few hosts to act on VMs."""


class Source(enum.StrEnum):
    LEADER = "leader"
    """Cluster-wide parts are the leader's own view (the answering agent leads, or asked it)."""
    LOCAL = "local"
    """Only what the answering agent sees itself; the leader was not asked or not reached."""
    STALE = "stale"
    """The leader's view as last received, older than a probe round."""


@dataclass(frozen=True)
class ManifestInfo:
    generation: int
    """Grows by one each time a changed manifest is accepted for this cloud."""
    digest: str
    """sha256 of the accepted manifest file, hex."""
    loaded_at: float
    """Epoch seconds at which this generation was accepted."""


@dataclass(frozen=True)
class Leadership:
    state: ElectionState
    term: int
    leader: str | None = None
    since: float | None = None
    """Epoch seconds at which `leader` took `term`."""
    quorum_reached: int = 0
    """Pool hosts the leader reaches, itself included when it is a host."""
    quorum_needed: int = 0
    """A majority of the pool's hosts."""


@dataclass(frozen=True)
class HostView:
    name: str
    address: str
    liveness: Liveness
    reachable: bool
    """Whether the answering source has an open connection to the host's agent."""
    free_memory_mib: int | None = None
    domains: int = 0
    """Domains of this cloud defined on the host."""


@dataclass(frozen=True)
class ServiceView:
    name: str
    state: str
    """The supervisor's state: stopped, starting, running, backoff, stopping, exited, fatal."""
    ready: bool = False
    pid: int | None = None
    restarts: int = 0
    fatal_count: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class NodeView:
    name: str
    role: str
    address: str
    domain_state: str
    """libvirt's state of the node's domain, or "undefined"."""
    agent_liveness: Liveness
    host: str | None = None
    uptime: float | None = None
    """Seconds since the domain last started; None when it is not running."""
    waiting: str = ""
    """Why the planner holds this node back (e.g. "waiting for database"); "" when it is not."""
    services: tuple[ServiceView, ...] = ()


@dataclass(frozen=True)
class FailedAction:
    action: str
    """What failed: define, start, destroy, configure, ..."""
    subject: str
    """The node or host it was for."""
    fail_count: int
    last_error: str = ""
    next_retry: float | None = None
    """Epoch seconds of the next attempt; None when it will not be retried by itself."""


@dataclass(frozen=True)
class EventView:
    id: int
    time: float
    cloud: str
    kind: str
    subject: str
    reason: str
    term: int = 0


@dataclass(frozen=True)
class CloudView:
    name: str
    type: str
    ensure: str
    source: Source
    observed_at: float
    """Epoch seconds at which the cluster-wide parts were observed by their source."""
    leadership: Leadership
    manifest: ManifestInfo | None = None
    hosts: tuple[HostView, ...] = ()
    nodes: tuple[NodeView, ...] = ()
    failed_actions: tuple[FailedAction, ...] = ()
    events: tuple[EventView, ...] = ()
    """The last few events of this cloud, oldest first."""


@dataclass(frozen=True)
class InspectDoc:
    answered_by: str
    """The agent that answered the CLI."""
    generated_at: float
    clouds: tuple[CloudView, ...] = ()
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: enums as their values, tuples as lists, keys as field names."""
        out = _encode(self)
        assert isinstance(out, dict)
        return out

    @classmethod
    def from_json(cls, data: object) -> InspectDoc:
        """Validate and decode; `RemoteProtocolError` names the first bad key."""
        if isinstance(data, dict) and data.get("version") != VERSION:
            raise RemoteProtocolError(
                f"inspect document version {data.get('version')!r} is not the version "
                f"{VERSION} this cloudd-cli understands")
        doc = _decode(cls, data, "document")
        assert isinstance(doc, InspectDoc)
        return doc


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _kind(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _decode(tp: Any, value: object, path: str) -> object:
    """Decode `value` as type `tp` (a dataclass, an enum, a scalar, `X | None`, `tuple[X, ...]`)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise RemoteProtocolError(f"inspect document: {path}: expected a list, "
                                      f"got {type(value).__name__}")
        inner = typing.get_args(tp)[0]
        return tuple(_decode(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        assert isinstance(tp, type)
        if not isinstance(value, dict):
            raise RemoteProtocolError(f"inspect document: {path}: expected an object, "
                                      f"got {type(value).__name__}")
        hints, args = _hints(tp), {}
        for f in dataclasses.fields(tp):
            sub = f"{f.name}" if path == "document" else f"{path}.{f.name}"
            if f.name in value:
                args[f.name] = _decode(hints[f.name], value[f.name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RemoteProtocolError(f"inspect document: {sub}: missing")
        return tp(**args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            known = ", ".join(m.value for m in tp)
            raise RemoteProtocolError(f"inspect document: {path}: expected one of {known}, "
                                      f"got {value!r}") from None
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[tp](value)
    if not ok:
        raise RemoteProtocolError(f"inspect document: {path}: expected {_kind(tp)}, "
                                  f"got {value!r}")
    return float(value) if tp is float else value  # type: ignore[arg-type]


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


def event_json(event: Event) -> dict[str, Any]:
    """One event as the `events` operation streams it (the keys of `EventView`)."""
    assert event.id is not None, "only stored events (with an id) are shown"
    return {"id": event.id, "time": event.time, "cloud": event.cloud, "kind": event.kind.value,
            "subject": event.subject, "reason": event.reason, "term": event.term}


def event_view(event: Event) -> EventView:
    return EventView(**event_json(event))


def decode_event(data: object) -> EventView:
    """Validate one streamed event; `RemoteProtocolError` names the bad key."""
    view = _decode(EventView, data, "event")
    assert isinstance(view, EventView)
    return view


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


# -- text ----------------------------------------------------------------------------------------

_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
_STYLE = {
    "alive": "green", "running": "green", "stable": "green", "yes": "green", "leader": "green",
    "suspect": "yellow", "electing": "yellow", "starting": "yellow", "backoff": "yellow",
    "stopping": "yellow", "shutting-down": "yellow", "paused": "yellow", "local": "yellow",
    "dead": "red", "no-quorum": "red", "fatal": "red", "crashed": "red", "exited": "red",
    "no": "red", "stale": "red", "failure": "red", "undefined": "dim", "stopped": "dim",
    "restart": "yellow", "election": "cyan", "command": "cyan",
}
Cell = tuple[str, str]
"""Plain text and a style name ("" for none)."""


def paint(text: str, style: str, *, color: bool) -> str:
    """`text` in ANSI colour `style` when `color`; the text unchanged otherwise."""
    if not color or not style or not text:
        return text
    return f"\x1b[{_SGR[style]}m{text}\x1b[0m"


def styled(text: str) -> Cell:
    """A cell coloured by what its word means (alive green, dead red, ...)."""
    return text, _STYLE.get(text, "")


def ago(seconds: float) -> str:
    """A short duration: 42s, 4m12s, 2h03m, 5d02h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(t: float, *, now: float) -> str:
    """UTC time of day when `t` is within a day of `now`; the date as well otherwise."""
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%H:%M:%SZ" if abs(now - t) < 86400 else "%Y-%m-%d %H:%MZ")


def table(rows: list[list[Cell]], *, color: bool, width: int | None,
          indent: str = "  ") -> list[str]:
    """Aligned columns; a line wider than `width` loses the end of its last cell."""
    if not rows:
        return []
    ncol = max(len(r) for r in rows)
    padded = [[*r, *[("", "")] * (ncol - len(r))] for r in rows]
    widths = [max(len(r[i][0]) for r in padded) for i in range(ncol - 1)]
    lines = []
    for row in padded:
        *cells, (last_text, last_style) = row
        lead = indent + "".join(c[0].ljust(w) + "  " for c, w in zip(cells, widths,
                                                                     strict=True))
        if width is not None and len(lead) + len(last_text) > width:
            room = width - len(lead)
            last_text = last_text[:room - 1] + "…" if room > 1 else ""
        parts = [paint(c[0].ljust(w), c[1], color=color) + "  "
                 for c, w in zip(cells, widths, strict=True)]
        lines.append((indent + "".join(parts) + paint(last_text, last_style,
                                                      color=color)).rstrip())
    return lines


def _yes(flag: bool) -> Cell:
    return styled("yes" if flag else "no")


def _cloud_header(c: CloudView, doc: InspectDoc, *, now: float, color: bool) -> list[str]:
    def p(text: str, style: str = "") -> str:
        return paint(text, style, color=color)

    head = f"cloud {p(c.name, 'bold')}  type {c.type}  ensure {c.ensure}"
    if c.manifest is not None:
        m = c.manifest
        manifest = (f"  manifest generation {m.generation}, sha256 {m.digest[:12]}, loaded "
                    f"{clock(m.loaded_at, now=now)} ({ago(now - m.loaded_at)} ago)")
    else:
        manifest = "  manifest " + p("none loaded", "yellow")
    old = ago(now - c.observed_at)
    view = {Source.LEADER: f"cluster view from the leader, observed {old} ago",
            Source.LOCAL: "cluster view: " + p("this agent's own", "yellow")
                          + " (the leader was not reached)",
            Source.STALE: "cluster view: " + p(f"STALE, the leader's as of {old} ago", "red")}
    L = c.leadership
    lead = f"leader {p(L.leader, 'bold') if L.leader else p('none', 'red')}  term {L.term}"
    if L.since is not None:
        lead += f"  since {clock(L.since, now=now)} ({ago(now - L.since)} ago)"
    state = paint(L.state.value.replace("-", " "), _STYLE[L.state.value], color=color)
    short = L.quorum_reached < L.quorum_needed
    quorum = p(f"{L.quorum_reached}/{L.quorum_needed}", "red" if short else "green")
    lead += f"  election {state}  quorum {quorum} hosts"
    answered = f"  answered by {doc.answered_by} at {clock(doc.generated_at, now=now)}; "
    return [head, manifest, answered + view[c.source], "  " + lead]


def _nodes(c: CloudView, *, now: float) -> list[list[Cell]]:
    rows: list[list[Cell]] = [[(h, "bold") for h in
                               ("NODE", "ROLE", "ADDRESS", "HOST", "DOMAIN", "AGENT", "UP",
                                "WAITING")]]
    for n in c.nodes:
        up = ago(n.uptime) if n.uptime is not None else "-"
        rows.append([(n.name, ""), (n.role, ""), (n.address, ""), (n.host or "-", ""),
                     styled(n.domain_state), styled(n.agent_liveness.value), (up, ""),
                     (n.waiting, "yellow")])
    return rows


def _services(c: CloudView) -> list[list[Cell]]:
    rows: list[list[Cell]] = [[(h, "bold") for h in
                               ("NODE", "SERVICE", "STATE", "READY", "PID", "RESTARTS",
                                "FATAL", "LAST ERROR")]]
    for n in c.nodes:
        for s in n.services:
            rows.append([(n.name, ""), (s.name, ""), styled(s.state), _yes(s.ready),
                         (str(s.pid) if s.pid is not None else "-", ""),
                         (str(s.restarts), "yellow" if s.restarts else ""),
                         (str(s.fatal_count), "red" if s.fatal_count else ""),
                         (s.last_error, "red")])
    return rows


def render_cloud(c: CloudView, doc: InspectDoc, *, now: float, color: bool,
                 width: int | None) -> list[str]:
    lines = _cloud_header(c, doc, now=now, color=color)
    hosts: list[list[Cell]] = [[(h, "bold") for h in
                                ("HOST", "ADDRESS", "LIVENESS", "REACHABLE", "FREE MiB",
                                 "DOMAINS")]]
    for h in c.hosts:
        free = str(h.free_memory_mib) if h.free_memory_mib is not None else "-"
        hosts.append([(h.name, ""), (h.address, ""), styled(h.liveness.value),
                      _yes(h.reachable), (free, ""), (str(h.domains), "")])
    for rows in (hosts, _nodes(c, now=now), _services(c)):
        if len(rows) > 1:
            lines += ["", *table(rows, color=color, width=width)]
    if c.failed_actions:
        lines += ["", "  " + paint("FAILED ACTIONS", "bold", color=color)]
        failed: list[list[Cell]] = []
        for f in c.failed_actions:
            retry = ("no automatic retry" if f.next_retry is None else
                     "retry now" if f.next_retry <= now else
                     f"retry in {ago(f.next_retry - now)}")
            failed.append([(f"{f.action} {f.subject}", ""),
                           (f"{f.fail_count} failure{'s' if f.fail_count != 1 else ''}",
                            "red"), (retry, ""), (f.last_error, "")])
        lines += table(failed, color=color, width=width)
    if c.events:
        lines += ["", "  " + paint("LAST EVENTS", "bold", color=color)]
        lines += table([event_cells(e, now=now) for e in c.events], color=color, width=width)
    return lines


def event_cells(e: EventView, *, now: float | None = None) -> list[Cell]:
    """One event as table cells; the full date and time when `now` is None."""
    when = (datetime.fromtimestamp(e.time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if now is None else clock(e.time, now=now))
    return [(when, "dim"), (e.cloud, ""), styled(e.kind), (e.subject, ""),
            (f"term {e.term}", "dim"), (e.reason, "")]


def render(doc: InspectDoc, *, now: float, color: bool = False,
           width: int | None = None) -> str:
    """The whole document as text, ending in a newline. Pure: same inputs, same text."""
    if not doc.clouds:
        return f"no clouds (answered by {doc.answered_by})\n"
    out: list[str] = []
    for i, c in enumerate(doc.clouds):
        if i:
            out.append("")
        out += render_cloud(c, doc, now=now, color=color, width=width)
    return "\n".join(out) + "\n"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """`text` without ANSI colour codes."""
    return _ANSI.sub("", text)
