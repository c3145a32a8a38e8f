"""Why a member is suspect or dead, and since when: the reason a suspicion began, what our own
probes found since, and the same through `AgentCore.describe`."""

from __future__ import annotations

import random

import pytest

from cloudd.election.agent import AgentCore
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Ack, Coordinator, Gossip, LeaseRequest, Ping, PingReq
from cloudd.election.swim import Doubt, Membership, Status

T = Timing.production()
ROSTER = Roster([Member(n, host=n in "ab") for n in "abcde"])
NODE_FAILED = ("no ack to a direct probe within 1 s, nor through 3 helpers within 1 s")


def mem(roster: Roster = ROSTER) -> Membership:
    m = Membership("a", roster, timing=T, rng=random.Random(3))
    m.start(0.0)
    m.drain()
    return m


def run(m: Membership, until: float, *, silent: str, t: float = 0.0, answer: bool = False,
        changes: list[tuple[str, Status, str]] | None = None) -> float:
    """Tick m every millisecond up to `until`; every member answers at once but `silent`
    (unless `answer`); m's status changes go to `changes`. Returns the last time ticked."""
    while t < until:
        t = round(t + 0.001, 6)
        m.probe_tick(t)
        out, changed = m.drain()
        if changes is not None:
            changes += changed
        for peer, msg in out:
            if peer == silent and not answer:
                continue
            if isinstance(msg, Ping):
                m.receive(peer, Ack(msg.seq, peer, "", 0), t)
    return t


def suspect_on_own_probe(m: Membership, node: str) -> float:
    """Run until m's own probe of `node` fails; the time it became suspect."""
    t = 0.0
    while m.status(node) is Status.ALIVE:
        t = run(m, t + 0.001, silent=node, t=t)
        assert t < 10, "never suspected"
    return t


def test_an_alive_member_has_no_doubt() -> None:
    m = mem()
    assert m.doubt("c") is None and m.doubts() == {}


def test_our_own_failed_probe_of_a_node_says_how_long_it_waited() -> None:
    m = mem()
    at = suspect_on_own_probe(m, "c")
    assert m.doubt("c") == Doubt(Status.SUSPECT, at, NODE_FAILED)
    assert m.doubts() == {"c": m.doubt("c")}


def test_a_host_probe_says_the_hosts_timing() -> None:
    m = mem()
    at = suspect_on_own_probe(m, "b")
    doubt = m.doubt("b")
    assert doubt is not None and doubt.since == at
    assert doubt.reason.startswith("no ack to a direct probe within 0.04 s, nor through 3 "
                                   "helpers within 0.06 s")


def test_a_peer_we_could_not_reach() -> None:
    m = mem()
    t = 0.0
    while True:  # until our probe goes to c
        t = m.next_deadline()
        m.probe_tick(t)
        out, _ = m.drain()
        pings = [msg for peer, msg in out if isinstance(msg, Ping) and peer == "c"]
        if pings:
            break
        for peer, msg in out:
            if isinstance(msg, Ping):
                m.receive(peer, Ack(msg.seq, peer, "", 0), t)
    m.unreachable("c", t + 0.001)
    out, _ = m.drain()
    assert sum(isinstance(msg, PingReq) for _, msg in out) == T.indirect_checks
    run(m, t + 3.0, silent="c", t=t + 0.001)
    # asked at once, the helpers had the rest of the probe's two windows
    doubt = m.doubt("c")
    assert doubt is not None and doubt.reason.startswith("could not reach it, nor through 3 "
                                                         "helpers within 2 s")


@pytest.mark.parametrize(("sender", "fact", "words"), [
    ("e", Gossip("suspect", "c", 0, "e"), "gossip: e suspects it"),
    ("d", Gossip("dead", "c", 0, "e"), "gossip: e declared it dead (heard from d)"),
])
def test_gossip_says_who_suspects_and_who_told_us(sender: str, fact: Gossip,
                                                  words: str) -> None:
    m = mem()
    m.receive(sender, Ping(1, "a", "", 0, gossip=(fact,)), 0.5)
    assert m.doubt("c") == Doubt(Status.SUSPECT, 0.5, words)


def test_then_our_own_probe_is_added_failed_or_answered() -> None:
    failed, answered = mem(), mem()
    for m in (failed, answered):
        m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("suspect", "c", 0, "e"),)), 0.5)
    run(failed, 3.5, silent="c", t=0.5)
    run(answered, 3.5, silent="c", t=0.5, answer=True)
    assert failed.doubt("c") == Doubt(Status.SUSPECT, 0.5,
                                      f"gossip: e suspects it; then our own probe: {NODE_FAILED}")
    assert answered.doubt("c") == Doubt(
        Status.SUSPECT, 0.5, "gossip: e suspects it; then our own probe: it answered (the "
                             "suspicion lapses when it ends)")
    run(answered, 0.5 + T.node_suspicion, silent="c", t=3.5, answer=True)
    assert answered.status("c") is Status.ALIVE and answered.doubt("c") is None


