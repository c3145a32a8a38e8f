"""Hypothesis: random fault schedules over the simulator never break the safety invariants.

Each example of the first test builds a cloud (3 to 9 members, 1 to 5 hosts, loss 0-20 %,
either no-quorum policy) and plays a random schedule of crashes, restarts, link cuts,
isolations, partitions and recoveries, with random pauses between them. The simulator
checks after *every* event: at most one acting leader per term, no two leaders' lease
intervals overlapping at all, acting only with a majority of host leases, no reused term
across restarts, persisted terms never decreasing. At the end, the faults are healed and
everyone restarted: exactly one acting leader must emerge within the stated bound (`heal`).
The second does the same with 10-40 members; the third then restarts a member that
outranks the leader and checks that it does not take over (no churn) and the term does not
move unless the leader re-established itself above a host's fence.
The last two add an insider: a node whose certificate forges leadership claims, lease
requests, probe headers and gossip (insider.py). Under random faults the invariants still
hold (and the simulator checks after every event that no node ever runs, leads or is
followed), no forged term is ever persisted, and healing still elects one leader; without
faults, the forgeries change no leader and no term, and nobody ever believes a host dead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloudd.election.swim import Status

from .insider import FORGED, KINDS, forge, insider_of
from .sim import Sim, play, run_until_leader, started

#: Scale the example counts up for a soak run: ELECTION_EXAMPLES_SCALE=20 pytest ...
SCALE = int(os.environ.get("ELECTION_EXAMPLES_SCALE", "1"))

FAULTS = ("crash", "restart", "cut", "isolate", "partition", "recover", "wait")


def heal(sim: Sim) -> None:
    """Heal everything: one acting leader must emerge (liveness once faults stop)."""
    sim.recover()
    sim.loss = 0.0
    for name in sim.names:
        if sim.agents[name] is None:
            sim.start(name)
    bound = sim.timing.settle_bound(sim.n) + sim.timing.dead_probe_interval * sim.n
    assert run_until_leader(sim, bound=bound) is not None, "no leader after healing"
    sim.run_for(0.5)
    assert len(sim.acting()) == 1

schedule = st.lists(
    st.tuples(st.sampled_from(FAULTS), st.integers(0, 100), st.integers(0, 100),
              st.floats(0.0, 0.6)),
    min_size=1, max_size=12)


@settings(max_examples=120 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), hosts=st.integers(1, 5), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.05, 0.2]), policy=st.sampled_from(["stop", "freeze"]),
       faults=schedule)
def test_random_fault_schedules_keep_every_safety_invariant(
        n: int, hosts: int, seed: int, loss: float, policy: str,
        faults: list[tuple[str, int, int, float]]) -> None:
    sim = Sim(n, hosts=min(hosts, n), seed=seed, loss=loss, policy=policy)
    sim.start_all()
    sim.run_for(0.3)
    play(sim, faults)
    heal(sim)


@settings(max_examples=15 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(10, 40), hosts=st.integers(3, 7), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.05]), faults=schedule)
def test_larger_clouds_under_random_faults(n: int, hosts: int, seed: int, loss: float,
                                           faults: list[tuple[str, int, int, float]]) -> None:
    sim = Sim(n, hosts=hosts, seed=seed, loss=loss)
    sim.start_all()
    sim.run_for(0.3)
    play(sim, faults)
    heal(sim)


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), hosts=st.integers(1, 5), seed=st.integers(0, 2**16),
       faults=schedule)
# Found at random: the top member, isolated, proposed terms alone and comes back with a
# persisted term above the leader's; a host granting the leader's refresh then refused its
# older term, and the leader counted it as fenced and stepped down (test_refresh.py).
# The first is the schedule first reported (seed 124, with the faults and first members
# reported; the rest of that example was not kept, and was drawn again until it failed).
@example(n=6, hosts=4, seed=124, faults=[("isolate", 15, 0, 0.052945062003943444),
                                         ("restart", 93, 0, 0.0),
                                         ("isolate", 53, 0, 0.11788632948248354),
                                         ("crash", 15, 25, 0.0),
                                         ("crash", 63, 0, 0.0),
                                         ("isolate", 0, 0, 0.30608825150961216),
                                         ("cut", 0, 95, 0.0),
                                         ("restart", 98, 0, 0.0),
                                         ("cut", 0, 0, 0.3938069954098437)])
@example(n=4, hosts=4, seed=494, faults=[("isolate", 0, 0, 0.22265625),
                                         ("wait", 0, 0, 0.27897048697164756),
                                         ("wait", 0, 0, 0.22265625)])
@example(n=7, hosts=4, seed=2042, faults=[("restart", 0, 0, 0.3203125),
                                          ("cut", 0, 0, 0.26953125),
                                          ("cut", 0, 0, 0.05859375),
                                          ("isolate", 1, 0, 0.40234375),
                                          ("cut", 0, 31, 0.0),
                                          ("restart", 0, 0, 0.328125)])
@example(n=8, hosts=4, seed=16467, faults=[("wait", 0, 0, 0.19921875),
                                           ("wait", 0, 0, 0.37109375),
                                           ("restart", 3, 0, 0.080078125),
                                           ("isolate", 1, 0, 0.5),
                                           ("crash", 1, 0, 0.30078125),
                                           ("crash", 0, 0, 0.439453125),
                                           ("isolate", 2, 0, 0.482421875)])
def test_no_churn_when_the_top_member_returns_after_any_history(
        n: int, hosts: int, seed: int, faults: list[tuple[str, int, int, float]]) -> None:
    sim = Sim(n, hosts=min(hosts, n), seed=seed)
    sim.start_all()
    sim.run_for(0.3)
    play(sim, faults)
    heal(sim)
    leader = sim.acting()[0]
    agent = sim.agents[leader]
    assert agent is not None
    term = agent.term
    returning = next(name for name in sim.roster.by_priority if name != leader)
    if not sim.roster.outranks(returning, leader):
        return  # the leader is already the top member: nobody can outrank it
    if returning in sim.roster.hosts and len(sim.roster.hosts) - 1 < sim.roster.quorum:
        return  # without that host there is no quorum: the cluster is not healthy meanwhile
    sim.crash(returning)
    sim.run_for(0.2)
    sim.start(returning)
    for _ in range(100):
        sim.run_for(0.02)
        assert sim.acting() in ([leader], []), f"{sim.acting()} took over from {leader}"
        # Nobody, the returning member included, follows anyone else meanwhile.
        believed = {name: a.bully.leader for name, a in sim.agents.items()
                    if a is not None and a.bully.leader and a.bully.leader != leader}
        assert not believed, f"members follow another leader than {leader}: {believed}"
    assert sim.acting() == [leader]
    # The term moves only if the leader re-established itself above a host's fence (its
    # restart forgot whom it granted), never because the leader stepped down and won again.
    if agent.term != term:
        assert (leader, "re-established under a higher term", agent.term) in [
            (name, e.reason, e.term) for name, e in sim.leadership], "the term moved"
    assert {(a.leader, a.term) for a in sim.live()} == {(leader, agent.term)}


forgeries = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 100), st.integers(0, 50),
              st.floats(0.0, 0.3)),
    min_size=1, max_size=12)


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), hosts=st.integers(1, 5), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.05, 0.2]), policy=st.sampled_from(["stop", "freeze"]),
       faults=schedule, forged=forgeries)
def test_an_insider_under_random_faults_breaks_no_safety_invariant(
        n: int, hosts: int, seed: int, loss: float, policy: str,
        faults: list[tuple[str, int, int, float]],
        forged: list[tuple[str, int, int, float]]) -> None:
    sim = Sim(n, hosts=min(hosts, n - 1), seed=seed, loss=loss, policy=policy)
    insider = insider_of(sim)
    assert insider is not None
    sim.start_all()
    sim.run_for(0.3)
    for i in range(max(len(faults), len(forged))):
        play(sim, faults[i:i + 1])
        for kind, pick, k, pause in forged[i:i + 1]:
            forge(sim, insider, kind, pick, k)
            sim.run_for(pause)
    assert max(sim.persisted.values()) < FORGED, "a forged term was persisted"
    heal(sim)


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), hosts=st.integers(1, 5), seed=st.integers(0, 2**16),
       forged=forgeries)
def test_an_insider_alone_moves_no_leader_no_term_and_kills_no_host(
        n: int, hosts: int, seed: int, forged: list[tuple[str, int, int, float]]) -> None:
    sim, leader = started(n, hosts=min(hosts, n - 1), seed=seed)
    sim.run_for(1.0)
    agent = sim.agents[leader]
    insider = insider_of(sim)
    assert agent is not None and insider is not None
    view = {(leader, agent.term)}
    assert {(a.leader, a.term) for a in sim.live()} == view

    def unmoved() -> None:
        assert sim.acting() == [leader], sim.acting()
        assert {(a.leader, a.term) for a in sim.live()} == view
        dead = [(a.me, h) for a in sim.live() for h in sim.roster.hosts
                if h != a.me and a.status(h) is Status.DEAD]
        assert not dead, f"believed dead: {dead}"
    sim.checks.append(unmoved)
    for kind, pick, k, pause in forged:
        forge(sim, insider, kind, pick, k)
        sim.run_for(pause)
    sim.run_for(1.0)
