"""A pool host that lost a term file relearns its terms before it grants or runs (recovery.py).

Tables for the pure rule (`witnesses_needed`, `TermProof`) and for the core's answers while
unproven; then the simulator: hosts restarted with a lost term file, under random faults,
keep every safety invariant (one acting leader per term, no overlapping leases, acting only
on a majority), and a cloud with enough proven hosts still elects one leader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudd.election.agent import AgentCore, Output
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.messages import (
    Coordinator,
    Election,
    LeaderIs,
    LeaseGrant,
    LeaseReject,
    LeaseRequest,
    Message,
    Ping,
    Resign,
    WhoLeads,
)
from cloudd.election.recovery import UNKNOWN, TermProof, witnesses_needed
from cloudd.election.states import ElectionRole
from cloudd.errors import RemoteProtocolError

from .sim import Sim, play, run_until_leader, settled_leader

ROSTER = Roster([Member("a", host=True), Member("b", host=True), Member("c", host=True),
                 Member("d")])
TIMING = Timing.local()
T0 = 100.0
#: When an unproven host first asks (its leases waited out).
READY = T0 + TIMING.lease_duration


@pytest.mark.parametrize(("hosts", "needed"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3),
                                               (7, 4)])
def test_witnesses_needed_meet_every_majority_but_this_host(hosts: int, needed: int) -> None:
    quorum = hosts // 2 + 1
    assert witnesses_needed(hosts, quorum) == needed
    # any `needed` of the other hosts meet any majority's other members
    others = hosts - 1
    assert hosts == 1 or needed + (quorum - 1) > others


@dataclass(frozen=True)
class Report:
    host: str
    highest: int
    at: float


PROOF_CASES = [
    ("two hosts vouch after the ask", [Report("a", 7, READY), Report("c", 9, READY)], True, 9),
    ("one host is not enough", [Report("a", 7, READY)], True, None),
    ("the floor wins over lower reports", [Report("a", 1, READY), Report("c", 2, READY)],
     True, 5),
    ("reports before the leases are out do not count",
     [Report("a", 7, READY - 0.01), Report("c", 9, READY)], True, None),
    ("nothing counts before the first ask", [Report("a", 7, READY), Report("c", 9, READY)],
     False, None),
    ("a node's word does not count", [Report("d", 7, READY), Report("c", 9, READY)], True, None),
    ("a host that cannot vouch does not count",
     [Report("a", UNKNOWN, READY), Report("c", 9, READY)], True, None),
    ("a host repeating itself counts once", [Report("c", 3, READY), Report("c", 9, READY)],
     True, None),
]


@pytest.mark.parametrize(("case", "reports", "asked", "proven"), PROOF_CASES,
                         ids=[c[0] for c in PROOF_CASES])
def test_the_proof(case: str, reports: list[Report], asked: bool, proven: int | None) -> None:
    floor = 5 if "floor" in case else 0
    proof = TermProof(others=frozenset({"a", "c"}), needed=2, ready_at=READY, floor=floor)
    assert proof.asks(READY - 0.01) == []
    if asked:
        assert proof.asks(READY) == ["a", "c"]
    for r in reports:
        proof.report(r.host, r.highest, r.at)
    assert proof.proven() == proven


def test_asks_only_the_silent_hosts_once_per_interval() -> None:
    proof = TermProof(others=frozenset({"a", "c"}), needed=2, ready_at=READY, ask_every=0.5)
    assert proof.asks(READY) == ["a", "c"]
    proof.report("a", 3, READY)
    assert proof.asks(READY + 0.4) == []
    assert proof.asks(READY + 0.5) == ["c"]


def test_a_pool_of_one_cannot_prove_and_says_what_to_do() -> None:
    proof = TermProof(others=frozenset(), needed=witnesses_needed(1, 1), ready_at=READY)
    assert not proof.possible
    assert "restore the term file" in proof.describe()


# -- the core while unproven -------------------------------------------------------------------

def unproven_b(*, floor: int = 0) -> AgentCore:
    core = AgentCore("b", ROSTER, timing=TIMING, rng=random.Random(3))
    out = core.start(T0, persisted_term=floor, proven=False)
    assert core.unproven and core.proven_fence() is None
    assert not [m for _, m in out.messages if isinstance(m, WhoLeads)], "asked too early"
    return core


def sent(out: Output, kind: type) -> list[tuple[str, Message]]:
    return [(p, m) for p, m in out.messages if isinstance(m, kind)]


def relearn(core: AgentCore, *, highest: dict[str, int], at: float = READY) -> Output:
    out = core.tick(at)
    assert sorted(p for p, _ in sent(out, WhoLeads)) == sorted(highest)
    for host, term in highest.items():
        out = core.step(host, LeaderIs("", 0, term), at)
    return out


def test_an_unproven_host_grants_nothing() -> None:
    core = unproven_b()
    out = core.step("a", LeaseRequest(term=3, seq=1), READY + 1)
    ((peer, reject),) = sent(out, LeaseReject)
    assert peer == "a" and isinstance(reject, LeaseReject) and "relearning" in reject.reason
    assert not core.holds_lease("a", 3, READY + 1)


def test_an_unproven_host_never_runs_nor_takes_an_election_over() -> None:
    core = unproven_b()
    t = T0
    while t < T0 + 5:
        t += 0.05
        out = core.tick(t)
        assert not sent(out, LeaseRequest) and core.role is not ElectionRole.CANDIDATE
    out = core.step("d", Election(0), t)
    assert not [m for _, m in out.messages if type(m).__name__ == "Answer"]
    ((_, answer),) = sent(out, LeaderIs)
    assert answer == LeaderIs("", 0, UNKNOWN)


def test_an_unproven_host_vouches_for_nothing_but_follows() -> None:
    core = unproven_b(floor=2)
    out = core.step("c", WhoLeads(0), T0 + 0.01)
    assert sent(out, LeaderIs) == [("c", LeaderIs("", 0, UNKNOWN))]
    out = core.step("a", Coordinator(7), T0 + 0.02)
    assert (core.role, core.leader, out.persist_term) == (ElectionRole.FOLLOWER, "a", 7)
    assert core.unproven  # following promises nothing


def test_enough_hosts_vouching_prove_the_fence_and_persist_it() -> None:
    core = unproven_b(floor=4)
    core.step("a", Coordinator(7), T0 + 0.02)
    out = relearn(core, highest={"a": 8, "c": 6})
    assert not core.unproven and core.proven_fence() == 8 and out.persist_term == 8
    assert any(e.kind == "term" and "relearned" in e.reason for e in out.events)
    # the leader of term 7 is fenced out of this host; a term above 8 is granted
    out = core.step("a", LeaseRequest(term=8, seq=2), READY + 0.01)
    assert sent(out, LeaseReject)
    out = core.step("a", LeaseRequest(term=9, seq=3), READY + 0.02)
    assert sent(out, LeaseGrant) and core.holds_lease("a", 9, READY + 0.02)


def test_a_nodes_answer_teaches_no_term_to_a_relearning_host() -> None:
    """Nodes are tenants: a node's `LeaderIs.highest`, asked for or not, neither counts
    toward the proof nor raises the fence it proves."""
    core = unproven_b(floor=2)
    core.tick(READY)
    core.step("d", LeaderIs("", 0, 99), READY)
    out = core.step("c", LeaderIs("", 0, 3), READY)
    assert core.unproven and out.persist_term is None
    out = core.step("a", LeaderIs("", 0, 4), READY)
    assert not core.unproven and core.proven_fence() == 4 and out.persist_term == 4


def test_a_proof_at_the_floor_is_written_as_proven_too() -> None:
    core = unproven_b(floor=12)
    out = relearn(core, highest={"a": 3, "c": 4})
    assert out.persist_term == 12 and core.proven_fence() == 12


def test_a_negative_vouch_is_a_protocol_error() -> None:
    core = unproven_b()
    with pytest.raises(RemoteProtocolError, match="negative term"):
        core.step("a", LeaderIs("", 0, -2), T0 + 0.01)


def test_hosts_following_a_previous_life_are_told_to_elect_another() -> None:
    core = unproven_b()
    out = core.step("a", Ping(1, "b", "b", 6), T0 + 0.01)
    assert ("a", Resign(6)) in out.messages
    assert core.role is not ElectionRole.CANDIDATE


# -- the simulator ---------------------------------------------------------------------------

class LossySim(Sim):
    """Agents restarted with a lost term file (`lose`) start unproven, and stay so across
    restarts until they relearn their terms (the file says `unproven N` until then)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lost: set[str] = set()

    def lose(self, name: str) -> None:
        if self.agents[name] is not None:
            self.crash(name)
        self.persisted[name] = 0
        self.lost.add(name)
        self.start(name)

    def start(self, name: str) -> None:
        self.life[name] += 1
        agent = AgentCore(name, self.roster, timing=self.timing,
                          rng=random.Random(self.rng.random()))
        self.agents[name] = agent
        self._apply(name, agent.start(self._local(name), persisted_term=self.persisted[name],
                                      proven=name not in self.lost))

    def _apply(self, name: str, out: Output) -> None:
        if name in self.lost and out.persist_term is not None:
            # the file lost what it held: only the rest of the run must not go down
            self.persisted[name] = min(self.persisted[name], out.persist_term - 1)
        super()._apply(name, out)
        agent = self.agents[name]
        if agent is not None and not agent.unproven:
            self.lost.discard(name)

    def fault(self, kind: str, a: int, b: int) -> None:
        if kind == "lose":
            self.lose(self.names[a % self.n])
        else:
            super().fault(kind, a, b)

    def proven_hosts(self) -> int:
        return len(self.roster.hosts - self.lost)


