"""The one dispatch table: every message an agent accepts from another, the duty that
handles it, and who may send it.

Theory of operation. The transport authenticates a peer (mutual TLS, the certificate's name
bound to its Hello) and hands `Clouds` each message with the peer's `Identity`: its name and
its certificate's kind. Authentication is not authorization: what a peer may send depends on
that kind *and* on what is in force here (`InForce`: the manifest roster, and the leader and
term this agent's election follows):
- a host certificate counts as a pool host only if the roster lists its name as a pool host;
- a node certificate counts as a node only if the roster lists its name as a node and the
  certificate is for this cloud;
- a name the roster lists under another kind than its certificate's counts as nothing;
- an operator certificate is in no roster: it may hand a manifest to a pool host, and ask
  for the inspect view;
- the leader is the pool host this agent's election follows (only pool hosts lead: a node
  certificate never speaks as leader, whatever the election says), and a message that
  carries a term speaks for the leader only in the term it is followed in.
Each message type has one row in `ROUTES` (or one per `case`: a manifest offer's origin, an
operator request's verb): the duty that handles it, the senders it accepts (alternatives of
`Sender` kinds that must all hold) and the agents that take it (`to`). A message its row does
not accept is refused: logged (`message_refused`, with the peer, the cloud and one sentence
of reason), answered with a `PermanentError` when it is a request, dropped otherwise. It
reaches no handler, so it changes nothing. `docs/dispatch.md` is `render()` of the table
(`python -m cloudd.daemon.member.dispatch > docs/dispatch.md`).

Pure, except `deliver`, which logs and awaits the handler it picks.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd import log
from cloudd.daemon.network.catalogue import (
    DomainEventNote,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodeAction,
    NodeReport,
    OfferOrigin,
    OperatorOp,
    OperatorRequest,
    RecordPush,
    RecordWanted,
    RoleAssignment,
)
from cloudd.election import messages as em
from cloudd.errors import PermanentError, TemporaryError
from cloudd.pki import Identity, MemberKind
from cloudd.vmctl.hostagent import HostCommand


class Sender(enum.Enum):
    """What a peer is, as far as one message is concerned."""

    HOST = "a pool host"
    NODE = "a node of this cloud"
    LEADER = "the leader of the current term"
    NAMED = "the member the message names"
    OPERATOR = "an operator certificate"
    HOST_CERT = "a host certificate"


MEANING: Mapping[Sender, str] = {
    Sender.HOST: "a host certificate whose name the roster in force lists as a pool host",
    Sender.NODE: "a node certificate of this cloud whose name the roster in force lists as "
                 "a node",
    Sender.LEADER: "a pool host of the roster whom this agent's election follows as leader "
                   "(never a node); a message that carries a term must carry the term it "
                   "is followed in",
    Sender.NAMED: "the sender is the member the message speaks for (the field in brackets)",
    Sender.OPERATOR: "an operator certificate: in no roster, an operator's machine outside "
                     "the cloud",
    Sender.HOST_CERT: "a host certificate, whatever the roster (an agent with no cloud has "
                      "none yet)",
}
"""What each kind of sender means, for the documentation."""


class To(enum.Enum):
    """Which agents take a message at all."""

    ANY = "any agent"
    HOST = "a pool host"
    NODE = "a node"
    NO_CLOUD = "an agent with no cloud yet"


class Duty(enum.Enum):
    """Who handles a message: the `CloudMember` (election, host, leader and node duties),
    `Clouds` (manifest offers), or the operator's room through `Clouds` (operator requests,
    the inspect view)."""

    ELECTION = "election"
    HOST_COMMAND = "host command"
    DOMAIN_EVENT = "domain event"
    ROLE_ASSIGNMENT = "role assignment"
    NODE_ACTION = "node action"
    NODE_REPORT = "node report"
    MANIFEST_WANTED = "manifest wanted"
    INSPECT_WANTED = "inspect wanted"
    MANIFEST_OFFER = "manifest offer"
    OPERATOR_REQUEST = "operator request"
    RECORD_WRITE = "record write"
    RECORD_GATHER = "record gathering"


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
    to: To = To.ANY
    case: tuple[str, tuple[str, ...]] | None = None
    """The row takes only messages whose field (first) has one of these values."""
    names: str | None = None
    """The message's field naming the member it speaks for (for `Sender.NAMED`)."""
    request: bool = False
    """Sent as a request: a refusal is answered (`PermanentError`), not only dropped."""
    note: str = ""
    """What the handler checks besides, for the documentation."""