def test_a_dead_member_says_since_its_death_and_how_long_it_was_suspect() -> None:
    m = mem()
    at = suspect_on_own_probe(m, "c")
    t = at
    while m.status("c") is not Status.DEAD:
        t = run(m, t + 0.01, silent="c", t=t)
    assert t - at == pytest.approx(T.node_suspicion, abs=0.002)
    assert m.doubt("c") == Doubt(Status.DEAD, t, f"{NODE_FAILED}; no answer in 10 s of "
                                                 f"suspicion")


def test_a_refuted_suspicion_leaves_no_doubt_and_a_new_one_its_own_reason() -> None:
    m = mem()
    m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("suspect", "c", 0, "e"),)), 0.5)
    m.receive("c", Ping(2, "a", "", 0, gossip=(Gossip("alive", "c", 1, "c"),)), 0.6)
    assert m.doubt("c") is None
    m.suspect("c", 0.7, why="its leader lease renewals stopped coming")
    assert m.doubt("c") == Doubt(Status.SUSPECT, 0.7, "its leader lease renewals stopped coming")


def test_without_anyone_to_ask_the_probe_says_so() -> None:
    m = mem(Roster([Member("a", host=True), Member("n")]))
    at = suspect_on_own_probe(m, "n")
    assert m.doubt("n") == Doubt(Status.SUSPECT, at, "no ack to a direct probe within 1 s, "
                                                     "and no live member could probe it for us")


def test_describe_lists_each_member_not_alive_with_why_and_since_when() -> None:
    roster = Roster([Member("h1", host=True), Member("h2", host=True), Member("n1")])
    core = AgentCore("h1", roster, timing=T, rng=random.Random(1))
    core.start(0.0)
    core.step("h2", Ping(1, "h1", "", 0, gossip=(Gossip("suspect", "n1", 0, "h2"),)), 0.25)
    info = core.describe(0.3)
    assert info["not_alive"] == {"n1": {"status": "suspect", "since": 0.25,
                                        "reason": "gossip: h2 suspects it"}}


def test_every_change_of_status_says_why() -> None:
    m = mem()
    changes: list[tuple[str, Status, str]] = []
    t = run(m, T.node_suspicion + 5.0, silent="c", changes=changes)
    m.receive("c", Ping(9, "a", "", 0, gossip=(Gossip("alive", "c", 1, "c"),)), t)
    changes += m.drain()[1]
    assert changes == [("c", Status.SUSPECT, NODE_FAILED),
                       ("c", Status.DEAD, f"{NODE_FAILED}; no answer in 10 s of suspicion"),
                       ("c", Status.ALIVE, "it spoke for itself at incarnation 1")]


def test_a_lapsed_suspicion_says_our_probe_was_answered() -> None:
    m = mem()
    m.receive("e", Ping(1, "a", "", 0, gossip=(Gossip("suspect", "c", 0, "e"),)), 0.5)
    changes = m.drain()[1]
    run(m, 0.5 + T.node_suspicion, silent="c", t=0.5, answer=True, changes=changes)
    assert changes == [("c", Status.SUSPECT, "gossip: e suspects it"),
                       ("c", Status.ALIVE, "our own probe was answered: the suspicion lapsed")]


def test_the_agents_member_events_carry_the_status_and_why() -> None:
    roster = Roster([Member("h1", host=True), Member("h2", host=True), Member("n1")])
    core = AgentCore("h1", roster, timing=T, rng=random.Random(1))
    core.start(0.0)
    out = core.step("h2", Ping(1, "h1", "", 0, gossip=(Gossip("suspect", "n1", 0, "h2"),)), 0.25)
    assert [(e.reason, e.peer) for e in out.events if e.kind == "member"] == [
        ("suspect: gossip: h2 suspects it", "n1")]
    out = core.step("n1", Ping(2, "h1", "", 0, gossip=(Gossip("alive", "n1", 1, "n1"),)), 0.3)
    assert [(e.reason, e.peer) for e in out.events if e.kind == "member"] == [
        ("alive: it spoke for itself at incarnation 1", "n1")]


def test_a_host_whose_leader_stops_renewing_says_so() -> None:
    """A host following `a` hears no renewal for 2.5 periods while a still answers probes:
    the suspicion is the election's, in its words."""
    core = AgentCore("b", ROSTER, timing=T, rng=random.Random(1))
    core.start(0.0)
    t = T.lease_duration + 0.01  # a freshly started host grants nothing for one lease
    core.step("a", LeaseRequest(term=5, seq=1), t)
    core.step("a", Coordinator(5), t)
    assert (core.leader, core.term) == ("a", 5)
    granted = t
    while core.status("a") is Status.ALIVE:
        t = round(t + 0.001, 6)
        for peer, msg in core.tick(t).messages:
            if isinstance(msg, Ping):
                core.step(peer, Ack(msg.seq, peer, "", 0), t)
        assert t < granted + 1.0, "never suspected"
    assert t == pytest.approx(granted + 2.5 * T.renew_interval, abs=0.002)
    doubt = core.members.doubt("a")
    assert doubt is not None and doubt.reason == "its leader lease renewals stopped coming"
