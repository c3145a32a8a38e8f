"""The one dispatch table: every message an agent accepts from another, the duty that
handles it, and who may send it.

Theory of operation. The transport authenticates a peer (mutual TLS, the certificate's name
bound to its Hello) and hands `Clouds` each message with the peer's name. `Clouds` and its
`CloudMember` route it through `ROUTES` only: the row of the message's type names the duty
that handles it and the senders it accepts.
Authentication is not authorization: a row's `senders` is the design's trust model
answering "who may send this", as alternatives of sender kinds that must all hold
(`all_of(HOST, NAMED)`: a pool host speaking for itself). `kinds_of` says which kinds a peer
is *now* (from the roster in force and the election's leader), `may_send` whether they
suffice.

Enforcement. A row with `enforced=False` is routed whatever the sender; `refusal` answers for
it anyway and the dispatcher logs what it would refuse (at debug), so that turning a row's
flag on is the whole change. Today one row refuses: a node report must come from the node it
names.

Pure, except `deliver`, which awaits the handler it picks.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd import log
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodeReport,
    OperatorRequest,
    RoleAssignment,
)
from cloudd.election import messages as em
from cloudd.errors import PermanentError
from cloudd.vmctl.hostagent import HostCommand


class Sender(enum.Enum):
    """What a peer is, as far as one message is concerned."""

    MEMBER = "any member"
    """A host or node of the roster in force."""
    HOST = "a pool host"
    """A pool host of the roster in force."""
    LEADER = "the leader of the current term"
    """The member this agent's election says leads now."""
    NAMED = "the member the message names"
    """The sender is the one the message speaks for (a node's own report, a host's own
    domain event): the row's `names` field equals the peer."""
    OPERATOR = "an operator's command, relayed"
    """An agent relaying a command of its root operator (the local API). This layer knows
    the peer's name only, so it counts a pool host of the cloud in force as one; the
    certificate's kind settles it once the transport passes it on."""


class Duty(enum.Enum):
    """Who handles a message: the `CloudMember` (election, host, leader and node duties),
    `Clouds` (manifest offers), or the operator's room through `Clouds` (operator requests,
    the leader's inspect view)."""

    ELECTION = "election"
    HOST_COMMAND = "host command"
    DOMAIN_EVENT = "domain event"
    ROLE_ASSIGNMENT = "role assignment"
    NODE_REPORT = "node report"
    MANIFEST_WANTED = "manifest wanted"
    INSPECT_WANTED = "inspect wanted"
    MANIFEST_OFFER = "manifest offer"
    OPERATOR_REQUEST = "operator request"


Rule = tuple[frozenset[Sender], ...]
"""Alternatives: a sender may send the message when it is every kind of one alternative."""


def anyone_of(*kinds: Sender) -> Rule:
    """Each kind alone suffices."""
    return tuple(frozenset({k}) for k in kinds)


def all_of(*kinds: Sender) -> Rule:
    """One alternative: the sender must be every kind at once."""
    return (frozenset(kinds),)


@dataclass(frozen=True)
class Route:
    message: type
    duty: Duty
    senders: Rule
    """Who may send it, as the trust model says."""
    enforced: bool = False
    """Whether a sender outside `senders` is refused today (else only logged at debug)."""
    names: str | None = None
    """The message's field naming the member it speaks for (for `Sender.NAMED`)."""


_MEMBERS = anyone_of(Sender.MEMBER)