@dataclass(frozen=True)
class InForce:
    """What is in force here: the roster, the leader this agent follows and its term, and
    what this agent is (a pool host or a node of `cloud`; with no cloud, its certificate's
    kind)."""

    cloud: str = ""
    hosts: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    leader: str = ""
    term: int = 0
    me: MemberKind | None = None


NO_ROSTER = InForce()
"""An agent that serves no cloud yet, and does not know its own certificate."""

#: Seconds a member that speaks as leader of a term newer than the followed one is told to
#: wait before it asks again: about one round of asking the pool hosts who leads.
RETRY_NEWER = 1.0

_MEMBER = anyone_of(Sender.HOST, Sender.NODE)
_LEADER = anyone_of(Sender.LEADER)
_ELECTION_RULES = "the election's own table (`cloudd/election/authority.py`): only pool hosts " \
    "lead or hold leases"
_O = OperatorOp

ROUTES: tuple[Route, ...] = (
    # Membership and election: every member probes, gossips (on its probes: a Gossip alone
    # is no message) and may stand (the election core applies the bully rules to what gets
    # through); only hosts grant leases.
    *(Route(cls, Duty.ELECTION, _MEMBER, note=_ELECTION_RULES) for cls in (
        em.Ping, em.Ack, em.PingReq, em.WhoLeads, em.LeaderIs, em.Election,
        em.Answer, em.Coordinator, em.Resign, em.LeaseRequest, em.LeaseRelease)),
    Route(em.LeaseGrant, Duty.ELECTION, anyone_of(Sender.HOST), note=_ELECTION_RULES),
    Route(em.LeaseReject, Duty.ELECTION, anyone_of(Sender.HOST), note=_ELECTION_RULES),
    # The leader commands hosts, assigns roles and has roles act; hosts and nodes speak for
    # themselves.
    Route(HostCommand, Duty.HOST_COMMAND, _LEADER, to=To.HOST, request=True,
          note="the host then checks the lease it granted for the command's term"),
    Route(DomainEventNote, Duty.DOMAIN_EVENT, all_of(Sender.HOST, Sender.NAMED),
          names="host"),
    Route(RoleAssignment, Duty.ROLE_ASSIGNMENT, _LEADER, to=To.NODE,
          note="a newer term than this agent follows makes it ask the pool hosts who leads"),
    Route(NodeAction, Duty.NODE_ACTION, _LEADER, to=To.NODE, request=True,
          note="only this node's own cloud; the action is one its role names (`Role.actions`), "
               "with exactly the argument names it takes; the answer at most 16 KiB"),
    Route(NodeReport, Duty.NODE_REPORT, all_of(Sender.NODE, Sender.NAMED), names="node"),
    # Manifests: the leader's generation, or a host seeding an agent that has no cloud yet;
    # a member asks for its own cloud's manifest (a booting node asks its seeds).
    Route(ManifestOffer, Duty.MANIFEST_OFFER, _LEADER, case=("origin", (OfferOrigin.LEADER,)),
          note="a newer term than this agent follows makes it ask the pool hosts who leads"),
    Route(ManifestOffer, Duty.MANIFEST_OFFER, anyone_of(Sender.HOST_CERT), to=To.NO_CLOUD,
          case=("origin", (OfferOrigin.SEED,)),
          note="the offered manifest lists the sender as a pool host, and this agent as "
               "what its own certificate says it is"),
    Route(ManifestWanted, Duty.MANIFEST_WANTED, _MEMBER, request=True,
          note="only this agent's own cloud"),
    # The cloud's replicated record: the leader writes it to every pool host, and gathers it
    # from them before it acts in a new term.
    Route(RecordPush, Duty.RECORD_WRITE, _LEADER, to=To.HOST, request=True,
          note="a version above the host's own, of a term not below the one it promised; "
               "persisted before the answer"),
    Route(RecordWanted, Duty.RECORD_GATHER, _LEADER, to=To.HOST, request=True,
          note="the host answers its record and takes no write of a lower term from then on "
               "(persisted before the answer)"),
    # The operator's verbs: relayed by pool hosts (the local API runs there as root);
    # an operator certificate hands a manifest to a pool host, and inspects.
    Route(InspectWanted, Duty.INSPECT_WANTED,
          anyone_of(Sender.HOST, Sender.NODE, Sender.OPERATOR), request=True,
          note="only this agent's own cloud; the view carries no secrets and no fence "
               "commands"),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.HOST, Sender.OPERATOR),
          to=To.HOST, case=("op", (_O.APPLY,)), request=True,
          note="performed here or handed to this cloud's leader, never relayed further; the "
               "manifest at most 256 KiB, checked in the worker process, 'busy' beyond 4 "
               "at once"),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.HOST, Sender.OPERATOR),
          to=To.HOST, case=("op", (_O.HISTORY, _O.ROLLBACK)), request=True,
          note="performed by this cloud's leader (handed to it), never relayed further; the "
               "history shows no manifest texts"),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.HOST), to=To.HOST,
          case=("op", (_O.STOP, _O.CLEANUP, _O.MAINTENANCE, _O.PLAN)), request=True),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.HOST), to=To.HOST,
          case=("op", (_O.DRAIN, _O.UNDRAIN)), request=True,
          note="performed by this cloud's leader (handed to it), a write to the record; the "
               "host must be one of the pool's"),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, anyone_of(Sender.HOST), to=To.HOST,
          case=("op", (_O.DIFF,)), request=True,
          note="the texts as pool hosts hold them, secrets' contents included"),
    Route(OperatorRequest, Duty.OPERATOR_REQUEST, _LEADER, to=To.NODE,
          case=("op", (_O.CLEANUP_SERVICE,)), request=True),
)

