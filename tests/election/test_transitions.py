"""Table tests: illegal transitions and bad input raise and change nothing (STYLE.md 5)."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable

import pytest

from cloudd.election.agent import AgentCore
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    Ack,
    Coordinator,
    Election,
    Gossip,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    Ping,
    PingReq,
    WhoLeads,
)
from cloudd.election.states import TRANSITIONS, ElectionRole
from cloudd.errors import LocalProtocolError, RemoteProtocolError

ROSTER = Roster([Member("a", host=True), Member("b", host=True), Member("c"), Member("d")])


def agent(me: str = "b", *, started: bool = True) -> AgentCore:
    core = AgentCore(me, ROSTER, timing=Timing.local(), rng=random.Random(7))
    if started:
        core.start(100.0, persisted_term=4)
    return core


def leader_b() -> AgentCore:
    """Agent b as the leader of term 5 (a is down: b is the top live member)."""
    core = agent("b")
    core.step("a", Ping(1, "b", "", 0, gossip=(Gossip("dead", "a", 0, "c"),)), 100.01)
    t = 100.01
    while core.role is not ElectionRole.LEADER:
        t += 0.01
        out = core.tick(t)
        for peer, msg in out.messages:
            if isinstance(msg, LeaseRequest) and peer == "a":
                core.step("a", LeaseGrant(msg.term, msg.seq, 0.2), t)
        assert t < 102, core.role
    return core


ALL_PAIRS = [(a, b) for a in ElectionRole for b in ElectionRole if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("start", "to"), ALL_PAIRS, ids=[f"{a.value}->{b.value}"
                                                          for a, b in ALL_PAIRS])
def test_every_transition_outside_the_table_raises_and_changes_nothing(start: ElectionRole,
                                                                       to: ElectionRole) -> None:
    core = agent(started=False)
    core.bully.role = start
    before = pickle.dumps(core)
    with pytest.raises(LocalProtocolError, match=f"no transition from {start.value} to "
                                                 f"{to.value}"):
        core.bully._goto(to, "test")
    assert pickle.dumps(core) == before


def test_the_table_reaches_every_role_from_init() -> None:
    seen, todo = {ElectionRole.INIT}, [ElectionRole.INIT]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(ElectionRole)


BAD: list[tuple[str, Callable[[], AgentCore], Callable[[AgentCore], object], type, str]] = [
    ("step before start", lambda: agent(started=False),
     lambda c: c.step("a", WhoLeads(1), 1.0), LocalProtocolError, "not started"),
    ("tick before start", lambda: agent(started=False),
     lambda c: c.tick(1.0), LocalProtocolError, "not started"),
    ("start twice", agent, lambda c: c.start(101.0), LocalProtocolError, "already started"),
    ("time runs backwards", agent, lambda c: c.tick(99.0), LocalProtocolError, "backwards"),
    ("unknown sender", agent, lambda c: c.step("zz", WhoLeads(1), 100.1),
     RemoteProtocolError, "non-member 'zz'"),
    ("message from itself", agent, lambda c: c.step("b", WhoLeads(1), 100.1),
     RemoteProtocolError, "non-member 'b'"),
    ("not a message", agent, lambda c: c.step("a", "hello", 100.1),  # type: ignore[arg-type]
     RemoteProtocolError, "non-message"),
    ("gossip is not a message", agent,
     lambda c: c.step("a", Gossip("alive", "a", 1, "a"), 100.1),  # type: ignore[arg-type]
     RemoteProtocolError, "non-message"),
    ("ping meant for another", agent, lambda c: c.step("a", Ping(1, "c", "", 0), 100.1),
     RemoteProtocolError, "meant for c"),
    ("ping-req to probe the sender", agent, lambda c: c.step("a", PingReq(1, "a"), 100.1),
     RemoteProtocolError, "to probe a"),
    ("gossip about a stranger", agent,
     lambda c: c.step("a", Ping(1, "b", "", 0, gossip=(Gossip("dead", "zz", 1, "a"),)), 100.1),
     RemoteProtocolError, "invalid fact"),
    ("probe header names a stranger", agent,
     lambda c: c.step("a", Ack(1, "a", "zz", 3), 100.1), RemoteProtocolError, "'zz'"),
    ("negative term", agent, lambda c: c.step("c", Coordinator(-1), 100.1),
     RemoteProtocolError, "negative term"),
    ("election from a higher member", agent, lambda c: c.step("a", Election(1), 100.1),
     RemoteProtocolError, "election to lower"),
    ("lease request to a non-host", lambda: agent("c"),
     lambda c: c.step("a", LeaseRequest(9, 1), 100.1), RemoteProtocolError, "non-host c"),
    ("lease release at a non-host", lambda: agent("c"),
     lambda c: c.step("a", LeaseRelease(9), 100.1), RemoteProtocolError, "non-host c"),
    ("gossip in the name of a stranger", agent,
     lambda c: c.step("a", Ping(1, "b", "", 0, gossip=(Gossip("dead", "c", 1, "zz"),)), 100.1),
     RemoteProtocolError, "invalid fact"),
    ("a rival claims the term we lead", leader_b,
     lambda c: c.step("a", Coordinator(c.term), 103.0), RemoteProtocolError, "which we lead"),
    ("unreachable stranger", agent, lambda c: c.peer_unreachable("zz", 100.1),
     LocalProtocolError, "not a peer"),
]


@pytest.mark.parametrize(("name", "make", "call", "error", "match"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_input_raises_one_precise_error_and_changes_nothing(
        name: str, make: Callable[[], AgentCore], call: Callable[[AgentCore], object],
        error: type, match: str) -> None:
    core = make()
    before = pickle.dumps(core)
    with pytest.raises(error, match=match):
        call(core)
    assert pickle.dumps(core) == before, f"{name}: state changed"


def test_negative_persisted_term_is_refused() -> None:
    core = agent(started=False)
    with pytest.raises(LocalProtocolError, match="persisted term must be >= 0"):
        core.start(1.0, persisted_term=-1)
    assert core.role is ElectionRole.INIT


def test_stranger_agent_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="'zz' is not a member"):
        AgentCore("zz", ROSTER, rng=random.Random(1))
