"""A compute VM killed in a batch cluster, until the scheduler gives it jobs again: per scheduler.

For each scheduler (Slurm, then TORQUE when this machine has its source tarball), a BatchLab
comes up (cloudd_lab.batchlab: the shipped manifest's pool host agents in namespaces on this
machine's libvirtd, a head and two compute nodes in Debian VMs booted from the node image);
then, RUNS times, a compute VM's qemu is killed with SIGKILL (the two in turn) and three
moments are timed from the kill: its domain running again (the leader replaced it), the
scheduler showing the node free again (`sinfo` idle, `pbsnodes -x` free, polled on the head
every 2 s), and a job pinned to it (`sbatch -w`, `qsub -l nodes=`) started there.

Printed: per scheduler, the median of each over the runs. Run as root with libvirtd up, under
the machine's VM lock: `RUNS=3 flock /tmp/cloudd-vm.lock .venv/bin/python
bench/batch_recovery.py` (`SCHEDULERS=torque` for one of them). Slow by nature (each run is a
Debian guest booting under TCG, and each cluster's first boot about as long as three): 3 runs
is the default.
"""

from __future__ import annotations

import os
import statistics
import sys

from cloudd_lab.batchlab import BACK, LABS, UP, BatchLab, Recovery, pool_size
from cloudd_lab.paths import checkout
from cloudd_lab.vmlab import leftovers, poll

from cloudd.images.torque import default_source

RUNS = int(os.environ.get("RUNS", "3"))


def measure(kind: str) -> list[Recovery]:
    prefix, subnet = LABS[kind]
    out: list[Recovery] = []
    with BatchLab(prefix, hosts=pool_size(kind), cloud_type=kind, subnet=subnet,
                  cloud_name=prefix) as lab:
        lab.start_all()
        _, took = poll("every node ready", lab.ready, bound=UP, interval=5.0)
        poll("the compute nodes free", lambda: lab.free(*lab.computes), bound=BACK,
             interval=5.0)
        print(f"{kind}: every node ready {took:.0f} s after the agents started", flush=True)
        for run in range(RUNS):
            node = lab.computes[run % len(lab.computes)]
            poll("the compute nodes free", lambda: lab.free(*lab.computes), bound=BACK,
                 interval=5.0)
            recovery = lab.kill_and_recover(node, bound=BACK)
            if recovery.ran_on != node:
                raise AssertionError(f"the pinned job ran on {recovery.ran_on}, not {node}")
            out.append(recovery)
            print(f"{kind} run {run + 1}: {recovery.line()}", flush=True)
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"left behind: {left}")
    return out


def main() -> int:
    wanted = os.environ.get("SCHEDULERS", "slurm torque").split()
    rows: dict[str, list[Recovery]] = {}
    if "slurm" in wanted:
        rows["slurm"] = measure("slurm")
    tarball = default_source(checkout())
    if "torque" in wanted and tarball is not None and tarball.is_file():
        rows["torque"] = measure("torque")
    elif "torque" in wanted:
        print(f"torque: skipped, no TORQUE source tarball at {tarball}", flush=True)
    print(f"\n{'scheduler':<10} {'domain running s':>17} {'free again s':>13} "
          f"{'pinned job started s':>21}   (from the kill; median of {RUNS} "
          f"run{'s' if RUNS > 1 else ''})")
    for kind, runs in rows.items():
        print(f"{kind:<10} {statistics.median(r.restarted for r in runs):>17.0f} "
              f"{statistics.median(r.free for r in runs):>13.0f} "
              f"{statistics.median(r.started for r in runs):>21.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
