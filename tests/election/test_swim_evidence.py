"""Gossip cannot kill a member by itself: deaths on our own evidence, incarnations from the
member itself, acks only from the target or the helpers we asked (swim.py, issue 11)."""

from __future__ import annotations

import random

import pytest

from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Ack, Gossip, Message, Ping, PingReq
from cloudd.election.swim import Membership, Status

T = Timing.production()
ROSTER = Roster([Member(n, host=n in "ab") for n in "abcde"])
LOW, HIGH = T.suspicion_timeouts(len(ROSTER))


def mem(me: str = "a", *, seed: int = 3) -> Membership:
    m = Membership(me, ROSTER, timing=T, rng=random.Random(seed))
    m.start(0.0)
    m.drain()
    return m


class World:
    """Every member a real `Membership`, messages delivered at once, `down` members silent."""

    def __init__(self) -> None:
        self.m = {n: mem(n, seed=i) for i, n in enumerate(ROSTER.names)}
        self.down: set[str] = set()
        self.t = 0.0
        self.seen: dict[str, set[Status]] = {n: set() for n in ROSTER.names}

    def deliver(self, src: str, out: list[tuple[str, Message]]) -> None:
        todo = [(src, dst, msg) for dst, msg in out]
        while todo:
            src, dst, msg = todo.pop(0)
            if dst in self.down or src in self.down:
                continue
            target = self.m[dst]
            target.receive(src, msg, self.t)  # type: ignore[arg-type]
            sent, _ = target.drain()
            todo += [(dst, d, m) for d, m in sent]

    def forge(self, src: str, dst: str, msg: Message) -> None:
        self.deliver(src, [(dst, msg)])

    def run(self, seconds: float, *, watch: str) -> None:
        """Tick everyone every millisecond; record every status anyone gives `watch`."""
        end = self.t + seconds
        while self.t < end:
            self.t += 0.001
            for name, m in self.m.items():
                if name in self.down:
                    continue
                m.probe_tick(self.t)
                out, _ = m.drain()
                self.deliver(name, out)
                if name != watch:
                    self.seen[name].add(m.status(watch))


def test_forged_news_of_a_death_with_a_huge_incarnation_is_refuted_not_believed() -> None:
    w = World()
    w.run(0.3, watch="b")
    forged = Gossip("dead", "b", 1000, "e")
    for dst in "acd":
        w.forge("e", dst, Ping(99, dst, "", 0, gossip=(forged,)))
    for name in "acd":  # a reason to look, at b's real incarnation, no more
        assert w.m[name].status("b") is Status.SUSPECT
        assert w.m[name].peers["b"].incarnation == 0
    w.run(3.0, watch="b")
    assert all(Status.DEAD not in seen for seen in w.seen.values()), w.seen
    assert all(w.m[n].status("b") is Status.ALIVE for n in "acde")
    assert 1 <= w.m["b"].incarnation <= 2  # b refuted what it heard: 0, not 1000


@pytest.mark.parametrize(("gone", "bound"), [
    ("b", HIGH + 3 * T.probe_interval),  # a host: memberlist's timing
    ("c", T.node_dead_bound(len(ROSTER))),  # a node: the patient timing
], ids=["host", "node"])
def test_a_member_really_gone_dies_on_each_members_own_probes(gone: str, bound: float) -> None:
    w = World()
    w.run(0.3, watch=gone)
    w.down.add(gone)
    w.forge("e", "a", Ping(99, "a", "", 0, gossip=(Gossip("dead", gone, 0, "e"),)))
    a = w.m["a"]
    assert a.status(gone) is Status.SUSPECT
    w.run(bound, watch=gone)
    assert all(w.m[n].status(gone) is Status.DEAD for n in "abcde" if n != gone)


def test_gossip_alone_never_kills_and_the_suspect_is_probed_first() -> None:
    m = mem()
    m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("dead", "c", 0, "e"),)), 0.5)
    assert m.status("c") is Status.SUSPECT
    m.probe_tick(m.next_deadline())
    out, _ = m.drain()
    pings = [msg for _, msg in out if isinstance(msg, Ping)]
    assert [p.target for p in pings] == ["c"]  # our own look at the suspect comes first
    assert Gossip("suspect", "c", 0, "e") in pings[0].gossip  # it carries the doubt to c
    # c answers through a helper only: the suspicion lapses at its timeout, no death.
    m.unreachable("c", 0.6)
    out, _ = m.drain()
    helper = next(peer for peer, msg in out if isinstance(msg, PingReq))
    m.receive(helper, Ack(pings[0].seq, "c", "", 0), 0.61)
    ends = 0.5 + T.node_suspicion  # c is a node
    for t, status in ((ends - 0.001, Status.SUSPECT), (ends, Status.ALIVE)):
        m.probe_tick(t)
        assert m.status("c") is status


def test_without_our_own_verdict_a_suspicion_waits_past_its_timeout() -> None:
    m = mem()
    m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("dead", "c", 0, "e"),)), 0.01)
    m.probe_tick(0.01 + HIGH + 1.0)  # the shell's timer came late: no probe of c yet
    assert m.status("c") is Status.SUSPECT


def test_only_the_member_itself_raises_its_incarnation() -> None:
    m = mem()
    m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("alive", "c", 1000, "c"),)), 0.1)
    assert m.peers.get("c") is None or m.peers["c"].incarnation == 0
    m.receive("c", Ping(2, "a", "", 0, gossip=(Gossip("alive", "c", 3, "c"),)), 0.2)
    assert m.peers["c"].incarnation == 3
    # Later news from others counts at the incarnation c announced, no higher.
    m.receive("e", Ping(3, "a", "", 0, gossip=(Gossip("suspect", "c", 9, "e"),)), 0.3)
    assert m.status("c") is Status.SUSPECT and m.peers["c"].incarnation == 3
    m.receive("c", Ack(7, "c", "", 0, gossip=(Gossip("alive", "c", 4, "c"),)), 0.4)
    assert m.status("c") is Status.ALIVE  # refuted by c itself


def test_an_ack_counts_only_from_the_target_or_a_helper_we_asked() -> None:
    roster = Roster([Member(n, host=True) for n in "abcdefg"])
    m = Membership("a", roster, timing=T, rng=random.Random(3))
    m.start(0.0)
    m.drain()
    t = m.next_deadline()
    m.probe_tick(t)
    out, _ = m.drain()
    ping = next(msg for _, msg in out if isinstance(msg, Ping))
    m.probe_tick(t + T.probe_timeout)
    out, _ = m.drain()
    helpers = {peer for peer, msg in out if isinstance(msg, PingReq)}
    liar = next(n for n in roster.names if n not in helpers | {"a", ping.target})
    m.receive(liar, Ack(ping.seq, ping.target, "", 0), t + 0.05)
    m.probe_tick(t + T.probe_interval)
    assert m.status(ping.target) is Status.SUSPECT  # the liar's ack did not count


def test_a_helper_relays_only_the_targets_own_ack() -> None:
    m = mem("b")
    m.receive("a", PingReq(41, "c"), 1.0)
    out, _ = m.drain()
    ((_, ping),) = out
    m.receive("d", Ack(ping.seq, "c", "", 0), 1.001)  # somebody else, posing as c
    assert m.drain()[0] == []
    m.receive("c", Ack(ping.seq, "c", "", 0), 1.002)
    assert m.drain()[0] == [("a", Ack(41, "c", "", 0))]
