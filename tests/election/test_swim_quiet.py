"""A member that speaks needs no ping: SWIM skips the probe of a member heard from within
the last protocol period, and only then (alive, no gossip waiting), without seeing any death
later than it would have."""

from __future__ import annotations

import random

from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Ack, Gossip, Ping
from cloudd.election.swim import Membership, Status

T = Timing.production()
ROSTER = Roster([Member(n, host=True) for n in "abcde"])
OTHERS = "bcde"
#: A tick a hair more than a period after the last: one probe is due at each.
STEP = T.probe_interval * 1.001


def settled(me: str = "a") -> tuple[Membership, float]:
    """A member whose start-up gossip is all sent: every ping of a few rounds answered."""
    m = Membership(me, ROSTER, timing=T, rng=random.Random(7))
    m.start(0.0)
    t = 0.0
    for _ in range(12):
        t = m.next_deadline()
        m.probe_tick(t)
        answer(m, t)
    assert m.drain() == ([], [])
    return m, t


def answer(m: Membership, t: float) -> list[str]:
    """Ack every ping m sent; returns their targets."""
    out, _ = m.drain()
    pinged = []
    for peer, msg in out:
        if isinstance(msg, Ping):
            pinged.append(peer)
            m.receive(peer, Ack(msg.seq, peer, "", 0), t)
    return pinged


def test_a_member_heard_within_the_period_is_not_pinged_in_its_turn() -> None:
    m, t = settled()
    pinged: list[str] = []
    for _ in range(40):  # ten rounds of four
        t += STEP
        for peer in OTHERS:
            if peer != "b":
                m.heard(peer, t - T.probe_interval / 2)  # c, d, e speak all the time
        m.probe_tick(t)
        pinged += answer(m, t)
    assert set(pinged) == {"b"}  # b never spoke to us: it alone is pinged
    assert m.skipped >= 25 and m.skipped + len(pinged) == 40


def test_a_message_older_than_the_period_proves_nothing() -> None:
    m, t = settled()
    pinged: list[str] = []
    for _ in range(8):
        t += STEP
        for peer in OTHERS:
            m.heard(peer, t - T.probe_interval)  # a full period ago: too old
        m.probe_tick(t)
        pinged += answer(m, t)
    assert len(pinged) == 8 and m.skipped == 0


def test_a_suspect_is_probed_even_if_it_spoke() -> None:
    m, t = settled()
    m.suspect("c", t, why="the test says so")
    m.drain()
    t = m.next_deadline()
    m.heard("c", t)
    m.probe_tick(t)
    out, _ = m.drain()
    assert [peer for peer, msg in out if isinstance(msg, Ping)] == ["c"]


def test_gossip_waiting_goes_out_on_pings_even_to_members_that_spoke() -> None:
    m, t = settled()
    m.receive("b", Ping(1, "a", "", 0, gossip=(Gossip("alive", "b", 3, "b"),)), t)
    m.drain()  # b's new incarnation is now news to spread
    t = m.next_deadline()
    for peer in OTHERS:
        m.heard(peer, t)
    m.probe_tick(t)
    out, _ = m.drain()
    (ping,) = [msg for _, msg in out if isinstance(msg, Ping)]
    assert Gossip("alive", "b", 3, "b") in ping.gossip and m.skipped == 0


def test_a_member_that_falls_silent_is_found_dead_within_a_round_of_without_skipping(
        ) -> None:
    """Everyone speaks all the time, then c stops: c is dead here within the bound of a
    member that probes everyone each period (one round, a probe, the suspicion), and at
    most one round later than that member found it."""
    quiet, t0 = settled()
    plain, _ = settled()
    deaths = {}
    for name, m in (("quiet", quiet), ("plain", plain)):
        t = t0
        while m.status("c") is not Status.DEAD:
            t = m.next_deadline()
            if name == "quiet":
                for peer in OTHERS:
                    if peer != "c" or t < t0 + 1.0:  # c's last word is at t0 + 1
                        m.heard(peer, t)
            m.probe_tick(t)
            out, _ = m.drain()
            for peer, msg in out:
                if isinstance(msg, Ping) and (peer != "c" or t < t0 + 1.0):
                    m.receive(peer, Ack(msg.seq, peer, "", 0), t)
            assert t < t0 + 10, f"{name}: c never died"
        deaths[name] = t - (t0 + 1.0)
    _, high = T.suspicion_timeouts(len(ROSTER))
    bound = 2 * (len(ROSTER) - 1) * T.probe_interval + T.probe_interval + high
    assert deaths["quiet"] <= bound and deaths["plain"] <= bound
    assert deaths["quiet"] <= deaths["plain"] + (len(ROSTER) - 1) * T.probe_interval
    assert quiet.skipped > 0 and plain.skipped == 0
