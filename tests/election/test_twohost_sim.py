"""Two-host pools in the simulator: real `AgentCore`s, a fence that powers the other host off.

The simulator plays the shell as in sim.py and, here, the fence command too: a fence asked
for by one host powers the other off (`crash`) after `FENCE_TIME` and reports success, unless
the fencer's fence device is out of reach (`fails`), when it reports failure and powers
nothing off. The fence has its own path: a cut between the hosts does not stop it.
Sim's invariants run after every event (one acting leader per term, no two leaders' leases
overlapping in global time, an acting leader holding real leases at a quorum of hosts),
with one change the rule makes: a host powered off by a fence counts as holding the lease.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from cloudd.election.agent import AgentCore, Output
from cloudd.election.config import TwoHost
from cloudd.election.members import Roster
from cloudd.election.twohost import PeerState
from tests.election.sim import Sim, settled_leader

FENCE_TIME = 0.5
SETTINGS = TwoHost(fence_delay=3.0, wait_for_all=8.0, fence_retry=4.0)


@dataclass
class TwoHostSim(Sim):
    fails: set[str] = field(default_factory=set)
    #: (global time due, fencer, target)
    pending: list[tuple[float, str, str]] = field(default_factory=list)
    #: hosts a fence powered off and nobody started since
    off: set[str] = field(default_factory=set)
    #: (global time, fencer, target, ok) of every fence that finished
    fences: list[tuple[float, str, str, bool]] = field(default_factory=list)
    #: (global time, agent, term) of every first step of an agent into acting, per term
    acted: list[tuple[float, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.roster = Roster(self.roster.members, two_host=SETTINGS)
        self.high, self.low = [n for n in self.roster.by_priority if n in self.roster.hosts]

    def start(self, name: str) -> None:
        self.off.discard(name)
        super().start(name)

    def core(self, name: str) -> AgentCore:
        agent = self.agents[name]
        assert agent is not None, f"{name} is down"
        return agent

    def run_until(self, t: float) -> None:
        # In short steps: a fence asked for during a step finishes at its own time.
        while True:
            stop = min([t, self.now + FENCE_TIME / 2, *(p[0] for p in self.pending)])
            super().run_until(stop)
            for fence in sorted(p for p in self.pending if p[0] <= self.now):
                self.pending.remove(fence)
                self._fence(*fence)
            if stop >= t:
                return

    def _fence(self, at: float, fencer: str, target: str) -> None:
        if self.agents[fencer] is None:
            return  # powered off meanwhile: its fence never finished
        ok = fencer not in self.fails
        if ok and self.agents[target] is not None:
            self.crash(target)
        if ok:
            self.off.add(target)
        self.fences.append((self.now, fencer, target, ok))
        agent = self.core(fencer)
        self._apply(fencer, agent.fence_result(target, ok=ok, reason="sim",
                                               now=self._local(fencer)))

    def _apply(self, name: str, out: Output) -> None:
        if out.fence is not None:
            self.pending.append((self.now + FENCE_TIME, name, out.fence))
        if out.acting and not any(a == name and t == out_term(self, name)
                                  for _, a, t in self.acted):
            self.acted.append((self.now, name, out_term(self, name)))
        super()._apply(name, out)

    def _check_acting(self, name: str, until: float) -> None:
        # A host the fence powered off grants nothing, and counts: the quorum's other half;
        # so does one back from its fence for the grace the rule gives it, while it has
        # granted nobody else its lease.
        agent = self.core(name)
        now = self._local(name)
        counted = set(self.off & self.roster.hosts)
        stand_ins = agent.pair.stand_ins() if agent.pair is not None else {}
        for host, until_local in stand_ins.items():
            grantor = self._grantor(host)
            if until_local > now and (grantor is None or grantor.holder in ("", name)
                                      or grantor.expires - self.offset[host] <= self.now):
                counted.add(host)
        quorum = self.roster.quorum
        self.roster.quorum = quorum - len(counted)
        try:
            super()._check_acting(name, until)
        finally:
            self.roster.quorum = quorum


def out_term(sim: Sim, name: str) -> int:
    agent = sim.agents[name]
    assert agent is not None
    return agent.term


def started(seed: int = 1) -> TwoHostSim:
    sim = TwoHostSim(4, hosts=2, seed=seed)
    sim.start_all()
    for _ in range(400):
        sim.run_for(0.01)
        if settled_leader(sim) is not None:
            return sim
    raise AssertionError("no leader after a cold start of both hosts")


def run_until_acting(sim: TwoHostSim, who: str, *, bound: float) -> float:
    """Run until `who` acts alone, after a moment when nobody acted (the lost host's lease
    lapses first); the time it took."""
    t0 = sim.now
    while sim.acting():
        sim.run_for(0.01)
        assert sim.now - t0 <= bound, f"{sim.acting()} still acting after {bound} s"
    while sim.now - t0 <= bound:
        sim.run_for(0.01)
        if settled_leader(sim) == who:
            return sim.now - t0
    raise AssertionError(f"{who} did not act within {bound} s; fences: {sim.fences}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cold_start_of_both_needs_no_fence(seed: int) -> None:
    sim = started(seed)
    assert settled_leader(sim) == sim.high
    assert not sim.fences and not sim.pending
    assert sim.core(sim.low).pair is not None
    assert sim.core(sim.low).pair.state is PeerState.PAIRED  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_power_loss_of_the_follower(seed: int) -> None:
    """The higher host fences at once, then leads; the record's quorum is itself."""
    sim = started(seed)
    t0 = sim.now
    sim.crash(sim.low)
    took = run_until_acting(sim, sim.high, bound=10.0)
    assert [f[1:] for f in sim.fences] == [(sim.high, sim.low, True)]
    fenced_at = sim.fences[0][0]
    assert all(at >= fenced_at for at, who, _ in sim.acted if at > t0 and who == sim.high)
    assert sim.core(sim.high).stand_ins() == {sim.low}
    assert took < SETTINGS.fence_delay  # no delay for the host ranked higher


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_power_loss_of_the_leader(seed: int) -> None:
    """The lower host waits its delay, fences, then leads in a higher term."""
    sim = started(seed)
    term = sim.core(sim.high).term
    t0 = sim.now
    sim.crash(sim.high)
    run_until_acting(sim, sim.low, bound=15.0)
    (fenced_at, fencer, target, ok), = sim.fences
    assert (fencer, target, ok) == (sim.low, sim.high, True)
    assert fenced_at - t0 >= SETTINGS.fence_delay
    assert sim.core(sim.low).term > term


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_split_the_higher_wins_the_race(seed: int) -> None:
    sim = started(seed)
    sim.cut(sim.high, sim.low)
    run_until_acting(sim, sim.high, bound=10.0)
    sim.run_for(SETTINGS.fence_delay * 2)
    assert [f[1:] for f in sim.fences] == [(sim.high, sim.low, True)]
    assert sim.agents[sim.low] is None
    assert not any(who == sim.low for _, who, _ in sim.acted)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_split_with_the_higher_fence_failing(seed: int) -> None:
    """The higher host's fence fails: it does nothing; the lower fences it after its delay."""
    sim = started(seed)
    t0 = sim.now
    sim.fails.add(sim.high)
    sim.cut(sim.high, sim.low)
    run_until_acting(sim, sim.low, bound=15.0)
    assert (sim.high, sim.low, False) in [f[1:] for f in sim.fences]
    assert [f[1:] for f in sim.fences if f[3]] == [(sim.low, sim.high, True)]
    assert not any(who == sim.high and at > t0 for at, who, _ in sim.acted)


