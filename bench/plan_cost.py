"""Planner cost: 10,000 desired nodes on 100 hosts, initial placement and a steady-state pass.

Prints the median of several runs per case (target: under 100 ms a pass), plus the same at
1,000 nodes on 10 hosts, and a failover pass (one host fenced, its nodes re-placed).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudd.vmctl.plan import (
    Define,
    Desired,
    DomainObs,
    DomainState,
    Ensure,
    HostObs,
    Liveness,
    NodeSpec,
    Observed,
    plan,
)

IMG = "/var/lib/cloudd/images/base.qcow2"
ROLES = ("database", "server", "balancer", "compute")
RUNS = 7


def pool(n_nodes: int, n_hosts: int) -> tuple[Desired, Observed]:
    nodes = tuple(NodeSpec(f"n{i:05d}", ROLES[i % len(ROLES)], 256, 1, IMG)
                  for i in range(n_nodes))
    hosts = tuple(HostObs(f"h{i:03d}", Liveness.ALIVE, True, 256 * 1024, frozenset({IMG}))
                  for i in range(n_hosts))
    return Desired("bench", Ensure.RUNNING, nodes, ROLES), Observed(hosts, ())


def steady(desired: Desired, observed: Observed) -> Observed:
    """The pool once the initial plan ran: every node running where it was placed."""
    domains = tuple(DomainObs(a.host, a.node, desired.cloud, DomainState.RUNNING, "booted")
                    for a in plan(desired, observed, 0.0) if isinstance(a, Define))
    return Observed(observed.hosts, domains)


def failover(observed: Observed) -> Observed:
    """The first host dead by quorum and fenced: its nodes are to be re-placed."""
    first = observed.hosts[0]
    dead = HostObs(first.name, Liveness.DEAD, False, 0, first.images, fenced=True)
    return Observed((dead, *observed.hosts[1:]), observed.domains)


def median_ms(desired: Desired, observed: Observed) -> tuple[float, int]:
    times = []
    count = 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        count = len(plan(desired, observed, 0.0))
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), count


def main() -> int:
    from report import table, write_result

    rows: list[list[object]] = []
    print(f"{'case':<34} {'nodes':>6} {'hosts':>6} {'actions':>8} {'median ms':>10}")
    for n_nodes, n_hosts in ((1000, 10), (10_000, 100)):
        desired, empty = pool(n_nodes, n_hosts)
        running = steady(desired, empty)
        cases = [("initial placement", empty), ("steady state (all running)", running),
                 ("one host fenced, its nodes moved", failover(running))]
        for name, observed in cases:
            ms, count = median_ms(desired, observed)
            print(f"{name:<34} {n_nodes:>6} {n_hosts:>6} {count:>8} {ms:>10.1f}")
            rows.append([name, n_nodes, n_hosts, count, round(ms, 1)])
    big = {r[0]: r[4] for r in rows if r[1] == 10_000}
    write_result("plan_cost", what="one planner pass, 10,000 nodes on 100 hosts: initial "
                 "placement / steady state / one host fenced",
                 figure=" / ".join(f"{big[c]:.0f} ms" for c in (
                     "initial placement", "steady state (all running)",
                     "one host fenced, its nodes moved")),
                 tables=[table("planner pass", ["case", "nodes", "hosts", "actions",
                                                "median ms"], rows)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
