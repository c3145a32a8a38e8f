"""The dispatch table: one row per message type (or case), who may send each, what a sender
is here, the refusals' sentences, routing, and the table as documentation. Pure: the table
run through real members is `test_authorization.py`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.daemon.member import dispatch
from cloudd.daemon.member.dispatch import (
    NO_ROSTER,
    ROUTES,
    Duty,
    InForce,
    Sender,
    To,
    deliver,
    describe,
    kinds_of,
    newer_leader_term,
    refusal,
    render,
    route_of,
    seed_refusal,
    standing,
)
from cloudd.daemon.network.catalogue import (
    OWN,
    DomainEventNote,
    InspectAnswer,
    InspectWanted,
    ManifestOffer,
    NodeActed,
    NodeAction,
    NodePhase,
    NodeReport,
    OfferOrigin,
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    Record,
    RecordAck,
    RecordHeld,
    RecordPush,
    RecordWanted,
    RoleAssignment,
    Version,
)
from cloudd.election import messages as em
from cloudd.errors import PermanentError, TemporaryError
from cloudd.pki import Identity, MemberKind
from cloudd.vmctl.backend import DomainEvent, DomainEventKind
from cloudd.vmctl.hostagent import HostCommand, HostResult, Op

H, N, OP = MemberKind.HOST, MemberKind.NODE, MemberKind.OPERATOR

#: Messages that only ever travel as replies to a request: no route takes them.
REPLIES = {HostResult, InspectAnswer, NodeActed, OperatorAnswer, RecordAck, RecordHeld}

#: A host pm1 of cloud c, following pm2 in term 5.
HERE = InForce(cloud="c", hosts=frozenset({"pm1", "pm2", "pm3"}),
               nodes=frozenset({"n1", "n2"}), leader="pm2", term=5, me=H)
NODE_HERE = dataclasses.replace(HERE, me=N)

EVENT = DomainEvent(kind=DomainEventKind.STOPPED, domain="c-n1", meta=None, detail="crashed",
                    at=0.0)
DOCS = Path(__file__).resolve().parents[3] / "docs" / "dispatch.md"


def test_every_message_that_is_not_a_reply_has_its_rows() -> None:
    # a Gossip travels only inside probes: registered with the codec, routed never
    sent = (set(em.MESSAGE_TYPES.values()) | set(OWN.values())) - REPLIES - {em.Gossip}
    assert {r.message for r in ROUTES} == sent
    plain = [r.message for r in ROUTES if r.case is None]
    assert len(plain) == len(set(plain))  # a type without cases has one row


@pytest.mark.parametrize(("cls", "field", "values", "unrouted"), [
    (OperatorRequest, "op", list(OperatorOp), set()),
    # an origin of "operator" is a name nobody sends: no agent takes it
    (ManifestOffer, "origin", list(OfferOrigin), {OfferOrigin.OPERATOR}),
])
def test_each_case_has_exactly_one_row(cls: type, field: str, values: list[Any],
                                       unrouted: set[Any]) -> None:
    rows = [r for r in ROUTES if r.message is cls]
    assert all(r.case is not None and r.case[0] == field for r in rows)
    for value in values:
        taking = [r for r in rows if r.case is not None and value in r.case[1]]
        assert len(taking) == (0 if value in unrouted else 1), value


def test_every_duty_is_somebodys_and_every_row_names_senders() -> None:
    assert {r.duty for r in ROUTES} == set(Duty)
    assert all(r.senders and all(r.senders) for r in ROUTES)
    assert all(r.names is None or r.names in {f.name for f in dataclasses.fields(r.message)}
               for r in ROUTES)
    assert {r.message for r in ROUTES if r.request} == {
        HostCommand, dispatch.ManifestWanted, InspectWanted, NodeAction, OperatorRequest,
        RecordPush, RecordWanted}


def test_the_operators_certificate_may_apply_inspect_and_read_the_history_only() -> None:
    """An operator's machine may hand a manifest over, inspect, list the generations and roll
    back to one (what it could apply anyway); it never reads a generation's text (`diff`:
    pool hosts only, the texts hold secrets) and never writes the record itself."""
    taking = {(r.message, r.case) for r in ROUTES
              if any(Sender.OPERATOR in alternative for alternative in r.senders)}
    assert taking == {(InspectWanted, None), (OperatorRequest, ("op", (OperatorOp.APPLY,))),
                      (OperatorRequest, ("op", (OperatorOp.HISTORY, OperatorOp.ROLLBACK)))}


def test_only_the_leader_of_the_term_followed_has_a_nodes_role_act() -> None:
    [row] = [r for r in ROUTES if r.message is NodeAction]
    assert row.senders == (frozenset({Sender.LEADER}),) and row.to is dispatch.To.NODE
    assert row.request
    leader = Identity("pm2", H)
    assert refusal(leader, NodeAction("c", 5, "drain", (("node", "n2"),)), row,
                   NODE_HERE) is None


def test_only_the_leader_of_the_term_followed_writes_or_gathers_the_record() -> None:
    for cls in (RecordPush, RecordWanted):
        [row] = [r for r in ROUTES if r.message is cls]
        assert row.senders == (frozenset({Sender.LEADER}),) and row.to is dispatch.To.HOST


@pytest.mark.parametrize(("who", "here", "kinds"), [
    (Identity("pm3", H), HERE, {Sender.HOST, Sender.HOST_CERT}),
    (Identity("pm2", H), HERE, {Sender.HOST, Sender.HOST_CERT, Sender.LEADER}),
    (Identity("pm9", H), HERE, {Sender.HOST_CERT}),  # a host of no roster here
    (Identity("n1", N, "c"), HERE, {Sender.NODE}),
    (Identity("n1", N, "other"), HERE, set()),  # a node name, another cloud's certificate
    (Identity("pm3", N, "c"), HERE, set()),  # a node certificate with a host's name
    (Identity("n1", H), HERE, {Sender.HOST_CERT}),  # a host certificate with a node's name
    (Identity("laptop", OP), HERE, {Sender.OPERATOR}),
    (Identity("pm1", OP), HERE, {Sender.OPERATOR}),  # in no roster, whatever its name
    (Identity("pm2", N, "c"), HERE, set()),  # the leader's name on a node certificate
    # only pool hosts lead: a node certificate never speaks as leader, even if the election
    # here were ever to follow its name
    (Identity("n1", N, "c"), dataclasses.replace(HERE, leader="n1"), {Sender.NODE}),
    (Identity("pm2", H), NO_ROSTER, {Sender.HOST_CERT}),
    (Identity("n1", N, "c"), NO_ROSTER, set()),
])
def test_what_a_certificate_makes_a_sender_here(who: Identity, here: InForce,
                                                kinds: set[Sender]) -> None:
    assert standing(who, here) == kinds


def test_a_leader_speaks_as_leader_only_in_the_term_it_is_followed_in() -> None:
    route = route_of(RoleAssignment(5, "c", "n1", "web", "a", "g"))
    assert route is not None
    leader = Identity("pm2", H)
    for term, leads in ((5, True), (4, False), (6, False)):
        a = RoleAssignment(term, "c", "n1", "web", "a", "g")
        assert (Sender.LEADER in kinds_of(leader, a, route, HERE)) is leads
    # a message without a term (cleanup-service) speaks for the leader followed now
    request = OperatorRequest(OperatorOp.CLEANUP_SERVICE, "c", "{}")
    service = route_of(request)
    assert service is not None and Sender.LEADER in kinds_of(leader, request, service, HERE)


@pytest.mark.parametrize(("who", "here", "text"), [
    (Identity("laptop", OP), HERE, "an operator certificate"),
    (Identity("pm9", H), HERE, "a host certificate, not in the roster of c"),
    (Identity("pm9", H), NO_ROSTER, "a host certificate, and this agent has no roster yet"),
    (Identity("pm3", N, "c"), HERE,
     "a node certificate of cloud c, but the roster of c lists pm3 as a pool host"),
    (Identity("n1", H), HERE, "a host certificate, but the roster of c lists n1 as a node"),
    (Identity("n1", N, "other"), HERE, "a node certificate of cloud other, not of c"),
    (Identity("n1", N, "c"), HERE, "a node of c"),
    (Identity("pm3", H), HERE, "a pool host of c"),
    (Identity("pm2", H), HERE, "a pool host of c and its leader in term 5"),
    (Identity("n1", N, "c"), dataclasses.replace(HERE, leader="n1"), "a node of c"),
])
def test_a_refusal_says_what_the_sender_is_here(who: Identity, here: InForce,
                                                text: str) -> None:
    assert describe(who, here) == text


@pytest.mark.parametrize(("who", "msg", "here", "reason"), [
    (Identity("pm3", H), DomainEventNote("pm1", EVENT), HERE,
     "DomainEventNote from pm3 (a pool host of c): only a pool host and the member the "
     "message names (`host`) may send it"),
    (Identity("n1", N, "c"), HostCommand(Op.LIST, 5), HERE,
     "HostCommand from n1 (a node of c): only the leader of the current term may send it, "
     "and this agent follows pm2 in term 5"),
    (Identity("pm2", H), HostCommand(Op.LIST, 2**60), HERE,
     f"HostCommand from pm2 (a pool host of c and its leader in term 5): only the leader of "
     f"the current term may send it, and it leads term 5, not {2**60}"),
    (Identity("pm2", H), RoleAssignment(5, "c", "pm1", "web", "a", "g"), HERE,
     "RoleAssignment from pm2 (a pool host of c and its leader in term 5): only the leader "
     "of the current term may send it to a node, and this agent is a pool host of c"),
    (Identity("n1", N, "c"), OperatorRequest(OperatorOp.MAINTENANCE, "c", "{}"), HERE,
     "OperatorRequest (op stop, cleanup, maintenance, plan) from n1 (a node of c): only a "
     "pool host may send it"),
    (Identity("pm2", H), ManifestOffer("c", "d", "t", OfferOrigin.SEED), HERE,
     "ManifestOffer (origin seed) from pm2 (a pool host of c and its leader in term 5): "
     "only a host certificate may send it to an agent with no cloud yet, and this agent is "
     "a pool host of c"),
    (Identity("laptop", OP), OperatorRequest(OperatorOp.APPLY, "c", "{}"), NO_ROSTER,
     "OperatorRequest (op apply) from laptop (an operator certificate): only a pool host or "
     "an operator certificate may send it to a pool host, and this agent is an agent with "
     "no cloud yet"),
    (Identity("n1", N, "c"), HostCommand(Op.LIST, 5), dataclasses.replace(HERE, leader="n1"),
     "HostCommand from n1 (a node of c): only the leader of the current term may send it, "
     "and this agent follows n1 in term 5"),
    # The record holds every generation's secrets: a node never writes or gathers it, not
    # even one the election here were ever to follow, and an operator's machine neither.
    (Identity("n1", N, "c"), RecordPush(5, Record("c", Version(5, 1))), HERE,
     "RecordPush from n1 (a node of c): only the leader of the current term may send it, "
     "and this agent follows pm2 in term 5"),
    (Identity("n1", N, "c"), RecordWanted("c", 5), dataclasses.replace(HERE, leader="n1"),
     "RecordWanted from n1 (a node of c): only the leader of the current term may send it, "
     "and this agent follows n1 in term 5"),
    (Identity("laptop", OP), RecordWanted("c", 5), HERE,
     "RecordWanted from laptop (an operator certificate): only the leader of the current "
     "term may send it, and this agent follows pm2 in term 5"),
    (Identity("pm2", H), RecordPush(5, Record("c", Version(5, 1))), NODE_HERE,
     "RecordPush from pm2 (a pool host of c and its leader in term 5): only the leader of "
     "the current term may send it to a pool host, and this agent is a node of c"),
    (Identity("n1", N, "c"), OperatorRequest(OperatorOp.DIFF, "c", "{}"), HERE,
     "OperatorRequest (op diff) from n1 (a node of c): only a pool host may send it"),
    (Identity("laptop", OP), OperatorRequest(OperatorOp.DIFF, "c", "{}"), HERE,
     "OperatorRequest (op diff) from laptop (an operator certificate): only a pool host may "
     "send it"),
    (Identity("n1", N, "c"), OperatorRequest(OperatorOp.ROLLBACK, "c", "{}"), HERE,
     "OperatorRequest (op history, rollback) from n1 (a node of c): only a pool host or an "
     "operator certificate may send it"),
    # A node's role acts for the leader of the term it follows only: not for another node
    # (even one its election were ever to follow), another pool host, an operator, a
    # deposed or a future leader; and only a node takes it.
    (Identity("n2", N, "c"), NodeAction("c", 5, "drain"), NODE_HERE,
     "NodeAction from n2 (a node of c): only the leader of the current term may send it, "
     "and this agent follows pm2 in term 5"),
    (Identity("n2", N, "c"), NodeAction("c", 5, "drain"),
     dataclasses.replace(NODE_HERE, leader="n2"),
     "NodeAction from n2 (a node of c): only the leader of the current term may send it, "
     "and this agent follows n2 in term 5"),
    (Identity("pm3", H), NodeAction("c", 5, "drain"), NODE_HERE,
     "NodeAction from pm3 (a pool host of c): only the leader of the current term may send "
     "it, and this agent follows pm2 in term 5"),
    (Identity("laptop", OP), NodeAction("c", 5, "drain"), NODE_HERE,
     "NodeAction from laptop (an operator certificate): only the leader of the current term "
     "may send it, and this agent follows pm2 in term 5"),
    (Identity("pm2", H), NodeAction("c", 4, "drain"), NODE_HERE,
     "NodeAction from pm2 (a pool host of c and its leader in term 5): only the leader of "
     "the current term may send it, and it leads term 5, not 4"),
    (Identity("pm2", H), NodeAction("c", 5, "drain"), HERE,
     "NodeAction from pm2 (a pool host of c and its leader in term 5): only the leader of "
     "the current term may send it to a node, and this agent is a pool host of c"),
    (Identity("pm2", H), em.Ping(1, "pm1", "", 0), InForce(me=N),
     "Ping from pm2 (a host certificate, and this agent has no roster yet): only a pool "
     "host or a node of this cloud may send it"),
])
def test_a_refusal_is_one_sentence_naming_sender_and_reason(who: Identity, msg: object,
                                                            here: InForce,
                                                            reason: str) -> None:
    route = route_of(msg)
    assert route is not None
    assert refusal(who, msg, route, here) == reason


@pytest.mark.parametrize(("who", "msg", "asks"), [
    (Identity("pm3", H), RoleAssignment(7, "c", "n1", "web", "a", "g"), 7),
    (Identity("pm2", H), ManifestOffer("c", "d", "t", OfferOrigin.LEADER, 6), 6),
    (Identity("pm3", H), HostCommand(Op.LIST, 9), 9),
    (Identity("n2", N, "c"), HostCommand(Op.LIST, 9), None),  # a node never leads
    (Identity("pm3", H), RoleAssignment(5, "c", "n1", "web", "a", "g"), None),  # not newer
    (Identity("pm3", H), RoleAssignment(4, "c", "n1", "web", "a", "g"), None),  # deposed
    (Identity("pm9", H), RoleAssignment(7, "c", "n1", "web", "a", "g"), None),  # stranger
    (Identity("n1", N, "other"), RoleAssignment(7, "c", "n1", "web", "a", "g"), None),
    (Identity("laptop", OP), ManifestOffer("c", "d", "t", OfferOrigin.LEADER, 9), None),
    (Identity("pm3", H), em.Coordinator(9), None),  # the election's own business
])
def test_a_newer_leaders_term_is_worth_asking_about(who: Identity, msg: object,
                                                    asks: int | None) -> None:
    route = route_of(msg)
    assert route is not None
    assert newer_leader_term(who, msg, route, NODE_HERE) == asks


@pytest.mark.parametrize(("peer", "me", "reason"), [
    ("pm2", Identity("pm1", H), None),
    ("pm2", Identity("n1", N, "c"), None),
    ("pm9", Identity("pm1", H), "the manifest does not list pm9 as a pool host"),
    ("pm2", Identity("n1", H),
     "the manifest does not list this agent (n1, a host certificate) as one"),
    ("pm2", Identity("pm1", N, "c"),
     "the manifest does not list this agent (pm1, a node certificate of cloud c) as one"),
    ("pm2", Identity("n1", N, "other"),
     "the manifest does not list this agent (n1, a node certificate of cloud other) as one"),
    ("pm2", Identity("pm7", H),
     "the manifest does not list this agent (pm7, a host certificate) as one"),
    ("pm2", None, "this agent does not know its own certificate yet"),
])
def test_a_seed_names_its_sender_as_a_host_and_this_agent_as_what_it_is(
        peer: str, me: Identity | None, reason: str | None) -> None:
    got = seed_refusal(peer, me=me, cloud="c", hosts={"pm1", "pm2"}, nodes={"n1"})
    assert got == (None if reason is None else
                   f"ManifestOffer (origin seed) of c from {peer}: {reason}")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    async def __call__(self, peer: str, msg: Any) -> Any:
        self.seen.append((peer, msg))
        return "reply"


REPORT = NodeReport(node="n1", term=3, generation="g", phase=NodePhase.READY)


async def test_deliver_routes_and_refuses_what_its_row_does_not_take() -> None:
    reports, commands = Recorder(), Recorder()
    handlers = {Duty.NODE_REPORT: reports, Duty.HOST_COMMAND: commands}
    told: list[tuple[str, object]] = []
    with capture_logs() as logs:
        n1, n2 = Identity("n1", N, "c"), Identity("n2", N, "c")
        assert await deliver(n1, REPORT, me="pm1", handlers=handlers, here=HERE) == "reply"
        # a one-way message is dropped; the caller hears of it
        assert await deliver(n2, REPORT, me="pm1", handlers=handlers, here=HERE,
                             refused=lambda s, m, r: told.append((s.name, m))) is None
        # a request is answered with the reason
        with pytest.raises(PermanentError, match="only the leader of the current term"):
            await deliver(Identity("pm3", H), HostCommand(Op.LIST, 5), me="pm1",
                          handlers=handlers, here=HERE)
    assert reports.seen == [("n1", REPORT)] and commands.seen == []
    assert told == [("n2", REPORT)]
    assert [(e["event"], e["peer"], e["cloud"]) for e in logs] == [
        ("message_refused", "n2", "c"), ("message_refused", "pm3", "c")]
    assert logs[0]["reason"].startswith("NodeReport from n2 (a node of c): only a node of "
                                        "this cloud and the member the message names")


async def test_a_request_in_a_newer_leaders_term_is_to_be_retried_not_given_up() -> None:
    """pm3 may have just won term 6 and this host not heard yet: "try again shortly" (the
    host asks the pool hosts meanwhile); a term this host has seen pass stays refused."""
    commands = Recorder()
    handlers = {Duty.HOST_COMMAND: commands}
    pm3 = Identity("pm3", H)
    with pytest.raises(TemporaryError, match="asking the pool hosts who leads") as caught:
        await deliver(pm3, HostCommand(Op.LIST, 6), me="pm1", handlers=handlers, here=HERE)
    assert caught.value.delay == dispatch.RETRY_NEWER
    with pytest.raises(PermanentError):
        await deliver(pm3, HostCommand(Op.LIST, 4), me="pm1", handlers=handlers, here=HERE)
    with pytest.raises(PermanentError):  # a node never leads: nothing to ask about
        await deliver(Identity("n1", N, "c"), HostCommand(Op.LIST, 6), me="pm1",
                      handlers=handlers, here=HERE)
    assert commands.seen == []


async def test_deliver_refuses_what_nobody_here_handles() -> None:
    pm2 = Identity("pm2", H)
    with pytest.raises(PermanentError, match="pm1 has no use for OperatorAnswer"):
        await deliver(pm2, OperatorAnswer(True, "{}"), me="pm1", handlers={}, here=HERE)
    with pytest.raises(PermanentError, match="pm1 has no use for RoleAssignment"):
        await deliver(pm2, RoleAssignment(5, "c", "pm1", "web", "a", "g"), me="pm1",
                      handlers={Duty.NODE_REPORT: Recorder()}, here=HERE)
    with pytest.raises(PermanentError, match="pm1 has no use for ManifestOffer"):
        await deliver(pm2, ManifestOffer("c", "d", "t", OfferOrigin.OPERATOR, 5), me="pm1",
                      handlers={Duty.MANIFEST_OFFER: Recorder()}, here=HERE)
    # a Gossip alone (it travels only inside probes) is nobody's message either; every such
    # refusal is logged with the sender, like the table's own
    with capture_logs() as logs, pytest.raises(PermanentError, match="no use for Gossip"):
        await deliver(Identity("n1", MemberKind.NODE, "c"), em.Gossip("dead", "pm2", 9, "n1"),
                      me="pm1", handlers={Duty.ELECTION: Recorder()}, here=HERE)
    assert [(e["event"], e["peer"]) for e in logs] == [("message_refused", "n1")]


def test_rules_are_built_from_kinds() -> None:
    assert dispatch.anyone_of(Sender.HOST, Sender.LEADER) == (
        frozenset({Sender.HOST}), frozenset({Sender.LEADER}))
    assert dispatch.all_of(Sender.HOST, Sender.NAMED) == (
        frozenset({Sender.HOST, Sender.NAMED}),)
    assert {r.to for r in ROUTES} == set(To)


def test_the_documentation_is_the_table() -> None:
    """Regenerate with `python -m cloudd.daemon.member.dispatch > docs/dispatch.md`."""
    text = render()
    assert DOCS.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(ROUTES)
    assert all(meaning in text for meaning in dispatch.MEANING.values())