def test_both_fences_failing_nobody_acts() -> None:
    sim = started()
    sim.fails |= {sim.high, sim.low}
    sim.cut(sim.high, sim.low)
    sim.run_for(2.0)
    t0 = sim.now
    sim.run_for(20.0)
    assert sim.acting() == []
    assert not any(at > t0 for at, _, _ in sim.acted)
    assert len([f for f in sim.fences if f[1] == sim.high]) >= 3  # retried, never done


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fenced_host_back_follows_the_survivor(seed: int) -> None:
    """The lower host is fenced, then powered on again: it follows the higher, which keeps
    leading in the same term (no new election), and soon counts by its own grant again."""
    sim = started(seed)
    sim.crash(sim.low)
    run_until_acting(sim, sim.high, bound=10.0)
    term = sim.core(sim.high).term
    sim.run_for(2.0)
    sim.start(sim.low)
    sim.run_for(3.0)
    assert settled_leader(sim) == sim.high and sim.core(sim.high).term == term
    assert sim.core(sim.low).leader == sim.high
    high = sim.core(sim.high)
    assert high.pair is not None and high.pair.state is PeerState.PAIRED
    assert high.stand_ins() == frozenset()
    holder = high.bully.holder
    assert holder is not None and sim.low in holder.valid_until  # its own grant again
    assert len(sim.fences) == 1


