"""What an idle cloud costs per member as it grows: the leader, a host, a node at 3, 50, 200.

200 agents as processes would saturate this machine's two cores and distort their own
figures, so every size runs **in one process**: the real election cores (SWIM, the bully
election, the leases: `AgentCore`, with the timing an agent's default settings give it
(`timing_for`; nodes with `Timing.for_node`), members that speak skipping their probes) in the
deterministic simulator of tests/election/sim.py, which plays network and clocks. A cloud
of `n` members (3 hosts, 5 at 50, 7 at 200; the rest nodes) settles on a leader, then idles
`--seconds` of simulated time. Per member it counts the messages sent and received per
second, and times the core's own work (its `step` and `tick` calls, in CPU time of this
process) per simulated second.

What the simulator cannot measure is the transport (TLS, the kernel's network path), which
is most of a real agent's idle CPU. So the last column is an estimate, and says so: the
messages per second times one message's cost, calibrated on the real 3-member cloud of
`bench/idle_agent.py` (its host followers' median CPU over the simulated host follower's
messages at n = 3), read from bench/results/idle_agent.json when that run exists.

    .venv/bin/python bench/idle_scale.py [--seconds 60] [--sizes 3,50,200]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import RESULTS, table, write_result

from cloudd.config.agent import AgentSettings
from cloudd.daemon.member.clouds import timing_for
from cloudd.election.agent import AgentCore
from tests.election.sim import Sim, run_until_leader, settled_leader

HOSTS = {3: 3, 50: 5, 200: 7}


class MeteredSim(Sim):
    """The simulator, with node timing for nodes and each agent's messages and core time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out_count = Counter[str]()
        self.in_count = Counter[str]()
        self.core_time = Counter[str]()

    def start(self, name: str) -> None:
        self.life[name] += 1
        host = name in self.roster.hosts
        agent = AgentCore(name, self.roster, timing=self.timing if host else self.timing.for_node(),
                          rng=random.Random(self.rng.random()))
        for method in ("step", "tick"):
            setattr(agent, method, self._metered(name, getattr(agent, method)))
        self.agents[name] = agent
        self._apply(name, agent.start(self._local(name), persisted_term=self.persisted[name]))

    def _metered(self, name: str, call):  # type: ignore[no-untyped-def]
        def timed(*args, **kw):  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            try:
                return call(*args, **kw)
            finally:
                self.core_time[name] += time.process_time() - t0
        return timed

    def _send(self, src: str, dst: str, msg, *, kind: str = "msg") -> None:  # type: ignore[no-untyped-def]
        self.out_count[src] += 1
        self.in_count[dst] += 1
        super()._send(src, dst, msg, kind=kind)

    def reset(self) -> None:
        for c in (self.out_count, self.in_count, self.core_time):
            c.clear()


def calibration() -> float | None:
    """Seconds of CPU per message (sent or received) of a real host follower, or None."""
    path = RESULTS / "idle_agent.json"
    try:
        doc = json.loads(path.read_text())
        rows = doc["tables"][0]["rows"]
        cpu = statistics.median(r[6] for r in rows if r[0] == "cloudd" and r[1] == "host"
                                and r[3] == "follower")
    except (OSError, ValueError, KeyError, IndexError, statistics.StatisticsError):
        return None
    return cpu / 100.0


def measure(n: int, seconds: float, seed: int) -> dict[str, tuple[float, float, float]]:
    """role -> (messages out/s, messages in/s, core CPU % of one core), medians per role."""
    timing = timing_for(AgentSettings(name="pm1"))  # an agent's default timing
    sim = MeteredSim(n, hosts=HOSTS.get(n, 3), seed=seed, timing=timing)
    sim.start_all()
    if run_until_leader(sim, bound=10.0, step=0.01) is None:
        raise SystemExit(f"n={n}: no leader")
    sim.run_for(2.0)
    leader = settled_leader(sim)
    if leader is None:
        raise SystemExit(f"n={n}: the leader did not settle")
    sim.reset()
    sim.run_for(seconds)
    roles = {"leader": [leader],
             "host follower": sorted(sim.roster.hosts - {leader}),
             "node": sorted(set(sim.names) - sim.roster.hosts)}
    out = {}
    for role, names in roles.items():
        if names:
            out[role] = (statistics.median(sim.out_count[m] / seconds for m in names),
                         statistics.median(sim.in_count[m] / seconds for m in names),
                         statistics.median(100.0 * sim.core_time[m] / seconds for m in names))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated idle seconds")
    parser.add_argument("--sizes", default="3,50,200")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {n: measure(n, args.seconds, args.seed) for n in sizes}
    per_message = None
    if 3 in figures and "host follower" in figures[3]:
        real = calibration()
        out3, in3, _ = figures[3]["host follower"]
        per_message = real / (out3 + in3) if real is not None else None
    columns = ["members", "hosts", "role", "msgs out/s", "msgs in/s", "core CPU %",
               "est. agent CPU %"]
    rows = []
    for n in sizes:
        for role, (out, got, core) in figures[n].items():
            est = round(100.0 * (out + got) * per_message, 2) if per_message else None
            rows.append([n, HOSTS.get(n, 3), role, round(out, 1), round(got, 1),
                         round(core, 3), est])
    print(f"idle, {args.seconds:.0f} simulated s, the agent's default timing (nodes: "
          "for_node), all agents of a size in one process (the real election cores in the "
          "simulator)")
    print(f"{'n':>4} {'hosts':>5} {'role':<14} {'out/s':>7} {'in/s':>7} {'core %':>8} "
          f"{'est. agent %':>13}")
    for r in rows:
        est = f"{r[6]:.2f}" if r[6] is not None else "-"
        print(f"{r[0]:>4} {r[1]:>5} {r[2]:<14} {r[3]:>7.1f} {r[4]:>7.1f} {r[5]:>8.3f} "
              f"{est:>13}")
    note = (f"est. agent CPU: messages/s x {per_message * 1e6:.0f} us per message, calibrated "
            "on bench/idle_agent.py's host followers" if per_message else
            "no bench/results/idle_agent.json: no calibration, no estimate")
    print(note)
    by = {(r[0], r[2]): r for r in rows}

    def cell(n: int, role: str) -> str:
        r = by.get((n, role))
        if r is None:
            return "-"
        return f"{r[3] + r[4]:.0f} msg/s" + (f" (~{r[6]:.1f} %)" if r[6] is not None else "")
    figure = "; ".join(f"n={n}: leader {cell(n, 'leader')}, host {cell(n, 'host follower')}"
                       + (f", node {cell(n, 'node')}" if (n, "node") in by else "")
                       for n in sizes)
    write_result("idle_scale", what="idle cost per member at " + " / ".join(map(str, sizes))
                 + " members, all in one process (real cores, simulated network; CPU % "
                 "estimated from the messages)", figure=figure, notes=[note],
                 tables=[table("idle per member", columns, rows)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
