"""Deterministic scenarios over the simulated network, at n = 3, 5, 50 and 1,000.

The simulator checks the safety invariants after every event (see sim.py); these tests add
the liveness ones: exactly one acting leader within a stated bound, in the connected
majority with the hosts, and no churn when a higher-priority member comes back.
The bound is `Timing.settle_bound(n)`: a few probe periods to find a death, the longest
suspicion timeout, one lease, the coordinator timeout and two candidate retries.
"""

from __future__ import annotations

import pytest

from cloudd.election.config import Timing
from cloudd.election.states import ElectionRole
from cloudd.election.swim import Status

from .sim import Sim, run_until_leader, settled_leader, started


@pytest.mark.parametrize("n", [3, 5, 50])
@pytest.mark.parametrize("seed", [1, 2])
def test_cold_start_elects_the_top_member_and_everyone_follows(n: int, seed: int) -> None:
    sim, leader = started(n, seed=seed)
    assert leader == sim.roster.by_priority[0]
    sim.run_for(1.0)
    assert sim.acting() == [leader]
    assert {a.leader for a in sim.live()} == {leader}
    assert len({a.term for a in sim.live()}) == 1


@pytest.mark.parametrize("n", [3, 5, 50])
def test_leader_crash_fails_over_within_the_bound_and_raises_the_term(n: int) -> None:
    sim, leader = started(n, hosts=3 if n < 50 else 5)
    sim.run_for(0.5)
    term = sim.agents[leader].term  # type: ignore[union-attr]
    sim.crash(leader)
    took = run_until_leader(sim, bound=sim.timing.settle_bound(n))
    assert took is not None, f"no successor within {sim.timing.settle_bound(n):.2f}s"
    successor = settled_leader(sim)
    assert successor == sim.roster.by_priority[1]
    assert sim.agents[successor].term > term  # type: ignore[union-attr]


def test_isolated_leader_stops_acting_and_the_majority_elects_another() -> None:
    sim, leader = started(5)
    sim.run_for(0.5)
    sim.isolate(leader)
    rest = set(sim.names) - {leader}
    assert run_until_leader(sim, bound=sim.timing.settle_bound(5), within=rest) is not None
    sim.run_for(1.0)
    assert leader not in sim.acting()
    assert sim.agents[leader].role is not ElectionRole.LEADER  # policy 'stop' resigned  # type: ignore[union-attr]
    sim.recover()
    sim.run_for(2.0)
    new = settled_leader(sim)
    assert new is not None and new != leader
    assert {a.leader for a in sim.live()} == {new}  # the split healed, no churn back


def test_minority_without_host_quorum_never_acts() -> None:
    sim, _ = started(5, hosts=3)
    hosts = sorted(sim.roster.hosts)
    minority = {hosts[0]} | {n for n in sim.names if n not in sim.roster.hosts}
    sim.partition(minority)
    sim.run_for(3.0)
    assert not [n for n in sim.acting() if n in minority]
    majority = set(sim.names) - minority
    assert settled_leader(sim, majority) is not None


def test_freeze_policy_keeps_the_leader_idle_until_the_quorum_returns() -> None:
    sim, leader = started(3, hosts=3, policy="freeze")
    sim.isolate(leader)
    sim.run_for(2.0)
    agent = sim.agents[leader]
    assert agent is not None and not agent.is_acting(sim._local(leader))
    others = set(sim.names) - {leader}
    assert settled_leader(sim, others) is not None  # the others went on without it
    sim.recover()
    sim.run_for(2.0)
    assert len(sim.acting()) == 1


def test_no_churn_when_a_higher_priority_member_returns() -> None:
    sim, top = started(5, seed=3)
    sim.crash(top)
    assert run_until_leader(sim, bound=sim.timing.settle_bound(5)) is not None
    incumbent = settled_leader(sim)
    term = sim.agents[incumbent].term  # type: ignore[index,union-attr]
    sim.start(top)
    for _ in range(300):  # 3 s, checked every 10 ms
        sim.run_for(0.01)
        assert sim.acting() in ([incumbent], []), sim.acting()
    assert sim.acting() == [incumbent]
    assert sim.agents[incumbent].term == term  # type: ignore[index,union-attr]
    assert sim.agents[top].leader == incumbent  # type: ignore[union-attr]


def test_restarted_leader_never_reuses_its_term() -> None:
    sim, leader = started(3, hosts=3, seed=4)
    used = sim.persisted[leader]
    for _ in range(3):
        sim.crash(leader)
        sim.run_for(0.05)
        for name in sim.names:  # everyone restarts: only persisted terms survive
            if sim.agents[name] is not None:
                sim.crash(name)
        sim.start_all()
        assert run_until_leader(sim, bound=sim.timing.settle_bound(3)) is not None
        leader = settled_leader(sim)  # type: ignore[assignment]
        agent = sim.agents[leader]
        assert agent is not None and agent.term > used
        used = agent.term


