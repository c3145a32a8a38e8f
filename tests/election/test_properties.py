"""Hypothesis: random fault schedules over the simulator never break the safety invariants.

Each example builds a cloud (3 to 9 members, 1 to 5 hosts, loss 0-20 %, either no-quorum
policy) and plays a random schedule of crashes, restarts, link cuts, isolations, partitions
and recoveries, with random pauses between them. The simulator checks after *every* event:
at most one acting leader per term, no two leaders' lease intervals overlapping at all,
acting only with a majority of host leases, no reused term across restarts, persisted terms
never decreasing. At the end, the faults are healed and everyone restarted: exactly one
acting leader must emerge within the stated bound.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .sim import Sim, run_until_leader

FAULTS = ("crash", "restart", "cut", "isolate", "partition", "recover", "wait")

schedule = st.lists(
    st.tuples(st.sampled_from(FAULTS), st.integers(0, 100), st.integers(0, 100),
              st.floats(0.0, 0.6)),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), hosts=st.integers(1, 5), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.05, 0.2]), policy=st.sampled_from(["stop", "freeze"]),
       faults=schedule)
def test_random_fault_schedules_keep_every_safety_invariant(
        n: int, hosts: int, seed: int, loss: float, policy: str,
        faults: list[tuple[str, int, int, float]]) -> None:
    sim = Sim(n, hosts=min(hosts, n), seed=seed, loss=loss, policy=policy)
    sim.start_all()
    sim.run_for(0.3)
    for fault, a, b, pause in faults:
        x, y = sim.names[a % n], sim.names[b % n]
        if fault == "crash" and sim.agents[x] is not None:
            sim.crash(x)
        elif fault == "restart":
            if sim.agents[x] is not None:
                sim.crash(x)
            sim.start(x)
        elif fault == "cut" and x != y:
            sim.cut(x, y)
        elif fault == "isolate":
            sim.isolate(x)
        elif fault == "partition":
            sim.partition({name for i, name in enumerate(sim.names) if (i + b) % 3 == 0})
        elif fault == "recover":
            sim.recover()
        sim.run_for(pause)
    # Heal everything: one acting leader must emerge (liveness once faults stop).
    sim.recover()
    sim.loss = 0.0
    for name in sim.names:
        if sim.agents[name] is None:
            sim.start(name)
    bound = sim.timing.settle_bound(n) + sim.timing.dead_probe_interval * n
    assert run_until_leader(sim, bound=bound) is not None, "no leader after healing"
    sim.run_for(0.5)
    assert len(sim.acting()) == 1
