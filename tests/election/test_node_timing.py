"""Nodes are probed with more patience than hosts: a guest that stalls for seconds (TCG on a
busy machine, a SIGSTOPped agent) is at most suspect, one really gone is dead within
`node_dead_bound`, and the hosts' own timing (the leader's failover) is untouched."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudd.election.config import Timing
from cloudd.election.swim import Status

from .sim import Sim, run_until_leader, settled_leader, started

T = Timing.production()
#: Bound on the hosts' view healing after a stalled node resumes: it reads the pings that
#: waited for it, refutes in its acks, and dead members are pinged every dead_probe_interval.
REJOIN = 2 * T.dead_probe_interval + 4 * T.probe_interval


def worst_seen(sim: Sim, node: str) -> Callable[[], Status]:
    """Record, after every event, the worst status any running agent gives `node`."""
    order = [Status.ALIVE, Status.SUSPECT, Status.DEAD]
    worst = [Status.ALIVE]

    def check() -> None:
        for agent in sim.live():
            if agent.me != node:
                seen = agent.status(node)
                if order.index(seen) > order.index(worst[0]):
                    worst[0] = seen
    sim.checks.append(check)
    return lambda: worst[0]


def a_node(sim: Sim) -> str:
    return next(n for n in sim.names if n not in sim.roster.hosts)


@pytest.mark.parametrize(("stall", "worst"), [
    (0.5, Status.ALIVE),     # within the direct probe timeout: nobody even suspects it
    (3.0, Status.SUSPECT),   # past the probe's windows, well within the suspicion
    (8.0, Status.SUSPECT),
    (20.0, Status.DEAD),     # past the suspicion: dead, and back once it answers again
])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stalled_node_is_at_most_suspect_within_the_suspicion(
        stall: float, worst: Status, seed: int) -> None:
    sim, leader = started(7, hosts=3, seed=seed, timing=T)
    node = a_node(sim)
    sim.run_for(1.0)
    seen = worst_seen(sim, node)
    sim.stall(node, stall)
    sim.run_for(stall)
    sim.run_for(REJOIN)
    assert seen() is worst
    assert all(a.status(node) is Status.ALIVE for a in sim.live() if a.me != node)
    assert sim.acting() == [leader]  # a node's troubles never touch the election


def test_a_stall_shorter_than_the_node_timing_never_suspects_however_it_falls() -> None:
    """Every phase of a probe of the node: the stall starts at each tenth of a period."""
    for offset in range(10):
        sim, _ = started(5, hosts=3, seed=offset, timing=T)
        sim.run_for(1.0 + offset * T.probe_interval / 10)
        node = a_node(sim)
        seen = worst_seen(sim, node)
        sim.stall(node, T.node_probe_timeout * 0.9)
        sim.run_for(2 * T.node_probe_timeout + REJOIN)
        assert seen() is Status.ALIVE, offset


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_node_really_gone_is_dead_within_the_node_bound_and_not_before_its_suspicion(
        seed: int) -> None:
    sim, leader = started(7, hosts=3, seed=seed, timing=T)
    node = a_node(sim)
    sim.run_for(1.0)
    gone = sim.now
    sim.crash(node)
    died: dict[str, float] = {}
    bound = T.node_dead_bound(7)
    while sim.now - gone <= bound and len(died) < len(sim.live()):
        sim.run_for(0.01)
        for agent in sim.live():
            if agent.status(node) is Status.DEAD:
                died.setdefault(agent.me, sim.now - gone)
    assert set(died) == {a.me for a in sim.live()}, (died, bound)
    assert min(died.values()) >= T.node_suspicion
    assert sim.acting() == [leader]


def test_the_leaders_failover_keeps_the_hosts_timing_while_nodes_stall() -> None:
    sim, leader = started(7, hosts=3, seed=5, timing=T)
    for node in (n for n in sim.names if n not in sim.roster.hosts):
        sim.stall(node, 5.0)
    sim.crash(leader)
    took = run_until_leader(sim, bound=T.settle_bound(7))
    assert took is not None and took < 1.0
    successor = settled_leader(sim)
    assert successor is not None and successor in sim.roster.hosts
    agent = sim.agents[successor]
    assert agent is not None and agent.status(leader) is Status.DEAD


def test_hosts_keep_memberlists_timing() -> None:
    """A host gone silent is dead in under a second, as before nodes got their own timing."""
    sim, leader = started(7, hosts=3, seed=6, timing=T)
    host = next(h for h in sim.roster.hosts if h != leader)
    sim.run_for(1.0)
    gone = sim.now
    sim.crash(host)
    _, high = T.suspicion_timeouts(7)
    agent = sim.agents[leader]
    assert agent is not None
    while agent.status(host) is not Status.DEAD:
        sim.run_for(0.01)
        assert sim.now - gone < 2 * 6 * T.probe_interval + high + T.probe_interval