def test_lossy_network_still_elects_one_leader() -> None:
    sim = Sim(5, hosts=3, seed=5, loss=0.1)
    sim.start_all()
    assert run_until_leader(sim, bound=2 * sim.timing.settle_bound(5)) is not None
    sim.run_for(2.0)
    assert len(sim.acting()) <= 1


def test_a_thousand_members_cold_start_and_fail_over() -> None:
    """The lighter large scenario: production timing, one cold start, one failover."""
    sim = Sim(1000, hosts=10, seed=6, timing=Timing.production())
    sim.start_all()
    assert run_until_leader(sim, bound=2.0, step=0.05) is not None
    leader = settled_leader(sim)
    assert leader == sim.roster.by_priority[0]
    sim.crash(leader)  # type: ignore[arg-type]
    before = sim.election_messages()
    took = run_until_leader(sim, bound=sim.timing.settle_bound(1000), step=0.05)
    assert took is not None
    assert settled_leader(sim) == sim.roster.by_priority[1]
    # O(n): the successor's Coordinator to everyone plus a few lease rounds, not n^2.
    assert sim.election_messages() - before < 3 * 1000


def test_hosts_suspect_a_leader_whose_renewals_stop_before_any_probe_would() -> None:
    sim, leader = started(5, seed=7)
    sim.run_for(0.3)
    sim.crash(leader)
    sim.run_for(2.5 * sim.timing.renew_interval + 0.01)
    for host in sim.roster.hosts - {leader}:
        agent = sim.agents[host]
        assert agent is not None and agent.status(leader) is not Status.ALIVE, host


def test_a_hosts_own_failed_candidacy_does_not_lock_the_incumbent_out() -> None:
    sim, leader = started(5, hosts=3, seed=8)
    term = sim.agents[leader].term  # type: ignore[union-attr]
    host = sorted(sim.roster.hosts - {leader})[0]
    sim.isolate(host)  # alone, it runs for leader again and again, and fails
    sim.run_for(1.5)
    lonely = sim.agents[host]
    assert lonely is not None and lonely.bully.persisted > term  # it did propose
    assert sim.acting() == [leader]  # the other two hosts are a majority
    sim.recover()
    sim.run_for(1.0)
    assert sim.acting() == [leader] and sim.agents[leader].term == term  # type: ignore[union-attr]
    assert lonely.bully.grantor is not None and lonely.bully.grantor.holder == leader
    assert {a.leader for a in sim.live()} == {leader}


def test_a_host_fenced_by_another_candidate_is_won_back_under_a_higher_term() -> None:
    sim, leader = started(7, hosts=5, seed=11)
    by_rank = [n for n in sim.roster.by_priority if n != leader]
    host = [n for n in by_rank if n in sim.roster.hosts][-1]
    rival = next(n for n in by_rank if n in sim.roster.hosts)
    assert sim.roster.outranks(rival, host)
    term = sim.agents[leader].term  # type: ignore[union-attr]
    # Two hosts of five apart: rival runs; host's lease to the leader lapses; it grants
    # rival a higher term, which is no majority; the leader keeps three hosts.
    sim.partition({host, rival})
    sim.run_for(1.5)
    fenced = sim.agents[host]
    assert fenced is not None and fenced.bully.fence > term
    assert sim.acting() == [leader]
    sim.recover()
    sim.run_for(1.0)
    agent = sim.agents[leader]
    assert sim.acting() == [leader] and agent is not None
    assert agent.term > term and agent.term >= fenced.bully.fence  # re-established above it
    assert {a.leader for a in sim.live()} == {leader}


def test_describe_summarizes_an_agent_for_inspect() -> None:
    sim, leader = started(3, hosts=3, seed=9)
    other = next(n for n in sim.names if n != leader)
    sim.crash(other)
    sim.run_for(2.0)
    agent = sim.agents[leader]
    assert agent is not None
    info = agent.describe(sim._local(leader))
    assert info["role"] == "leader" and info["leader"] == leader and info["acting"] is True
    (doubt,) = info["not_alive"].values()  # type: ignore[attr-defined]
    assert list(info["not_alive"]) == [other]  # type: ignore[call-overload]
    assert doubt["status"] == "dead" and doubt["since"] <= sim._local(leader)
    assert doubt["reason"].endswith("of suspicion")


def test_a_host_backs_the_leader_only_while_the_lease_it_granted_holds() -> None:
    """`backs_me`: the leader's proof that a pool host answered within a lease (its
    controller never reads such a host as dead, whatever gossip says yet)."""
    sim, leader = started(3, hosts=3, seed=4)
    core = sim.agents[leader]
    assert core is not None
    others = [n for n in sim.names if n != leader]
    assert all(core.backs_me(h, sim._local(leader)) for h in others)
    for name in others:
        follower = sim.agents[name]
        assert follower is not None and not follower.backs_me(leader, sim._local(name))
    gone = others[0]
    sim.crash(gone)
    sim.run_for(sim.timing.lease_duration * 3)
    assert settled_leader(sim) == leader  # two of three hosts still grant
    assert not core.backs_me(gone, sim._local(leader))
    assert core.backs_me(others[1], sim._local(leader))
