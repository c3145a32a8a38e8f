"""A new manifest generation changes the roster: nodes come and go without disturbing the
election; a dropped member gets nothing; a change of the pool hosts is the shell's to make."""

from __future__ import annotations

import pytest

from cloudd.election.agent import AgentCore
from cloudd.election.members import Member, Roster
from cloudd.election.messages import Ping
from cloudd.election.swim import Status
from cloudd.errors import LocalProtocolError, RemoteProtocolError

from .sim import started


def _without(roster: Roster, name: str, *, plus: tuple[Member, ...] = ()) -> Roster:
    return Roster([*(m for m in roster.members if m.name != name), *plus])


def test_nodes_come_and_go_and_the_leader_keeps_its_term() -> None:
    sim, leader = started(6, hosts=3, seed=4)
    term = sim.agents[leader].term  # type: ignore[union-attr]
    node = next(n for n in sim.names if n not in sim.roster.hosts)
    sim.crash(node)  # the dropped node's VM goes away with its generation
    sim.run_for(0.5)
    new = _without(sim.roster, node, plus=(Member("m9000"),))
    assert sim.change_roster(new) == ["m9000"]
    sim.start("m9000")
    sim.run_for(10.0)
    assert sim.acting() == [leader]
    for agent in sim.live():
        assert agent.term == term and agent.leader == leader
        assert node not in agent.roster and agent.status("m9000") is Status.ALIVE
        assert node not in agent.describe(sim._local(agent.me))["not_alive"]  # type: ignore[operator]
    assert [e.detail for _, e in sim.leadership if e.term > term] == []


def test_a_dropped_member_gets_nothing() -> None:
    sim, leader = started(5, hosts=3, seed=2)
    node = next(n for n in sim.names if n not in sim.roster.hosts)
    sim.crash(node)
    sim.run_for(0.5)
    sim.change_roster(_without(sim.roster, node))
    agent = sim.agents[leader]
    assert agent is not None
    with pytest.raises(RemoteProtocolError, match="non-member"):
        agent.step(node, Ping(1, leader, leader, agent.term), sim._local(leader))


def test_a_change_of_the_pool_hosts_is_refused_by_the_core() -> None:
    sim, leader = started(5, hosts=3, seed=3)
    agent = sim.agents[leader]
    assert isinstance(agent, AgentCore)
    host = next(h for h in sorted(sim.roster.hosts) if h != leader)
    with pytest.raises(LocalProtocolError, match="changes the pool hosts"):
        agent.change_roster(_without(sim.roster, host), sim._local(leader))
    pool = sim.roster.pool()
    reordered = Roster([*reversed(pool), *(m for m in sim.roster.members if not m.host)])
    with pytest.raises(LocalProtocolError, match="changes the pool hosts"):  # ranks change
        agent.change_roster(reordered, sim._local(leader))
    with pytest.raises(LocalProtocolError, match="not a member of the new roster"):
        agent.change_roster(_without(sim.roster, leader), sim._local(leader))
    assert agent.roster is sim.roster  # nothing changed