_BY_TYPE: Mapping[type, tuple[Route, ...]] = {
    cls: tuple(r for r in ROUTES if r.message is cls) for cls in {r.message for r in ROUTES}}

_TAKES: Mapping[To, Callable[[InForce], bool]] = {
    To.ANY: lambda here: True,
    To.HOST: lambda here: here.me is MemberKind.HOST,
    To.NODE: lambda here: here.me is MemberKind.NODE,
    To.NO_CLOUD: lambda here: not here.cloud,
}

_WORD = {MemberKind.HOST: "pool host", MemberKind.NODE: "node"}


def route_of(msg: object) -> Route | None:
    """The row that takes `msg` (None: no agent has any use for it)."""
    for route in _BY_TYPE.get(type(msg), ()):
        if route.case is None or getattr(msg, route.case[0], None) in route.case[1]:
            return route
    return None


def label(route: Route) -> str:
    """The row's message, as people read it: `OperatorRequest (op plan, stop)`."""
    name = route.message.__name__
    if route.case is None:
        return name
    return f"{name} ({route.case[0]} {', '.join(str(v) for v in route.case[1])})"


def term_of(msg: object) -> int | None:
    term = getattr(msg, "term", None)
    return term if isinstance(term, int) and not isinstance(term, bool) else None


def standing(sender: Identity, here: InForce) -> frozenset[Sender]:
    """What the sender's certificate makes it here, whatever it sends."""
    kinds = set()
    if sender.kind is MemberKind.OPERATOR:
        kinds.add(Sender.OPERATOR)
    elif sender.kind is MemberKind.HOST:
        kinds.add(Sender.HOST_CERT)
        if sender.name in here.hosts:
            kinds.add(Sender.HOST)
    elif sender.name in here.nodes and sender.cloud == here.cloud:
        kinds.add(Sender.NODE)
    if Sender.HOST in kinds and sender.name == here.leader:
        kinds.add(Sender.LEADER)  # only pool hosts lead (cloudd.election.authority)
    return frozenset(kinds)


