"""The two-host rule as a table: split, delay, fence failed, peer back, cold start alone.

Each row drives one host's `Pair` through events (`heard`, SWIM's view `live`, the clock,
the fence's outcome) and checks where it ends: its state, the fence it asked for, whether it
may stand for election, and what counts for it without answering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from cloudd.election.config import Timing, TwoHost
from cloudd.election.members import Member, Roster
from cloudd.election.twohost import (
    TRANSITIONS,
    Pair,
    PairEvent,
    PeerState,
    peer_grace,
    peer_silence,
    record_quorum,
)
from cloudd.errors import ConfigError, LocalProtocolError

TIMING = Timing.local()
SETTINGS = TwoHost(fence_delay=5.0, wait_for_all=30.0, fence_retry=10.0)
ROSTER = Roster([Member("pm1", host=True), Member("pm2", host=True), Member("n1")],
                two_host=SETTINGS)
INF = math.inf


def pair(me: str = "pm1", *, now: float = 0.0, seen: bool = True) -> Pair:
    p = Pair(me, ROSTER, timing=TIMING, now=now)
    if seen:
        p.heard(now)
        p.observe(live=True, now=now)
    return p


def steps(p: Pair, *events: tuple[str, float] | tuple[str, float, bool]) -> Pair:
    for ev in events:
        what, at = ev[0], ev[1]
        if what == "heard":
            p.heard(at)
        elif what == "live":
            p.observe(live=True, now=at)
        elif what == "dead":
            p.observe(live=False, now=at)
        elif what == "fence":
            p.fence_result(ok=bool(ev[2]), reason="test", now=at)  # type: ignore[misc]
        else:
            raise AssertionError(what)
    return p


@dataclass(frozen=True)
class Row:
    name: str
    me: str
    events: tuple[tuple[str, float] | tuple[str, float, bool], ...]
    state: PeerState
    fence: str | None
    may_run: bool
    stand_in: float | None = None  # the peer's lease counts until then (None: not at all)


ROWS = [
    Row("both seen: both count, as in any pool", "pm1", (), PeerState.PAIRED, None, True),
    Row("higher loses its peer: fences at once", "pm1", (("dead", 1.0),),
        PeerState.FENCING, "pm2", False),
    Row("lower loses its peer: waits the delay first", "pm2", (("dead", 1.0),),
        PeerState.LOST, None, False),
    Row("lower, delay passed: fences", "pm2", (("dead", 1.0), ("dead", 6.0)),
        PeerState.FENCING, "pm1", False),
    Row("peer back before the delay: fence called off", "pm2",
        (("dead", 1.0), ("live", 3.0), ("heard", 3.5), ("live", 4.0)), PeerState.PAIRED,
        None, True),
    Row("silent past its bound while SWIM still sees it: lost", "pm1",
        (("live", 0.1), ("live", peer_silence(TIMING, len(ROSTER)))), PeerState.FENCING, "pm2",
        False),
    Row("a message from the peer calls it off too", "pm2",
        (("dead", 1.0), ("heard", 3.0)), PeerState.PAIRED, None, True),
    Row("fence succeeded: the peer counts for ever", "pm1",
        (("dead", 1.0), ("fence", 2.0, True)), PeerState.FENCED, "pm2", True, INF),
    Row("fence failed: nothing, retried later", "pm1",
        (("dead", 1.0), ("fence", 2.0, False), ("dead", 11.0)), PeerState.LOST, "pm2", False),
    Row("fence failed, retry due: fences again", "pm1",
        (("dead", 1.0), ("fence", 2.0, False), ("dead", 12.0)), PeerState.FENCING, "pm2",
        False),
    Row("speaking while fenced changes nothing: the command decides", "pm1",
        (("dead", 1.0), ("heard", 1.5), ("live", 1.6), ("fence", 2.0, True)),
        PeerState.FENCED, "pm2", True, INF),
    Row("fenced peer back: counts a grace more, then by its own grants", "pm1",
        (("dead", 1.0), ("fence", 2.0, True), ("heard", 50.0)), PeerState.PAIRED, "pm2",
        True, 50.0 + peer_grace(TIMING)),
    Row("fenced peer found alive by SWIM: paired, a grace too", "pm1",
        (("dead", 1.0), ("fence", 2.0, True), ("live", 50.0)), PeerState.PAIRED, "pm2", True,
        50.0 + peer_grace(TIMING)),
    Row("back but SWIM still holds it dead past the grace: lost again", "pm1",
        (("dead", 1.0), ("fence", 2.0, True), ("heard", 50.0), ("dead", 50.1),
         ("dead", 50.0 + peer_grace(TIMING))), PeerState.FENCING, "pm2", False),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_rule(row: Row) -> None:
    p = pair(row.me)
    fences: list[str] = []
    for ev in row.events:
        steps(p, ev)
        if p.fence is not None:
            fences.append(p.fence)
            p.fence = None
    assert p.state is row.state
    assert (fences[-1] if fences else None) == row.fence
    assert p.may_run() is row.may_run
    counted = p.stand_ins().get(p.peer)
    assert counted == row.stand_in
    assert p.acknowledged() == (frozenset({p.peer}) if row.state is PeerState.FENCED
                                else frozenset())


def test_split_the_higher_fences_first() -> None:
    """Both lose each other at once: the higher is due now, the lower `fence_delay` later."""
    high, low = pair("pm1"), pair("pm2")
    steps(high, ("dead", 1.0))
    steps(low, ("dead", 1.0))
    assert high.fence == "pm2" and low.fence is None
    assert low.next_deadline(1.0) == 1.0 + SETTINGS.fence_delay


@pytest.mark.parametrize(("me", "due"), [("pm1", 30.0), ("pm2", 35.0)])
def test_cold_start_alone_waits_for_all_then_fences(me: str, due: float) -> None:
    p = pair(me, seen=False)
    assert p.state is PeerState.UNSEEN and not p.may_run()
    steps(p, ("dead", 1.0), ("live", 2.0), ("dead", due - 0.01))  # SWIM's word changes nothing
    assert p.state is PeerState.UNSEEN and p.fence is None
    assert p.next_deadline(due - 0.01) == due
    steps(p, ("dead", due))
    assert p.fence == p.peer
    steps(p, ("fence", due + 1, True))
    assert p.may_run() and p.stand_ins() == {p.peer: INF}


def test_cold_start_seen_once_is_enough() -> None:
    p = pair("pm2", seen=False)
    steps(p, ("heard", 3.0))
    assert p.state is PeerState.PAIRED and p.may_run()


def test_wait_for_all_without_bound_waits_for_ever() -> None:
    roster = Roster(ROSTER.members, two_host=TwoHost(wait_for_all=None))
    p = Pair("pm1", roster, timing=TIMING, now=0.0)
    p.observe(live=False, now=1e9)
    assert p.state is PeerState.UNSEEN and p.next_deadline(1e9) == INF


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s in PeerState for e in PairEvent if (s, e) not in TRANSITIONS])
def test_illegal_moves_raise_and_change_nothing(state: PeerState, event: PairEvent) -> None:
    p = pair()
    p.state = state
    before = vars(p).copy()
    with pytest.raises(LocalProtocolError):
        p._step(event, 5.0, "test")
    assert vars(p) == before


def test_a_result_without_a_fence_running_raises() -> None:
    p = pair()
    with pytest.raises(LocalProtocolError, match="no move from paired"):
        p.fence_result(ok=True, reason="late", now=1.0)
    assert p.state is PeerState.PAIRED


def test_moves_are_logged_in_words() -> None:
    p = pair("pm2")
    steps(p, ("dead", 1.0))
    assert p.moves[-1].reason == ("pm1 lost (SWIM declared it dead): fencing it in 5 s, the "
                                  "delay of the host ranked lower")
    steps(p, ("dead", 6.0), ("fence", 7.0, False))
    assert p.moves[-1].reason == "fence of pm1 failed (test): trying again in 10 s"


@pytest.mark.parametrize(("quorum", "stand_ins", "need"), [
    (2, frozenset(), 2), (2, frozenset({"pm2"}), 1), (1, frozenset({"x", "y"}), 1)])
def test_record_quorum(quorum: int, stand_ins: frozenset[str], need: int) -> None:
    assert record_quorum(quorum, stand_ins) == need


def test_two_host_needs_exactly_two_hosts() -> None:
    three = [Member("a", host=True), Member("b", host=True), Member("c", host=True)]
    with pytest.raises(ConfigError, match="exactly two pool hosts, and this one has 3"):
        Roster(three, two_host=TwoHost())
    with pytest.raises(ConfigError, match="fence_retry"):
        Roster(three[:2], two_host=TwoHost(fence_retry=0))
    assert Roster(three[:2], two_host=TwoHost()).quorum == 2  # both, while both live
    with pytest.raises(LocalProtocolError):
        Pair("a", Roster(three[:2]), timing=TIMING, now=0.0)


def test_new_settings_keep_the_peers_state() -> None:
    """A generation that changes the setting (say, a bound given to the host left alone)
    leaves a fenced peer fenced, and moves an unseen peer's deadline to the new bound."""
    p = pair("pm2")
    steps(p, ("dead", 1.0), ("dead", 6.0), ("fence", 7.0, True))
    p.reconfigure(Roster(ROSTER.members, two_host=TwoHost(fence_delay=1.0)), timing=TIMING)
    assert p.state is PeerState.FENCED and p.delay == 1.0
    alone = Pair("pm1", Roster(ROSTER.members, two_host=TwoHost()), timing=TIMING, now=0.0)
    assert alone.next_deadline(0.0) == INF
    alone.reconfigure(Roster(ROSTER.members, two_host=TwoHost(wait_for_all=5.0)), timing=TIMING)
    assert alone.next_deadline(0.0) == 5.0
    with pytest.raises(LocalProtocolError):
        alone.reconfigure(Roster(ROSTER.members), timing=TIMING)
