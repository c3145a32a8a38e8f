"""The dispatch table: one route per message type, the senders each accepts, and routing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cloudd.daemon.member import dispatch
from cloudd.daemon.member.dispatch import (
    NOBODY,
    ROUTES,
    TABLE,
    Duty,
    Sender,
    Senders,
    deliver,
    kinds_of,
    may_send,
    refusal,
)
from cloudd.daemon.network.catalogue import (
    OWN,
    DomainEventNote,
    InspectAnswer,
    InspectWanted,
    ManifestOffer,
    ManifestWanted,
    NodePhase,
    NodeReport,
    OfferOrigin,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    RoleAssignment,
)
from cloudd.election import messages as em
from cloudd.errors import PermanentError
from cloudd.vmctl.backend import DomainEvent, EventKind
from cloudd.vmctl.hostagent import HostCommand, HostResult, Op

#: Messages that only ever travel as replies to a request: no route takes them.
REPLIES = {HostResult, InspectAnswer, OperatorAnswer}

NOW = Senders(hosts=frozenset({"pm1", "pm2"}), members=frozenset({"pm1", "pm2", "n1", "n2"}),
              leader="pm1")

EVENT = DomainEvent(kind=EventKind.STOPPED, domain="c-n1", meta=None, detail="crashed", at=0.0)
REPORT = NodeReport(node="n1", term=3, generation="g", phase=NodePhase.READY)


def test_every_message_that_is_not_a_reply_has_one_route() -> None:
    sent = (set(em.MESSAGE_TYPES.values()) | set(OWN.values())) - REPLIES
    assert {r.message for r in ROUTES} == sent
    assert len(ROUTES) == len(TABLE)  # no type twice


def test_every_duty_is_somebodys_and_every_route_names_senders() -> None:
    assert {r.duty for r in ROUTES} == set(Duty)
    assert all(r.senders and all(r.senders) for r in ROUTES)
    assert all(r.names is None or r.names in {f.name for f in dataclasses.fields(r.message)}
               for r in ROUTES)


def test_only_what_was_refused_before_is_enforced_now() -> None:
    """The node report's check is the one the member made before; the authorization issue
    turns the others on."""
    assert {r.message for r in ROUTES if r.enforced} == {NodeReport}


@pytest.mark.parametrize(("msg", "peer", "allowed"), [
    (em.WhoLeads(term=3), "n2", True),
    (em.WhoLeads(term=3), "stranger", False),
    (em.LeaseGrant(term=3, seq=1, duration=1.0), "pm2", True),
    (em.LeaseGrant(term=3, seq=1, duration=1.0), "n1", False),
    (HostCommand(Op.LIST, 3), "pm1", True),
    (HostCommand(Op.LIST, 3), "pm2", False),
    (DomainEventNote("pm2", EVENT), "pm2", True),
    (DomainEventNote("pm2", EVENT), "pm1", False),
    (DomainEventNote("n1", EVENT), "n1", False),
    (RoleAssignment(3, "c", "n1", "web", "a", "g"), "pm1", True),
    (RoleAssignment(3, "c", "n1", "web", "a", "g"), "n2", False),
    (REPORT, "n1", True),
    (REPORT, "n2", False),
    (ManifestOffer("c", "d", "t", OfferOrigin.LEADER, 3), "pm1", True),
    (ManifestOffer("c", "d", "t", OfferOrigin.SEED, 3), "pm2", True),
    (ManifestOffer("c", "d", "t", OfferOrigin.SEED, 3), "n1", False),
    (ManifestWanted("c"), "n2", True),
    (InspectWanted("c"), "pm2", True),
    (InspectWanted("c"), "n1", False),
    (OperatorRequest(OperatorOp.PLAN, "c", "{}"), "pm2", True),
    (OperatorRequest(OperatorOp.CLEANUP_SERVICE, "c", "{}"), "pm1", True),
    (OperatorRequest(OperatorOp.PLAN, "c", "{}"), "n1", False),
])
def test_who_may_send_what(msg: object, peer: str, allowed: bool) -> None:
    route = TABLE[type(msg)]
    assert may_send(route, kinds_of(peer, msg, route, NOW)) is allowed
    assert (refusal(peer, msg, route, NOW) is None) is allowed


def test_kinds_follow_the_roster_and_the_leader_now() -> None:
    route = TABLE[NodeReport]
    assert kinds_of("n1", REPORT, route, NOW) == {Sender.MEMBER, Sender.NAMED}
    assert kinds_of("pm1", REPORT, route, NOW) == {Sender.MEMBER, Sender.HOST, Sender.OPERATOR,
                                                   Sender.LEADER}
    assert kinds_of("pm1", REPORT, route, NOBODY) == set()
    assert kinds_of("n1", REPORT, route, NOBODY) == {Sender.NAMED}


def test_a_refusal_says_who_may_send_it() -> None:
    assert refusal("pm2", DomainEventNote("pm1", EVENT), TABLE[DomainEventNote], NOW) == (
        "DomainEventNote from pm2 (it names 'pm1'): only a pool host and the member the "
        "message names may send it")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    async def __call__(self, peer: str, msg: Any) -> Any:
        self.seen.append((peer, msg))
        return "reply"


async def test_deliver_routes_by_type_and_drops_what_an_enforced_row_refuses() -> None:
    reports, commands = Recorder(), Recorder()
    handlers = {Duty.NODE_REPORT: reports, Duty.HOST_COMMAND: commands}
    assert await deliver("n1", REPORT, me="pm1", handlers=handlers, now=NOW) == "reply"
    assert await deliver("n2", REPORT, me="pm1", handlers=handlers, now=NOW) is None
    assert reports.seen == [("n1", REPORT)]
    # not enforced yet: a host command from a host that does not lead is still routed
    command = HostCommand(Op.LIST, 3)
    assert await deliver("pm2", command, me="pm1", handlers=handlers, now=NOW) == "reply"
    assert commands.seen == [("pm2", command)]


async def test_deliver_refuses_what_nobody_here_handles() -> None:
    with pytest.raises(PermanentError, match="pm1 has no use for OperatorAnswer"):
        await deliver("pm2", OperatorAnswer(True, "{}"), me="pm1", handlers={}, now=NOW)
    with pytest.raises(PermanentError, match="pm1 has no use for RoleAssignment"):
        await deliver("pm2", RoleAssignment(3, "c", "pm1", "web", "a", "g"), me="pm1",
                      handlers={Duty.NODE_REPORT: Recorder()}, now=NOW)


def test_rules_are_built_from_kinds() -> None:
    assert dispatch.anyone_of(Sender.HOST, Sender.LEADER) == (
        frozenset({Sender.HOST}), frozenset({Sender.LEADER}))
    assert dispatch.all_of(Sender.HOST, Sender.NAMED) == (
        frozenset({Sender.HOST, Sender.NAMED}),)
