"""A dead VM replaced end to end, on real VMs running the agent: where the time goes.

A VmLab (three pool host agents in namespaces on this machine's libvirtd, a web cloud of three
test guests whose agents run inside them) comes up; then RUNS times, a node's qemu is killed
with kill -9 and three moments are taken from the fault:

- the replacement domain running again (its new qemu pid, as libvirt shows it): libvirt
  noticing the death, the event reaching the leader, its decision and command to the host;
- the leader's start action logged (it logs the action once the host has done it, so this
  comes a little after the domain runs);
- the replacement's agent seen alive by the leader (the guest booting, Python starting under
  TCG, the agent fetching the manifest and joining).

Printed as a table of medians and maxima. Run as root with libvirtd up:
`RUNS=3 .venv/bin/python bench/e2e_failover.py`. Slow by nature (a guest boot per run).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

from cloudd_lab.vmlab import VmLab, leftovers, poll, qemu_pid

RUNS = int(os.environ.get("RUNS", "3"))
PREFIX = "h13b"
BOUND = 400.0


def respawned(lab: VmLab, node: str, pid: int) -> Callable[[], bool]:
    return lambda: qemu_pid(lab.domain(node)) not in (None, pid)


def main() -> int:
    rows: dict[str, list[float]] = {"domain running again": [], "start action logged": [],
                                    "agent rejoined": []}
    with VmLab(PREFIX, hosts=3, nodes={"database": 1, "server": 1, "balancer": 1},
               subnet="10.239.15.0/24", cloud_name=PREFIX) as lab:
        since = time.time()
        lab.start_all()
        joined = lab.wait_joined(since=since, bound=BOUND)
        print(f"cloud up: every agent joined within {max(t for t, _ in joined.values()):.1f} s",
              file=sys.stderr)
        node = "lab-server-1"
        for run in range(1, RUNS + 1):
            since = time.time()
            pid = lab.kill_vm(node)
            _, running_after = poll("the domain running again", respawned(lab, node, pid),
                                    bound=BOUND)
            rejoined = lab.wait_joined([node], since=since, bound=BOUND)
            starts = [e["at"] - since for e in lab.actions("start", since=since)
                      if e.get("node") == node]
            rows["start action logged"].append(min(starts) if starts else float("nan"))
            rows["domain running again"].append(running_after)
            rows["agent rejoined"].append(rejoined[node][0])
            print(f"run {run}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()),
                  file=sys.stderr)
    print(f"\nkill -9 of a node's qemu, {RUNS} runs (seconds from the kill)")
    print(f"{'moment':<26}{'median':>10}{'max':>10}")
    for name, values in rows.items():
        print(f"{name:<26}{statistics.median(values):>10.2f}{max(values):>10.2f}")
    left = leftovers(PREFIX)
    if left:
        print(f"left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
