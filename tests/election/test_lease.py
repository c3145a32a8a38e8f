"""The lease rules, as a decision table for the host side and arithmetic for the leader."""

from __future__ import annotations

import pytest

from cloudd.election.config import Timing
from cloudd.election.lease import Grantor, Holder
from cloudd.election.messages import LeaseGrant, LeaseReject, LeaseRequest

T = Timing.production()


def bound(holder: str, term: int, expires: float) -> Grantor:
    return Grantor(duration=T.lease_duration, holder=holder, holder_term=term, expires=expires)


# (case, grantor, candidate, request term, host's fence term, leader it knows, granted?, why)
TABLE = [
    ("free host, new term", bound("", -1, 0.0), "x", 5, 4, "", True, ""),
    ("below the fence", bound("", -1, 0.0), "x", 3, 4, "", False, "below 4"),
    ("fence term led by another", bound("", -1, 0.0), "x", 4, 4, "y", False, "taken by y"),
    ("fence term, leader unknown", bound("", -1, 0.0), "x", 4, 4, "", False, "taken"),
    ("fence term led by the asker", bound("", -1, 0.0), "x", 4, 4, "x", True, ""),
    ("renewal by the holder", bound("x", 4, 10.05), "x", 4, 4, "", True, ""),
    ("holder's lease unexpired", bound("y", 4, 10.05), "x", 5, 4, "y", False, "bound to y"),
    ("holder's lease expired", bound("y", 4, 9.99), "x", 5, 4, "y", True, ""),
    ("restarted host waits", Grantor.after_start(9.9, T), "x", 5, 4, "", False, "restarted"),
    ("holder asks a higher term", bound("x", 4, 10.05), "x", 6, 4, "x", True, ""),
]


@pytest.mark.parametrize(("case", "g", "cand", "term", "fence", "leader", "ok", "why"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_grant_decisions(case: str, g: Grantor, cand: str, term: int, fence: int, leader: str,
                         ok: bool, why: str) -> None:
    before = (g.holder, g.holder_term, g.expires)
    answer = g.decide(cand, LeaseRequest(term=term, seq=3), 10.0, term=fence, leader=leader)
    if ok:
        assert answer == LeaseGrant(term=term, seq=3, duration=T.lease_duration)
        assert (g.holder, g.holder_term, g.expires) == (cand, term, 10.0 + T.lease_duration)
    else:
        assert isinstance(answer, LeaseReject) and why in answer.reason
        assert (g.holder, g.holder_term, g.expires) == before  # a refusal changes nothing


def test_reject_tells_how_long_the_holder_stays_bound() -> None:
    g = bound("y", 4, 10.3)
    answer = g.decide("x", LeaseRequest(term=5, seq=1), 10.0, term=4, leader="y")
    assert isinstance(answer, LeaseReject)
    assert answer.holder == "y" and answer.remaining == pytest.approx(0.3)


def test_release_frees_only_the_holders_own_term() -> None:
    g = bound("x", 4, 10.3)
    assert not g.release("y", 4, 10.0) and not g.release("x", 3, 10.0)
    assert g.holder == "x"
    assert g.release("x", 4, 10.0)
    answer = g.decide("z", LeaseRequest(term=5, seq=1), 10.0, term=4, leader="")
    assert isinstance(answer, LeaseGrant)


def test_holds_lease_only_for_the_granted_member_and_term_until_it_expires() -> None:
    g = Grantor(duration=T.lease_duration)
    g.decide("x", LeaseRequest(term=5, seq=1), 10.0, term=4, leader="")
    end = 10.0 + T.lease_duration
    assert g.holds_lease("x", 5, 10.0) and g.holds_lease("x", 5, end - 1e-6)
    assert not g.holds_lease("x", 5, end)  # expired, by this host's clock
    assert not g.holds_lease("x", 4, 10.1) and not g.holds_lease("x", 6, 10.1)
    assert not g.holds_lease("y", 5, 10.1) and not g.holds_lease("", 5, 10.1)
    assert g.release("x", 5, 10.2) and not g.holds_lease("x", 5, 10.2)


def test_a_restarted_host_holds_nobody_bound() -> None:
    g = Grantor.after_start(10.0, T)
    assert not any(g.holds_lease(m, t, 10.1) for m in ("", "x") for t in (-1, 0, 5))


def holder() -> Holder:
    return Holder(term=7, hosts=frozenset({"h1", "h2", "h3"}), quorum=2, timing=T)


def test_quorum_counts_from_the_send_time_minus_the_margin() -> None:
    h = holder()
    req = h.request(50.0)
    h.granted("h1", LeaseGrant(7, req.seq, 0.4))
    assert h.quorum_until() == float("-inf")  # one host of three is no majority
    h.granted("h2", LeaseGrant(7, req.seq, 0.4))
    # Hosts count from their (later) receipt; the leader from its earlier send, minus margin.
    assert h.quorum_until() == pytest.approx(50.0 + T.lease_duration - T.lease_margin)


def test_quorum_is_the_second_best_of_three() -> None:
    h = holder()
    first = h.request(50.0)
    second = h.request(50.1)
    h.granted("h1", LeaseGrant(7, second.seq, 0.4))
    h.granted("h2", LeaseGrant(7, first.seq, 0.4))
    h.granted("h3", LeaseGrant(7, first.seq, 0.4))
    assert h.quorum_until() == pytest.approx(50.0 + T.lease_duration - T.lease_margin)


@pytest.mark.parametrize(("host", "grant"), [
    ("h1", LeaseGrant(6, 1, 0.4)),     # another term
    ("h1", LeaseGrant(7, 99, 0.4)),    # never asked
    ("stranger", LeaseGrant(7, 1, 0.4)),
])
def test_worthless_grants_count_for_nothing(host: str, grant: LeaseGrant) -> None:
    h = holder()
    h.request(50.0)
    h.granted(host, grant)
    assert h.valid_until == {}


def test_a_longer_duration_than_ours_is_not_trusted() -> None:
    h = holder()
    req = h.request(50.0)
    h.granted("h1", LeaseGrant(7, req.seq, 60.0))
    assert h.valid_until["h1"] == pytest.approx(50.0 + T.lease_duration - T.lease_margin)