def test_leader_back_after_its_fence_follows_the_survivor() -> None:
    sim = started(4)
    sim.crash(sim.high)
    run_until_acting(sim, sim.low, bound=15.0)
    term = sim.core(sim.low).term
    sim.start(sim.high)
    sim.run_for(3.0)
    assert settled_leader(sim) == sim.low and sim.core(sim.low).term == term
    assert sim.core(sim.high).leader == sim.low


@pytest.mark.parametrize("alone", ["high", "low"])
def test_cold_start_with_one_host(alone: str) -> None:
    """Only one host comes up: it acts on nothing until wait_for_all has passed (plus the
    delay on the lower one), then fences the other and leads."""
    sim = TwoHostSim(4, hosts=2, seed=9)
    me = sim.high if alone == "high" else sim.low
    for name in sim.names:
        if name in sim.roster.hosts and name != me:
            continue
        sim.start(name)
    bound = SETTINGS.wait_for_all + (0 if alone == "high" else SETTINGS.fence_delay)
    sim.run_for(bound - 0.1)
    assert sim.acting() == [] and not sim.fences
    run_until_acting(sim, me, bound=3.0)
    assert [f[1:] for f in sim.fences] == [(me, next(iter(sim.roster.hosts - {me})), True)]


def test_cold_start_other_host_within_the_bound() -> None:
    sim = TwoHostSim(4, hosts=2, seed=5)
    sim.start(sim.low)
    sim.run_for(SETTINGS.wait_for_all / 2)
    assert sim.acting() == []
    for name in sim.names:
        if name != sim.low:
            sim.start(name)
    run_until_acting(sim, sim.high, bound=5.0)
    assert not sim.fences


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_never_two_acting(seed: int) -> None:
    """Power losses, restarts, cuts between the hosts and failing fence devices, in a seeded
    random order: the simulator's invariants hold after every event (one acting host at a
    time, one per term), and whenever both hosts are up and linked, one of them acts again."""
    sim = started(seed)
    # No bound on a start's wait (the default): a host alone after a restart waits for its
    # peer, from which it learns the terms used meanwhile. With a bound, a host alone acts on
    # its own terms and record, which may repeat the other's (docs/operations.md).
    sim.roster = Roster(sim.roster.members, two_host=replace(SETTINGS, wait_for_all=None))
    for agent in sim.live():
        sim._apply(agent.me, agent.change_roster(sim.roster, sim._local(agent.me)))
    rng = sim.rng
    hosts = sorted(sim.roster.hosts)
    for _ in range(8):
        fault = rng.choice(["crash", "start", "cut", "heal", "fails", "fence-ok"])
        host = rng.choice(hosts)
        if fault == "crash" and sim.agents[host] is not None:
            sim.crash(host)
        elif fault == "start" and sim.agents[host] is None:
            sim.start(host)
        elif fault == "cut":
            sim.cut(*hosts)
        elif fault == "heal":
            sim.recover()
        elif fault == "fails":
            sim.fails.add(host)
        else:
            sim.fails.discard(host)
        sim.run_for(rng.uniform(0.2, 2 * SETTINGS.fence_delay))
    sim.recover()
    sim.fails.clear()
    for host in hosts:
        if sim.agents[host] is None:
            sim.start(host)
    t0 = sim.now
    while settled_leader(sim) is None:
        sim.run_for(0.05)
        assert sim.now - t0 < SETTINGS.wait_for_all * 3, (sim.fences, sim.acted)