def test_a_follower_host_with_a_lost_term_file_relearns_and_the_cloud_fails_over() -> None:
    sim = LossySim(5, hosts=3, seed=4)
    sim.start_all()
    assert run_until_leader(sim, bound=sim.timing.settle_bound(5)) is not None
    leader = settled_leader(sim)
    assert leader is not None
    host = next(h for h in sorted(sim.roster.hosts) if h != leader)
    sim.lose(host)
    agent = sim.agents[host]
    assert agent is not None and agent.unproven
    sim.run_for(2.0)
    assert not agent.unproven and host not in sim.lost
    assert sim.acting() == [leader]
    term = agent.proven_fence()
    sim.crash(leader)
    assert run_until_leader(sim, bound=sim.timing.settle_bound(5) + 2) is not None
    new = settled_leader(sim)
    assert new is not None and new != leader
    new_agent = sim.agents[new]
    assert new_agent is not None and term is not None and new_agent.term > term


LOSSY_FAULTS = ("crash", "restart", "lose", "cut", "isolate", "recover", "wait")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 7), hosts=st.integers(2, 5), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.05]),
       faults=st.lists(st.tuples(st.sampled_from(LOSSY_FAULTS), st.integers(0, 100),
                                 st.integers(0, 100), st.floats(0.0, 0.6)),
                       min_size=1, max_size=12))
