"""Who may say what: every election message from the wrong kind of member is refused, changes
nothing, and comes back as a `Refusal` naming the sender, the term it claimed and why."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable

import pytest

from cloudd.election.agent import AgentCore
from cloudd.election.authority import RULES, Refusal
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    MESSAGE_TYPES,
    Ack,
    Answer,
    Coordinator,
    Election,
    Gossip,
    LeaderIs,
    LeaseGrant,
    LeaseReject,
    LeaseRelease,
    LeaseRequest,
    Message,
    Ping,
    PingReq,
    Resign,
    WhoLeads,
)
from cloudd.election.states import ElectionRole

# a and b are pool hosts; c and d are nodes (c is listed first, so c outranks d).
ROSTER = Roster([Member("a", host=True), Member("b", host=True), Member("c"), Member("d")])
T0 = 100.0
BIG = 2**60


def follower(me: str) -> AgentCore:
    """`me` following host a as the leader of term 5."""
    core = AgentCore(me, ROSTER, timing=Timing.local(), rng=random.Random(7))
    core.start(T0, persisted_term=4)
    core.step("a", Coordinator(5), T0 + 0.01)
    assert core.leader == "a" and core.term == 5 and core.role is ElectionRole.FOLLOWER
    return core


def awaiting(me: str) -> AgentCore:
    """`me` knowing no leader (nobody answered who leads)."""
    core = AgentCore(me, ROSTER, timing=Timing.local(), rng=random.Random(7))
    core.start(T0, persisted_term=4)
    core.tick(T0 + Timing.local().inquiry_timeout)
    assert core.leader == ""
    return core


# (case, receiver, sender, message, words of the reason)
REFUSED: list[tuple[str, Callable[[], AgentCore], str, Message, str]] = [
    ("a node claims a higher term", lambda: follower("b"), "c", Coordinator(10),
     "c is not a pool host: it may not lead"),
    ("a node claims leadership to a leaderless host", lambda: awaiting("b"), "c",
     Coordinator(BIG), "may not lead"),
    ("a node claims leadership to a node", lambda: follower("d"), "c", Coordinator(6),
     "may not lead"),
    ("a node takes over an election", lambda: awaiting("d"), "c", Answer(9),
     "may not take over an election"),
    ("a lower host takes over an election", lambda: awaiting("a"), "b", Answer(9),
     "b does not outrank a"),
    ("an election at a node", lambda: awaiting("c"), "d", Election(5),
     "c is not a pool host: it does not stand for election"),
    ("a host named as leader of a node", lambda: awaiting("b"), "a", LeaderIs("c", 9),
     "names c as leader, which is not a pool host"),
    ("a node's word about a higher term", lambda: follower("b"), "c", LeaderIs("a", BIG),
     "its word names no leader and raises no term"),
    ("a node's word about another leader", lambda: awaiting("b"), "d", LeaderIs("a", 5),
     "its word names no leader"),
    ("a node resigns", lambda: follower("b"), "c", Resign(5), "leads nothing to resign"),
    ("a node releases a lease", lambda: follower("b"), "c", LeaseRelease(5),
     "holds no lease"),
    ("a node grants a lease", lambda: follower("b"), "c", LeaseGrant(6, 1, 0.2),
     "only pool hosts grant"),
    ("a node rejects a lease", lambda: follower("b"), "d",
     LeaseReject(1, BIG, "d", "d", 9.0, "mine"), "only pool hosts grant"),
]


def election_state(core: AgentCore) -> bytes:
    """Everything but the clock reading of the last call."""
    saved = core._now
    core._now = 0.0
    try:
        return pickle.dumps(core)
    finally:
        core._now = saved


@pytest.mark.parametrize(("case", "make", "sender", "msg", "words"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_a_message_from_the_wrong_kind_of_member_is_refused_and_changes_nothing(
        case: str, make: Callable[[], AgentCore], sender: str, msg: Message,
        words: str) -> None:
    core = make()
    before = election_state(core)
    out = core.step(sender, msg, core._now + 0.001)
    assert len(out.refused) == 1, out.refused
    (refusal,) = out.refused
    assert refusal.peer == sender and refusal.term == getattr(msg, "term", 0)
    assert words in refusal.reason
    assert out.messages == () and out.persist_term is None
    assert election_state(core) == before


def test_a_nodes_lease_request_is_answered_no_and_binds_nothing() -> None:
    host = follower("b")
    grantor = host.bully.grantor
    assert grantor is not None
    before = election_state(host)
    out = host.step("c", LeaseRequest(term=BIG, seq=3), T0 + 1.0)
    assert [r.peer for r in out.refused] == ["c"] and "pool hosts only" in out.refused[0].reason
    ((peer, answer),) = out.messages
    assert peer == "c" and isinstance(answer, LeaseReject) and answer.seq == 3
    assert out.persist_term is None and host.bully.persisted == 5 and host.bully.fence < BIG
    assert not host.holds_lease("c", BIG, T0 + 1.0)
    assert election_state(host) == before


def test_a_probe_with_a_bad_header_is_still_a_probe() -> None:
    core = follower("b")
    out = core.step("c", Ping(1, "b", "d", BIG), T0 + 0.02)
    assert [(r.peer, r.term) for r in out.refused] == [("c", BIG)]
    assert "names d as leader" in out.refused[0].reason
    assert [type(m) for _, m in out.messages] == [Ack]  # liveness is everybody's business
    assert core.leader == "a" and core.term == 5


def test_a_nodes_probe_header_teaches_nothing_and_is_not_logged() -> None:
    core = follower("b")
    out = core.step("c", Ack(1, "c", "a", BIG), T0 + 0.02)
    assert out.refused == () and out.persist_term is None
    assert core.leader == "a" and core.term == 5 and core.bully.persisted == 5


def test_a_hosts_probe_header_still_teaches_a_term() -> None:
    core = follower("d")
    core.step("b", Ack(1, "b", "b", 7), T0 + 0.02)
    assert core.leader == "b" and core.term == 7


@pytest.mark.parametrize("msg", [WhoLeads(3), Election(5), LeaderIs("a", 5),
                                 Ping(1, "b", "a", 5), PingReq(1, "a")],
                         ids=["who-leads", "election", "leader-is", "ping", "ping-req"])
def test_what_a_node_may_send_a_host_is_not_refused(msg: Message) -> None:
    core = follower("b")
    out = core.step("d", msg, T0 + 0.02)
    assert out.refused == ()


def test_every_election_message_has_a_rule_or_is_anyones() -> None:
    anyones = {WhoLeads, Ping, PingReq, Gossip}
    assert set(MESSAGE_TYPES.values()) == set(RULES) | anyones
    assert Refusal("c", 1, "why") == Refusal("c", 1, "why")