ROUTES: tuple[Route, ...] = (
    # Membership and election: every member probes, gossips and may stand; only hosts
    # grant (or refuse) leader leases.
    *(Route(cls, Duty.ELECTION, _MEMBERS) for cls in (
        em.Gossip, em.Ping, em.Ack, em.PingReq, em.WhoLeads, em.LeaderIs, em.Election,
        em.Answer, em.Coordinator, em.Resign, em.LeaseRequest, em.LeaseRelease)),
    Route(em.LeaseGrant, Duty.ELECTION, anyone_of(Sender.HOST)),
    Route(em.LeaseReject, Duty.ELECTION, anyone_of(Sender.HOST)),
    # The leader commands hosts and assigns roles; hosts and nodes speak for themselves.
    Route(HostCommand, Duty.HOST_COMMAND, anyone_of(Sender.LEADER)),
    Route(DomainEventNote, Duty.DOMAIN_EVENT, all_of(Sender.HOST, Sender.NAMED), names="host"),
    Route(RoleAssignment, Duty.ROLE_ASSIGNMENT, anyone_of(Sender.LEADER)),
    Route(NodeReport, Duty.NODE_REPORT, anyone_of(Sender.NAMED), enforced=True, names="node"),
    # Manifests: the leader's generation, or a host seeding a member that lacks it; any
    # member may ask for its own cloud's manifest (a booting node asks its seeds).
    Route(ManifestOffer, Duty.MANIFEST_OFFER, anyone_of(Sender.LEADER, Sender.HOST)),
    Route(ManifestWanted, Duty.MANIFEST_WANTED, _MEMBERS),
    # The operator's verbs, relayed to the leader; the leader relays `cleanup-service` on.
    Route(InspectWanted, Duty.INSPECT_WANTED, anyone_of(Sender.OPERATOR)),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.OPERATOR, Sender.LEADER)),
)

TABLE: Mapping[type, Route] = {r.message: r for r in ROUTES}


@dataclass(frozen=True)
class Senders:
    """Who is who now: the roster in force and the leader this agent follows."""

    hosts: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()
    leader: str = ""


NOBODY = Senders()
"""An agent that serves no cloud yet knows no member."""


def route_of(msg: object) -> Route | None:
    return TABLE.get(type(msg))


def kinds_of(peer: str, msg: object, route: Route, now: Senders) -> frozenset[Sender]:
    """What `peer` is, now, as far as `msg` is concerned."""
    kinds = set()
    if peer in now.members:
        kinds.add(Sender.MEMBER)
    if peer in now.hosts:
        kinds.update((Sender.HOST, Sender.OPERATOR))
    if now.leader and peer == now.leader:
        kinds.add(Sender.LEADER)
    if route.names is not None and getattr(msg, route.names, None) == peer:
        kinds.add(Sender.NAMED)
    return frozenset(kinds)


def may_send(route: Route, kinds: frozenset[Sender]) -> bool:
    """May a sender of these kinds send the route's message?"""
    return any(alternative <= kinds for alternative in route.senders)


def refusal(peer: str, msg: object, route: Route, now: Senders) -> str | None:
    """Why `peer` may not send `msg` now, or None when it may."""
    if may_send(route, kinds_of(peer, msg, route, now)):
        return None
    who = " or ".join(" and ".join(sorted(k.value for k in alt)) for alt in route.senders)
    named = f" (it names {getattr(msg, route.names, '')!r})" if route.names else ""
    return f"{type(msg).__name__} from {peer}{named}: only {who} may send it"


Handler = Callable[[str, Any], Awaitable[Any]]

_log = log.get("dispatch")


async def deliver(peer: str, msg: object, *, me: str, handlers: Mapping[Duty, Handler],
                  now: Senders) -> Any:
    """Route one message to its handler; the return value is the reply (None: none).

    A refused message (enforced row) is logged and dropped, as a malformed one would be."""
    route = route_of(msg)
    handler = handlers.get(route.duty) if route is not None else None
    if route is None or handler is None:
        raise PermanentError(f"{me} has no use for {type(msg).__name__}")
    why = refusal(peer, msg, route, now)
    if why is not None:
        if route.enforced:
            _log.warning("message_refused", node=me, peer=peer, reason=why)
            return None
        _log.debug("message_not_authorized", node=me, peer=peer, reason=why)
    return await handler(peer, msg)
