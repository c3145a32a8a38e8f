"""Messages per election and simulated failover time, by cloud size (medians over seeds).

Runs the real election cores in the deterministic simulator (tests/election/sim.py) with
the production timing: cold start, let the leader settle, crash it, and measure until the
successor acts ("acting after") and until every live member follows it ("all follow").
Election messages are WhoLeads/LeaderIs/Election/Answer/Coordinator/Resign and the lease
messages sent in that window; SWIM probes are counted apart, per member and second.
O(n) shows as a flat messages/n column. The cold start (every agent starting at once, each
asking the hosts and three others who leads) is counted apart, also per member.

    .venv/bin/python bench/election_sim.py [--seeds 5] [--sizes 5,50,500,1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudd.election.config import Timing
from tests.election.sim import Sim, run_until_leader, settled_leader

HOSTS = {5: 3, 50: 5, 500: 7, 1000: 9}
SWIM = ("Ping", "Ack", "PingReq")


def one_failover(n: int, seed: int) -> tuple[int, float, float, float, int]:
    """(election messages, seconds to an acting successor, seconds until all follow it,
    SWIM messages per member per second, election messages of the cold start) for one
    crash of the leader."""
    sim = Sim(n, hosts=HOSTS.get(n, 3), seed=seed,
              timing=Timing.production())
    sim.start_all()
    if run_until_leader(sim, bound=5.0, step=0.01) is None:
        raise RuntimeError(f"n={n} seed={seed}: no first leader")
    cold = sim.election_messages()
    sim.run_for(0.5)
    leader = settled_leader(sim)
    assert leader is not None
    sim.crash(leader)
    before = sim.election_messages()
    swim_before = sum(sim.sent[k] for k in SWIM)
    start = sim.now
    acting = run_until_leader(sim, bound=10.0, step=0.005)
    if acting is None:
        raise RuntimeError(f"n={n} seed={seed}: no successor")
    messages = sim.election_messages() - before
    successor = settled_leader(sim)
    while any(a.leader != successor for a in sim.live()) and sim.now - start < 20.0:
        sim.run_for(0.005)
    follow = sim.now - start
    swim_rate = (sum(sim.sent[k] for k in SWIM) - swim_before) / (n * (sim.now - start))
    return messages, acting, follow, swim_rate, cold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="5,50,500,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"election after a leader crash, production timing, median of {args.seeds} seeds")
    print(f"{'n':>6} {'hosts':>5} {'msgs':>7} {'msgs/n':>7} {'acting after':>13} "
          f"{'all follow':>11} {'swim/member/s':>14} {'cold start msgs/n':>18} {'wall s':>7}")
    from report import table, write_result

    rows: list[list[object]] = []
    for n in sizes:
        wall = time.perf_counter()
        runs = [one_failover(n, seed) for seed in range(args.seeds)]
        wall = time.perf_counter() - wall
        msgs = statistics.median(r[0] for r in runs)
        acting = statistics.median(r[1] for r in runs)
        follow = statistics.median(r[2] for r in runs)
        swim = statistics.median(r[3] for r in runs)
        cold = statistics.median(r[4] for r in runs)
        print(f"{n:>6} {HOSTS.get(n, 0):>5} {msgs:>7.0f} {msgs / n:>7.2f} {acting:>12.3f}s "
              f"{follow:>10.3f}s {swim:>14.1f} {cold / n:>18.2f} {wall:>7.1f}", flush=True)
        rows.append([n, HOSTS.get(n, 0), msgs, round(msgs / n, 2), round(acting, 3),
                     round(follow, 3), round(swim, 1), round(cold / n, 2)])
    write_result("election_sim", what="election messages per member after a leader crash, "
                 f"simulated, n = {' / '.join(str(r[0]) for r in rows)}; successor acting after",
                 figure=" / ".join(f"{r[3]:.2f}" for r in rows) + " (O(n)); "
                 + " / ".join(f"{r[4]:.2f} s" for r in rows),
                 tables=[table(f"election after a leader crash, median of {args.seeds} seeds",
                               ["n", "hosts", "msgs", "msgs/n", "acting after s",
                                "all follow s", "swim/member/s", "cold start msgs/n"], rows)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
