"""SWIM semantics, one agent at a time, with messages fed by hand and time as input."""

from __future__ import annotations

import random

import pytest

from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Ack, Gossip, Ping, PingReq
from cloudd.election.swim import Membership, Status

T = Timing.production()
ROSTER = Roster([Member(n, host=True) for n in "abcde"])


def mem(me: str = "a") -> Membership:
    m = Membership(me, ROSTER, timing=T, rng=random.Random(3))
    m.start(0.0)
    m.drain()
    return m


def first_probe(m: Membership) -> tuple[float, Ping]:
    t = m.next_deadline()
    m.probe_tick(t)
    out, _ = m.drain()
    pings = [msg for _, msg in out if isinstance(msg, Ping)]
    assert len(pings) == 1
    return t, pings[0]


def kill(m: Membership, target: str, t: float) -> float:
    """Make `target` dead in m's view on m's own evidence: suspect it, then let m's own probe
    of it go unanswered until the suspicion ends (everyone else answers). Returns the time
    it died."""
    m.suspect(target, t, why="the test says so")
    while m.status(target) is not Status.DEAD:
        t += 0.001
        m.probe_tick(t)
        out, _ = m.drain()
        for peer, msg in out:
            if isinstance(msg, Ping) and peer != target:
                m.receive(peer, Ack(msg.seq, peer, "", 0), t)
        assert t < 10, "never died"
    m.drain()
    return t


def test_silent_target_gets_helpers_then_suspicion_then_death() -> None:
    m = mem()
    t, ping = first_probe(m)
    m.probe_tick(t + T.probe_timeout)
    out, _ = m.drain()
    helpers = {peer for peer, msg in out if isinstance(msg, PingReq)}
    assert len(helpers) == T.indirect_checks and ping.target not in helpers
    m.probe_tick(t + T.probe_interval)
    _, changes = m.drain()
    assert [(n, s) for n, s, _ in changes] == [(ping.target, Status.SUSPECT)]
    assert changes[0][2].startswith("no ack to a direct probe within 0.04 s, nor through 3 ")
    _, high = T.suspicion_timeouts(len(ROSTER))
    m.probe_tick(t + T.probe_interval + high - 1e-6)
    assert m.status(ping.target) is Status.SUSPECT
    m.probe_tick(t + T.probe_interval + high)
    assert m.status(ping.target) is Status.DEAD and not m.live(ping.target)


def test_direct_ack_keeps_the_target_alive() -> None:
    m = mem()
    t, ping = first_probe(m)
    m.receive(ping.target, Ack(ping.seq, ping.target, "", 0), t + 0.001)
    m.probe_tick(t + T.probe_interval)
    out, changes = m.drain()
    assert changes == [] and not any(isinstance(msg, PingReq) for _, msg in out)


def test_relayed_ack_counts_like_a_direct_one() -> None:
    m = mem()
    t, ping = first_probe(m)
    m.unreachable(ping.target, t + 0.001)  # no waiting for the probe timeout
    out, _ = m.drain()
    helper = next(peer for peer, msg in out if isinstance(msg, PingReq))
    m.receive(helper, Ack(ping.seq, ping.target, "", 0), t + 0.002)
    m.probe_tick(t + T.probe_interval)
    assert m.status(ping.target) is Status.ALIVE


def test_helper_pings_the_target_and_relays_its_ack() -> None:
    m = mem("b")
    m.receive("a", PingReq(41, "c"), 1.0)
    out, _ = m.drain()
    ((peer, ping),) = out
    assert peer == "c" and isinstance(ping, Ping) and ping.target == "c"
    m.receive("c", Ack(ping.seq, "c", "", 0), 1.001)
    out, _ = m.drain()
    assert out == [("a", Ack(41, "c", "", 0))]


def test_suspicion_about_oneself_is_refuted_with_a_higher_incarnation() -> None:
    m = mem("b")
    m.receive("a", Ping(1, "b", "", 0, gossip=(Gossip("suspect", "b", 0, "a"),)), 1.0)
    out, _ = m.drain()
    ((peer, ack),) = out
    assert peer == "a" and isinstance(ack, Ack)
    assert Gossip("alive", "b", 1, "b") in ack.gossip
    assert m.incarnation == 1


