"""The operator's view of a cloud: the `inspect` document and its JSON form.

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

Both ends use this module: the agent fills the dataclasses (cloudd.daemon.operator.inspectview)
and the CLI decodes them (`from_json`, `decode_event` for the streamed events) and prints them
with `cloudd.client.render`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

from cloudd.errors import RemoteProtocolError

#: The document's version; see the module docstring for when it changes.
VERSION = 1


class LivenessView(enum.StrEnum):
    """An agent's liveness as the document shows it: what the gossip says of it."""

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
    """The number of the generation in force in the cloud's replicated record (1, 2, 3...;
    0 when the answering agent does not know it)."""
    digest: str
    """sha256 of the accepted manifest file, hex."""
    loaded_at: float
    """Epoch seconds at which this generation was accepted."""


@dataclass(frozen=True)
class LeadershipView:
    """Who leads the cloud in which term, since when, and how much of its quorum it reaches."""

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
    liveness: LivenessView
    reachable: bool
    """Whether the answering source has an open connection to the host's agent."""
    free_memory_mib: int | None = None
    domains: int = 0
    """Domains of this cloud defined on the host."""
    liveness_since: float | None = None
    """Epoch seconds since which the host is `liveness`, when that is not alive."""
    liveness_reason: str = ""
    """Why the source believes the host suspect or dead, in words; "" while it is alive."""


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
class FindingView:
    """One result of the provider's cluster checks (`monitor`), as the leader last saw it."""

    check: str
    ok: bool
    message: str = ""
    state: str = ""
    """The scheduler's state of the node, in its own words (`idle`, `alloc`, `down`,
    `free`...); "" when the check is not a scheduler's view."""
    jobs: tuple[str, ...] = ()
    """The ids of the jobs the scheduler runs on the node."""


@dataclass(frozen=True)
class NodeView:
    name: str
    role: str
    address: str
    domain_state: str
    """libvirt's state of the node's domain, or "undefined"."""
    agent_liveness: LivenessView
    host: str | None = None
    uptime: float | None = None
    """Seconds since the domain last started; None when it is not running."""
    waiting: str = ""
    """Why the planner holds this node back (e.g. "waiting for database"); "" when it is not."""
    services: tuple[ServiceView, ...] = ()
    agent_liveness_since: float | None = None
    """Epoch seconds since which the node's agent is `agent_liveness`, when not alive."""
    agent_liveness_reason: str = ""
    """Why the source believes the node's agent suspect or dead; "" while it is alive."""
    findings: tuple[FindingView, ...] = ()
    """What the provider's checks last found about this node (the scheduler's view of it
    among them)."""


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
class DrainNodeView:
    """A node still on a drained host."""

    name: str
    role: str
    step: str
    """What its move does now ("moving: shutdown", ...) or what it waits for, and why."""


@dataclass(frozen=True)
class DrainView:
    """A pool host the operator drained, and the nodes still on it."""

    host: str
    move_stateful: bool = False
    """The operator allowed its stateful and batch compute nodes to move."""
    since: float = 0.0
    """Epoch seconds the drain was recorded."""
    by: str = ""
    """The agent whose operator asked for it."""
    left: tuple[DrainNodeView, ...] = ()
    """Nodes of the cloud with a domain on it still (none: the drain is complete)."""


@dataclass(frozen=True)
class CloudView:
    name: str
    type: str
    ensure: str
    source: Source
    observed_at: float
    """Epoch seconds at which the cluster-wide parts were observed by their source."""
    leadership: LeadershipView
    manifest: ManifestInfo | None = None
    hosts: tuple[HostView, ...] = ()
    nodes: tuple[NodeView, ...] = ()
    failed_actions: tuple[FailedAction, ...] = ()
    events: tuple[EventView, ...] = ()
    """The last few events of this cloud, oldest first."""
    maintenance: tuple[str, ...] = ()
    """The operator's maintenance holds in the cloud's record: node names, `(cloud)` for the
    whole cloud."""
    findings: tuple[FindingView, ...] = ()
    """What the provider's checks last found about the cloud as a whole."""
    held_for_stop: bool = False
    """The cloud is to be stopped and waits for the provider's stop (its domains and
    services are left running meanwhile)."""
    drains: tuple[DrainView, ...] = ()
    """The pool hosts the operator drained, with the nodes still on each."""


@dataclass(frozen=True)
class AgentState:
    """The answering agent's own state, whoever leads: each agent keeps its own files."""

    events_dropped: int = 0
    """Events its log could not store since it started (a full or failing disk)."""
    unproven: str = ""
    """Why it grants no lease and runs no host command yet: a term file of it was set aside
    and it relearns its terms from the other pool hosts ('' when it may)."""


@dataclass(frozen=True)
class InspectDoc:
    answered_by: str
    """The agent that answered the CLI."""
    generated_at: float
    clouds: tuple[CloudView, ...] = ()
    version: int = VERSION
    agent: AgentState = AgentState()
    """The answering agent's own state (not the leader's)."""

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


def decode_event(data: object) -> EventView:
    """Validate one streamed event; `RemoteProtocolError` names the bad key."""
    view = _decode(EventView, data, "event")
    assert isinstance(view, EventView)
    return view