def kinds_of(sender: Identity, msg: object, route: Route, here: InForce) -> frozenset[Sender]:
    """What `sender` is, now, as far as `msg` is concerned."""
    kinds = set(standing(sender, here))
    term = term_of(msg)
    if term is not None and term != here.term:
        kinds.discard(Sender.LEADER)  # it leads here in another term (or is deposed)
    if route.names is not None and getattr(msg, route.names, None) == sender.name:
        kinds.add(Sender.NAMED)
    return frozenset(kinds)


def may_send(route: Route, kinds: frozenset[Sender]) -> bool:
    """May a sender of these kinds send the route's message?"""
    return any(alternative <= kinds for alternative in route.senders)


def wants_leader(route: Route) -> bool:
    return any(Sender.LEADER in alternative for alternative in route.senders)


def describe(sender: Identity, here: InForce) -> str:
    """What the sender is here, in a few words (for a refusal)."""
    name, kind = sender.name, sender.kind
    if kind is MemberKind.OPERATOR:
        return "an operator certificate"
    cert = "a host certificate" if kind is MemberKind.HOST else \
        f"a node certificate of cloud {sender.cloud}"
    if not here.cloud:
        return f"{cert}, and this agent has no roster yet"
    listed = (MemberKind.HOST if name in here.hosts
              else MemberKind.NODE if name in here.nodes else None)
    if listed is None:
        return f"{cert}, not in the roster of {here.cloud}"
    if listed is not kind:
        return f"{cert}, but the roster of {here.cloud} lists {name} as a {_WORD[listed]}"
    if kind is MemberKind.NODE and sender.cloud != here.cloud:
        return f"{cert}, not of {here.cloud}"
    who = f"a {_WORD[kind]} of {here.cloud}"
    leads = kind is MemberKind.HOST and name == here.leader
    return f"{who} and its leader in term {here.term}" if leads else who


def rule_text(route: Route) -> str:
    named = f" (`{route.names}`)" if route.names else ""
    return " or ".join(
        " and ".join(k.value + (named if k is Sender.NAMED else "")
                     for k in sorted(alternative, key=list(Sender).index))
        for alternative in route.senders)


def _me(here: InForce) -> str:
    if not here.cloud:
        return ("an agent with no cloud yet" if here.me is None else
                f"an agent with no cloud yet, holding a {here.me} certificate")
    return f"a {_WORD[here.me]} of {here.cloud}" if here.me in _WORD else "not a member"


def refusal(sender: Identity, msg: object, route: Route, here: InForce) -> str | None:
    """Why `sender` may not send `msg` here now, or None when it may."""
    sent_ok = may_send(route, kinds_of(sender, msg, route, here))
    taken = _TAKES[route.to](here)
    if sent_ok and taken:
        return None
    why = (f"{label(route)} from {sender.name} ({describe(sender, here)}): only "
           f"{rule_text(route)} may send it")
    if not taken:
        why += f" to {route.to.value}, and this agent is {_me(here)}"
    elif wants_leader(route) and Sender.LEADER in standing(sender, here):
        why += f", and it leads term {here.term}, not {term_of(msg)}"
    elif wants_leader(route):
        why += (f", and this agent follows {here.leader} in term {here.term}" if here.leader
                else ", and this agent follows no leader now")
    return why


def newer_leader_term(sender: Identity, msg: object, route: Route,
                      here: InForce) -> int | None:
    """The term of a leader's message that this agent may simply not have heard of yet: the
    row wants the leader, the sender is a pool host of the roster (only hosts lead), and the
    message's term is above the one followed here. The agent then asks the pool hosts who
    leads."""
    term = term_of(msg)
    if (term is None or term <= here.term or not wants_leader(route)
            or Sender.HOST not in standing(sender, here)):
        return None
    return term


