"""Five real agents, each in its own network namespace: failover, partition, heal, rejoin.

Every poll also checks the safety invariant across the agents: never two agents acting in the
same term, and never an agent acting that is cut off from the host majority (after its lease).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cloudd_lab.agentlab import AgentLab

pytestmark = pytest.mark.netns

#: Generous bounds (the machine is shared); the benchmark measures the real figures.
FAILOVER_BOUND = 30.0


class Watch:
    """Polls the lab and remembers every (term -> acting agents) it saw."""

    def __init__(self, lab: AgentLab) -> None:
        self.lab = lab
        self.seen: dict[int, set[str]] = {}

    def poll(self, names: list[str] | None = None) -> list[tuple[str, int]]:
        acting = self.lab.acting(names)
        terms: dict[int, list[str]] = {}
        for name, term in acting:
            terms.setdefault(term, []).append(name)
            self.seen.setdefault(term, set()).add(name)
        for term, names_ in terms.items():
            assert len(names_) == 1, f"two agents acting in term {term}: {names_}"
        return acting

    def leader_among(self, names: list[str]) -> tuple[str, int] | None:
        self.poll(names)
        return self.lab.one_leader(names)

    def settle(self, names: list[str], what: str) -> tuple[str, int]:
        return self.lab.wait_for(what, lambda: self.leader_among(names),
                                 timeout=FAILOVER_BOUND)


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab("el5", hosts=5, subnet="10.234.5.0/24") as lab:
        lab.start_all()
        yield lab


def test_failover_partition_heal_and_rejoin(lab: AgentLab) -> None:
    watch = Watch(lab)
    everyone = list(lab.agents)
    leader, term = watch.settle(everyone, "a first leader")

    # kill -9 the leader: a new leader acts, in a higher term
    lab.kill(leader)
    t0 = time.monotonic()
    rest = [n for n in everyone if n != leader]
    new, new_term = watch.settle(rest, "a new leader after kill -9")
    print(f"\nkill -9 {leader} -> {new} acting in term {new_term} after "
          f"{time.monotonic() - t0:.2f} s")
    assert new != leader and new_term > term

    # the old leader comes back: it rejoins and does not depose anyone
    lab.start(leader)
    lab.wait_for("the old leader follows", lambda: (
        (s := lab.status(leader)) is not None and s.get("leader") == new))
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # a few seconds of stability: no churn
        assert watch.leader_among(everyone) in (None, (new, new_term))
        time.sleep(0.1)
    assert watch.settle(everyone, "the same leader after the rejoin") == (new, new_term)

    # cut the leader off: it stops acting; the majority elects another leader
    lab.cut(new)
    t0 = time.monotonic()
    majority = [n for n in everyone if n != new]
    third, third_term = watch.settle(majority, "a leader in the majority after the cut")
    lab.wait_for("the cut-off leader stops acting", lambda: (
        (s := lab.status(new)) is not None and s.get("cloud") and not s.get("acting")))
    print(f"cut {new} -> {third} acting in term {third_term} after "
          f"{time.monotonic() - t0:.2f} s; {new} stopped acting")
    assert third_term > new_term

    # heal: one leader remains, the majority's, and the returning agent follows it
    lab.restore(new)
    lab.wait_for("the healed agent follows the majority's leader", lambda: (
        (s := lab.status(new)) is not None and s.get("leader") == third and not s.get("acting")))
    assert watch.settle(everyone, "one leader after heal") == (third, third_term)
    # every term had at most one acting agent, all along
    assert all(len(names) == 1 for names in watch.seen.values()), watch.seen
