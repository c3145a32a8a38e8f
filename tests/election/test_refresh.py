"""A leader fenced out of a host re-establishes itself under a higher term (a refresh), and
the hosts that grant that refresh are not counted against it.

Found by the no-churn property (test_properties.py): the top member came back with a
persisted term above the leader's (terms it had proposed alone, before the leader won), so
it refused the leader's renewals; the leader asked every host for a higher term, and a
host that had granted that refresh then refused the leader's older term with the refresh's
own term. Counted as a second fenced host, that refusal made the leader step down, and the
term moved by a new election instead of by the refresh. A host now names the candidate
that holds its highest term when it refuses that candidate's older one, and the leader
counts only hosts fenced by somebody else.
"""

from __future__ import annotations

import random

from cloudd.election.agent import AgentCore, Output
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    Coordinator,
    LeaseGrant,
    LeaseReject,
    LeaseRequest,
    Message,
    Resign,
)
from cloudd.election.states import ElectionRole

#: Four pool hosts: a majority is three, so one fenced host is all a leader can spare.
ROSTER = Roster([Member(n, host=True) for n in "abcd"])
TIMING = Timing.local()
T0 = 100.0


def sent(out: Output, kind: type) -> list[tuple[str, Message]]:
    return [(p, m) for p, m in out.messages if isinstance(m, kind)]


def leader_a() -> tuple[AgentCore, float]:
    """Agent a as the leader of term 2, every host granting; and the time."""
    core = AgentCore("a", ROSTER, timing=TIMING, rng=random.Random(5))
    core.start(T0, persisted_term=1)
    t = T0
    while core.role is not ElectionRole.LEADER:
        t += 0.01
        for peer, msg in sent(core.tick(t), LeaseRequest):
            assert isinstance(msg, LeaseRequest)
            core.step(peer, LeaseGrant(msg.term, msg.seq, TIMING.lease_duration), t)
        assert t < T0 + 2, core.role
    assert core.term == 2
    return core, t


def renewals(core: AgentCore, t: float) -> tuple[float, dict[tuple[str, int], LeaseRequest]]:
    """Tick the leader until it renews; its requests by (host, term)."""
    while True:
        t += 0.005
        asks = sent(core.tick(t), LeaseRequest)
        if asks:
            return t, {(p, m.term): m for p, m in asks if isinstance(m, LeaseRequest)}


def fenced_by_a_restarted_host(core: AgentCore, t: float) -> tuple[float, LeaseRequest]:
    """Host d, back with persisted term 7, refuses the leader's renewal: the leader asks
    every host for term 8 (its refresh), still acting on its term-2 leases."""
    t, asks = renewals(core, t)
    out = core.step("d", LeaseReject(seq=asks["d", 2].seq, term=7, leader="", holder="",
                                     remaining=0.15, reason="restarted, waiting out leases"), t)
    refresh = {p: m for p, m in sent(out, LeaseRequest) if isinstance(m, LeaseRequest)}
    assert sorted(refresh) == ["b", "c", "d"] and {m.term for m in refresh.values()} == {8}
    assert out.persist_term == 8 and core.role is ElectionRole.LEADER and out.acting
    return t, refresh["b"]


def test_a_host_bound_to_the_leaders_refresh_is_not_counted_as_fenced() -> None:
    core, t = leader_a()
    t, refresh = fenced_by_a_restarted_host(core, t)
    # b granted the refresh (term 8) before the leader's next renewal of term 2 reached it,
    # and refuses that one naming the leader itself as the holder of term 8.
    t, asks = renewals(core, t)
    out = core.step("b", LeaseReject(seq=asks["b", 2].seq, term=8, leader="a", holder="",
                                     remaining=0.0, reason="term 2 is below 8"), t)
    assert core.role is ElectionRole.LEADER and out.acting
    assert not sent(out, Resign)
    assert not sent(out, LeaseRequest), "the refresh was given up for a higher term"
    for host in ("b", "c"):
        out = core.step(host, LeaseGrant(8, refresh.seq, TIMING.lease_duration), t)
    assert core.role is ElectionRole.LEADER and core.term == 8 and out.acting
    assert sorted(p for p, _ in sent(out, Coordinator)) == ["b", "c", "d"]
    assert any(e.reason == "re-established under a higher term" for e in out.events)


def test_a_host_fenced_by_somebody_else_still_counts() -> None:
    """The same refusal naming nobody: term 8 is somebody else's at b, and with d that is
    one host more than a majority of four can spare: the leader steps down at once."""
    core, t = leader_a()
    t, _ = fenced_by_a_restarted_host(core, t)
    t, asks = renewals(core, t)
    out = core.step("b", LeaseReject(seq=asks["b", 2].seq, term=8, leader="", holder="",
                                     remaining=0.0, reason="term 2 is below 8"), t)
    assert core.role is ElectionRole.AWAITING
    assert sorted(p for p, _ in sent(out, Resign)) == ["b", "c", "d"]


def follower_b() -> tuple[AgentCore, float]:
    """Host b following leader a in term 2, its lease granted to a."""
    core = AgentCore("b", ROSTER, timing=TIMING, rng=random.Random(6))
    core.start(T0, persisted_term=1)
    t = T0 + TIMING.lease_duration + 0.01  # its restart's lease waited out
    core.step("a", Coordinator(2), t)
    out = core.step("a", LeaseRequest(term=2, seq=1), t)
    assert sent(out, LeaseGrant) and core.holds_lease("a", 2, t)
    return core, t


def test_a_host_names_the_leader_that_holds_its_highest_term() -> None:
    core, t = follower_b()
    out = core.step("a", LeaseRequest(term=8, seq=1), t + 0.01)  # the leader's refresh
    assert sent(out, LeaseGrant) and core.holds_lease("a", 8, t + 0.01)
    out = core.step("a", LeaseRequest(term=2, seq=2), t + 0.02)
    ((_, reject),) = sent(out, LeaseReject)
    assert isinstance(reject, LeaseReject)
    assert (reject.term, reject.leader, reject.remaining) == (8, "a", 0.0)


def test_a_host_names_nobody_when_another_holds_its_highest_term() -> None:
    core, t = follower_b()
    t += TIMING.lease_duration + 0.01  # a's lease here lapsed: c may take term 8
    out = core.step("c", LeaseRequest(term=8, seq=1), t)
    assert sent(out, LeaseGrant) and core.holds_lease("c", 8, t)
    out = core.step("a", LeaseRequest(term=2, seq=3), t + 0.01)
    ((_, reject),) = sent(out, LeaseReject)
    assert isinstance(reject, LeaseReject)
    assert (reject.term, reject.leader, reject.holder) == (8, "", "c")
