"""An insider node against a running cloud: each forgery refused, nothing changed.

Deterministic scenarios over the simulator (sim.py checks the safety invariants after every
event, and that no node ever runs, leads or is followed). Each test settles a cloud, lets a
node's certificate send one kind of forgery to everyone, and checks that the cloud keeps its
leader and its term, that the receivers reported a refusal naming the node, and, for gossip,
that nobody ever believed the live host dead.
"""

from __future__ import annotations

import pytest

from cloudd.election.messages import Coordinator, Gossip, LeaderIs, LeaseRequest, Ping
from cloudd.election.swim import Status

from .insider import FORGED, KINDS, forge, insider_of
from .sim import Sim, settled_leader, started


def settled(n: int = 6, *, hosts: int = 3, seed: int = 21) -> tuple[Sim, str, str, int]:
    """A cloud with a leader acting for a while; returns (sim, leader, insider node, term)."""
    sim, leader = started(n, hosts=hosts, seed=seed)
    sim.run_for(0.5)
    insider = insider_of(sim)
    agent = sim.agents[leader]
    assert insider is not None and agent is not None
    return sim, leader, insider, agent.term


def assert_unchanged(sim: Sim, leader: str, term: int) -> None:
    assert sim.acting() == [leader]
    assert {(a.leader, a.term) for a in sim.live()} == {(leader, term)}
    assert max(sim.persisted.values()) < FORGED


def test_a_nodes_coordinator_with_a_higher_term_is_ignored_by_everyone() -> None:
    sim, leader, insider, term = settled()
    others = [n for n in sim.names if n != insider]
    for name in others:
        sim.forge(insider, name, Coordinator(term + 5))
    sim.run_for(1.0)
    assert_unchanged(sim, leader, term)
    refused = {(at, r.peer, r.term) for at, r in sim.refused if "may not lead" in r.reason}
    assert refused == {(name, insider, term + 5) for name in others}


def test_a_nodes_lease_request_is_rejected_by_every_host() -> None:
    sim, leader, insider, term = settled()
    hosts = sorted(sim.roster.hosts)
    rejects = sim.sent["LeaseReject"]
    for host in hosts:
        sim.forge(insider, host, LeaseRequest(term=term + 1, seq=1))
        sim.forge(insider, host, LeaseRequest(term=2**60, seq=2))
    sim.run_for(1.0)
    assert sim.sent["LeaseReject"] - rejects == 2 * len(hosts)  # each told no
    assert_unchanged(sim, leader, term)
    assert {at for at, r in sim.refused if r.peer == insider} == set(hosts)
    for host in hosts:
        agent = sim.agents[host]
        assert agent is not None and agent.bully.fence == term
        assert agent.holds_lease(leader, term, sim._local(host))
        assert not any(agent.holds_lease(insider, t, sim._local(host))
                       for t in (term, term + 1, 2**60))


def test_forged_gossip_of_a_live_hosts_death_is_refuted_and_never_believed() -> None:
    sim, leader, insider, term = settled()
    victim = sorted(sim.roster.hosts - {leader})[0]
    seen: dict[str, set[Status]] = {n: set() for n in sim.names if n != victim}

    def watch() -> None:
        for name, agent in sim.agents.items():
            if agent is not None and name != victim:
                seen[name].add(agent.status(victim))
    sim.checks.append(watch)
    agent = sim.agents[victim]
    assert agent is not None
    before = agent.members.incarnation
    for name in sim.names:
        if name not in (insider, victim):
            sim.forge(insider, name, Ping(1, name, "", 0, gossip=(
                Gossip("dead", victim, before + 1000, insider),)))
    sim.run_for(2.0)
    assert not [n for n, s in seen.items() if Status.DEAD in s], seen
    assert Status.SUSPECT in seen[leader]  # a reason to look, at most
    assert all(a.status(victim) is Status.ALIVE for a in sim.live() if a.me != victim)
    assert before < agent.members.incarnation < before + 10  # refuted, not inflated
    assert_unchanged(sim, leader, term)


@pytest.mark.parametrize("claim", ["insider", "host"])
def test_a_nodes_word_about_who_leads_changes_nothing(claim: str) -> None:
    sim, leader, insider, term = settled()
    named = insider if claim == "insider" else sorted(sim.roster.hosts - {leader})[0]
    for name in sim.names:
        if name != insider:
            sim.forge(insider, name, LeaderIs(named, term + 7))
    sim.run_for(1.0)
    assert_unchanged(sim, leader, term)
    assert len({at for at, r in sim.refused if r.peer == insider}) == sim.n - 1


@pytest.mark.parametrize("kind", KINDS)
def test_every_forgery_leaves_the_leader_and_the_term_alone(kind: str) -> None:
    sim, leader, insider, term = settled(7, hosts=3, seed=22)
    for k in range(3):
        forge(sim, insider, kind, k, k)
        sim.run_for(0.3)
    sim.run_for(1.0)
    assert_unchanged(sim, leader, term)
    assert all(a.status(h) is not Status.DEAD for a in sim.live() for h in sim.roster.hosts)


def test_holds_lease_names_the_leader_for_its_term_at_every_host_until_it_lapses() -> None:
    sim, leader, _, term = settled(5, hosts=3)
    hosts = sorted(sim.roster.hosts)
    others = [n for n in sim.names if n != leader]
    for host in hosts:
        agent = sim.agents[host]
        assert agent is not None
        now = sim._local(host)
        assert agent.holds_lease(leader, term, now)
        assert not agent.holds_lease(leader, term - 1, now)
        assert not agent.holds_lease(leader, term + 1, now)
        assert not any(agent.holds_lease(n, term, now) for n in others)
    nodes = [a for a in sim.live() if a.me not in sim.roster.hosts]
    assert not any(a.holds_lease(leader, term, sim._local(a.me)) for a in nodes)
    sim.crash(leader)
    sim.run_for(sim.timing.lease_duration)  # no renewal since: lapsed at every host
    for host in set(hosts) - {leader}:
        agent = sim.agents[host]
        assert agent is not None and not agent.holds_lease(leader, term, sim._local(host))
    sim.run_for(3.0)
    successor = settled_leader(sim)
    assert successor is not None and successor in sim.roster.hosts
    new = sim.agents[successor]
    assert new is not None and new.term > term
    assert all(a.holds_lease(successor, new.term, sim._local(a.me))
               for a in sim.live() if a.me in sim.roster.hosts)