def test_lost_term_files_under_random_faults_keep_every_safety_invariant(
        n: int, hosts: int, seed: int, loss: float,
        faults: list[tuple[str, int, int, float]]) -> None:
    sim = LossySim(n, hosts=min(hosts, n), seed=seed, loss=loss)
    sim.start_all()
    sim.run_for(0.3)
    play(sim, faults)
    sim.recover()
    sim.loss = 0.0
    for name in sim.names:
        if sim.agents[name] is None:
            sim.start(name)
    bound = sim.timing.settle_bound(n) + sim.timing.dead_probe_interval * n + 2.0
    if sim.proven_hosts() < sim.roster.quorum:
        sim.run_for(bound)  # too few hosts can vouch: nobody may lead, safety still holds
        return
    assert run_until_leader(sim, bound=bound) is not None, "no leader after healing"
    sim.run_for(1.0)
    assert len(sim.acting()) == 1
    assert sim.proven_hosts() == len(sim.roster.hosts), f"still relearning: {sim.lost}"


def test_a_term_granted_before_the_loss_is_never_granted_to_another() -> None:
    """The danger the proof guards against: hosts w and z granted term T (w won it) while y
    was down; z loses its file and w dies; y comes back and proposes T, which it never heard
    of. Without the proof z would grant it and T would have two leaders (the simulator's
    check fails); with it z refuses until two other hosts vouch, which needs w back, and the
    next leader's term is above T."""
    sim = LossySim(3, hosts=3, seed=11)
    sim.start_all()
    assert run_until_leader(sim, bound=sim.timing.settle_bound(3)) is not None
    first = settled_leader(sim)
    assert first is not None
    y = next(h for h in sim.names if h != first)
    sim.crash(y)
    sim.crash(first)
    sim.start(first)
    assert run_until_leader(sim, bound=10.0) is not None
    w = settled_leader(sim)
    assert w is not None
    w_agent = sim.agents[w]
    assert w_agent is not None
    term = w_agent.term
    assert sim.persisted[y] + 1 == term, "y would not propose T"
    z = next(h for h in sim.names if h not in (w, y))
    sim.lose(z)
    sim.crash(w)
    sim.run_for(0.5)
    sim.start(y)
    sim.run_for(5.0)
    assert sim.acting() == [] and z in sim.lost  # nobody may lead: z cannot relearn yet
    sim.start(w)
    assert run_until_leader(sim, bound=10.0) is not None
    leader = settled_leader(sim)
    assert leader is not None
    agent = sim.agents[leader]
    assert agent is not None and agent.term > term and z not in sim.lost