def test_incarnations_order_the_facts() -> None:
    m = mem()
    m.receive("c", Ping(1, "a", "", 0, gossip=(Gossip("alive", "c", 2, "c"),)), 1.0)
    m.receive("b", Ping(2, "a", "", 0, gossip=(Gossip("suspect", "c", 2, "b"),)), 1.0)
    assert m.status("c") is Status.SUSPECT
    m.receive("c", Ping(3, "a", "", 0, gossip=(Gossip("alive", "c", 2, "c"),)), 1.1)
    assert m.status("c") is Status.SUSPECT  # same incarnation: no refutation
    m.receive("c", Ping(4, "a", "", 0, gossip=(Gossip("alive", "c", 3, "c"),)), 1.2)
    assert m.status("c") is Status.ALIVE
    m.receive("b", Ping(5, "a", "", 0, gossip=(Gossip("dead", "c", 2, "b"),)), 1.3)
    assert m.status("c") is Status.ALIVE  # stale death


def test_confirmations_shorten_the_suspicion() -> None:
    low, high = T.suspicion_timeouts(len(ROSTER))
    m = mem()
    m.receive("b", Ping(1, "a", "", 0, gossip=(Gossip("suspect", "c", 0, "b"),)), 1.0)
    m.receive("d", Ping(2, "a", "", 0, gossip=(Gossip("suspect", "c", 0, "d"),)), 1.0)
    died = kill(m, "c", 1.0)  # our own probe of c fails too: three confirmations
    assert died <= 1.0 + low + 0.001 < 1.0 + high


def test_dead_members_are_probed_with_the_news_of_their_death() -> None:
    m = mem()
    died = kill(m, "c", 0.01)
    m.probe_tick(died + T.dead_probe_interval)
    out, _ = m.drain()
    to_c = [msg for peer, msg in out if peer == "c"]
    assert len(to_c) == 1 and isinstance(to_c[0], Ping)
    assert to_c[0].gossip[0] == Gossip("dead", "c", 0, "a")
    # c refutes in its ack; the prober believes it again.
    m.receive("c", Ack(to_c[0].seq, "c", "", 0, gossip=(Gossip("alive", "c", 1, "c"),)),
              died + T.dead_probe_interval + 0.001)
    assert m.status("c") is Status.ALIVE


def test_a_sender_we_think_dead_hears_it_in_our_ack() -> None:
    m = mem()
    died = kill(m, "c", 0.01)
    m.receive("c", Ping(7, "a", "", 0), died + 0.001)
    out, _ = m.drain()
    ((peer, ack),) = out
    assert peer == "c" and isinstance(ack, Ack) and ack.gossip[0] == Gossip("dead", "c", 0, "a")


@pytest.mark.parametrize("facts", [3, 30])
def test_piggyback_is_bounded_and_each_fact_is_retransmitted_a_limited_number_of_times(
        facts: int) -> None:
    roster = Roster([Member(f"m{i}", host=True) for i in range(facts + 1)])
    m = Membership("m0", roster, timing=T, rng=random.Random(1))
    m.start(0.0)
    for i in range(1, facts + 1):
        m.receive(f"m{i}", Ping(i, "m0", "", 0, gossip=(Gossip("alive", f"m{i}", 1, f"m{i}"),)),
                  0.001)
    sent: dict[str, int] = {}
    for _ in range(200):
        m.receive("m1", Ping(99, "m0", "", 0), 0.002)
        out, _ = m.drain()
        for _, msg in out:
            assert isinstance(msg, Ack) and len(msg.gossip) <= T.max_piggyback
            for g in msg.gossip:
                sent[g.member] = sent.get(g.member, 0) + 1
    assert set(sent) >= {f"m{i}" for i in range(1, facts + 1)}
    assert max(sent.values()) <= T.retransmits(len(roster))


def test_a_late_tick_does_not_catch_up_with_a_burst_of_probes() -> None:
    m = mem()
    m.probe_tick(100.0)  # the shell's timer came 100 s late
    out, _ = m.drain()
    assert sum(isinstance(msg, Ping) for _, msg in out) <= 2  # one probe, one dead probe
    assert m.next_deadline() > 100.0


def test_stale_news_of_our_death_is_answered_with_our_current_incarnation() -> None:
    m = mem("b")
    m.receive("a", Ping(1, "b", "", 0, gossip=(Gossip("dead", "b", 4, "a"),)), 1.0)
    m.drain()
    assert m.incarnation == 5
    # Later someone repeats an older death (incarnation 2 < 5): no bump, but they hear 5.
    m.receive("c", Ping(2, "b", "", 0, gossip=(Gossip("dead", "b", 2, "c"),)), 1.1)
    out, _ = m.drain()
    ((peer, ack),) = out
    assert peer == "c" and isinstance(ack, Ack) and m.incarnation == 5
    assert Gossip("alive", "b", 5, "b") in ack.gossip