def seed_refusal(peer: str, *, me: Identity | None, cloud: str, hosts: Collection[str],
                 nodes: Collection[str]) -> str | None:
    """Why an agent with no cloud may not take a seed offer of `cloud` (its pool `hosts`,
    its `nodes`) from the host certificate `peer`, or None when it may."""
    start = f"ManifestOffer (origin seed) of {cloud} from {peer}"
    if peer not in hosts:
        return f"{start}: the manifest does not list {peer} as a pool host"
    if me is None:
        return f"{start}: this agent does not know its own certificate yet"
    if me.kind is MemberKind.HOST and me.name in hosts:
        return None
    if me.kind is MemberKind.NODE and me.name in nodes and me.cloud == cloud:
        return None
    mine = f"a {me.kind} certificate" + (f" of cloud {me.cloud}" if me.cloud else "")
    return f"{start}: the manifest does not list this agent ({me.name}, {mine}) as one"


Handler = Callable[[str, Any], Awaitable[Any]]
Refused = Callable[[Identity, object, Route], None]

_log = log.get("dispatch")


def log_refusal(*, me: str, peer: str, reason: str, cloud: str) -> None:
    """One refused message, as every refusal is logged."""
    _log.warning("message_refused", node=me, peer=peer, reason=reason, cloud=cloud or None)


async def deliver(sender: Identity, msg: object, *, me: str, handlers: Mapping[Duty, Handler],
                  here: InForce, refused: Refused | None = None) -> Any:
    """Route one message to its handler (which gets the sender's name); the return value is
    the reply (None: none). A refused message is logged, then `refused` is told, then a
    request is answered with the reason and anything else dropped."""
    route = route_of(msg)
    handler = handlers.get(route.duty) if route is not None else None
    if route is None or handler is None:
        unused = f"{me} has no use for {type(msg).__name__} from {sender.name}"
        log_refusal(me=me, peer=sender.name, reason=unused, cloud=here.cloud)
        raise PermanentError(unused)
    why = refusal(sender, msg, route, here)
    if why is not None:
        log_refusal(me=me, peer=sender.name, reason=why, cloud=here.cloud)
        if refused is not None:
            refused(sender, msg, route)
        if route.request and newer_leader_term(sender, msg, route, here) is not None:
            # Perhaps a leader this agent has not heard of yet: it asks the pool hosts (see
            # `refused`), and the sender's retry gets through once they have answered.
            raise TemporaryError(f"{why}; asking the pool hosts who leads", delay=RETRY_NEWER)
        if route.request:
            raise PermanentError(why)
        return None
    return await handler(sender.name, msg)


def render() -> str:
    """The table as Markdown (`docs/dispatch.md`)."""
    lines = [
        "# Who may send what",
        "",
        "Generated from `ROUTES` in `cloudd/daemon/member/dispatch.py` by",
        "`python -m cloudd.daemon.member.dispatch > docs/dispatch.md`; a test checks that this",
        "file matches the table. Every message one agent sends another goes through this table",
        "before any handler sees it. A sender's kind comes from its certificate *and* the",
        "manifest roster in force on the receiving agent; a refused message changes nothing.",
        "",
        "| message | handled by | who may send it | to | also checked | otherwise |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROUTES:
        otherwise = ("refused: logged (`message_refused`) and answered with the reason"
                     if r.request else "refused: logged (`message_refused`) and dropped")
        lines.append(f"| `{label(r)}` | {r.duty.value} | {rule_text(r)} | {r.to.value} | "
                     f"{r.note or '-'} | {otherwise} |")
    lines += ["", "A message of a type (or case) not in the table is refused as one nobody has "
              "any use for.", "", "| sender | means |", "|---|---|"]
    lines += [f"| {k.value} | {MEANING[k]} |" for k in Sender]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
