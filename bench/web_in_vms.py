"""The web site in VMs through every fault, as a user sees it: the e2e suite's table, measured.

An ImageLab (three pool host agents in namespaces on this machine's libvirtd; the web cloud of
one balancer, two servers and one database in Debian VMs booted from the node image) comes up;
then, RUNS times, each fault of cloudd_lab.webfaults is made in turn under a client writing
through the balancer every 100 ms: the agent restarted under the database guest's systemd;
kill -9 of a server's, the balancer's and the database's qemu; the leader's host losing power
(the database elsewhere); the database's own host losing power and its disk. A lost host is
powered on again before the next fault.

Printed: per fault, the median over the runs of the seconds of failed requests and of the time
until the site served again, and the writes acknowledged and lost (summed). Run as root with
libvirtd up: `RUNS=1 .venv/bin/python bench/web_in_vms.py`. Slow by nature: the cloud's boot
and each replacement are Debian guests booting under TCG (about 25 minutes a run here).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable

from cloudd_lab import webfaults
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.vmlab import leftovers, poll
from cloudd_lab.webclient import serves
from cloudd_lab.webfaults import Outcome

RUNS = int(os.environ.get("RUNS", "1"))
PREFIX = "h12b"
SUBNET = "10.239.23.0/24"
UP, BACK = 1500.0, 900.0


def faults(lab: ImageLab) -> list[tuple[str, Callable[[], Outcome]]]:
    def lose(pick: Callable[..., tuple[str, Outcome]]) -> Callable[[], Outcome]:
        def run() -> Outcome:
            host, outcome = pick(lab, bound=BACK)
            lab.bring_back(host)
            return outcome
        return run

    return [
        ("systemctl restart cloudd (database guest)",
         lambda: webfaults.restart_agent_in_guest(lab, webfaults.DATABASE, bound=300.0)),
        ("kill -9 a server VM", lambda: webfaults.kill_vm(lab, "lab-server-1", bound=BACK)),
        ("kill -9 the balancer VM",
         lambda: webfaults.kill_vm(lab, "lab-balancer-1", bound=BACK)),
        ("kill -9 the database VM",
         lambda: webfaults.kill_vm(lab, webfaults.DATABASE, bound=BACK)),
        ("power loss: the leader's host", lose(webfaults.leader_host_loss)),
        ("power loss: the database's host", lose(webfaults.database_host_loss)),
    ]


def main() -> int:
    rows: dict[str, list[Outcome]] = {}
    with ImageLab(PREFIX, hosts=3, nodes={"database": 1, "server": 2, "balancer": 1},
                  subnet=SUBNET, cloud_name=PREFIX, hosts_last_first=True) as lab:
        lab.start_all()
        _, took = poll("every node ready", lab.ready, bound=UP, interval=5.0)
        poll("the balancer serves", lambda: serves(lab.url()), bound=120.0, interval=2.0)
        print(f"web cloud in VMs: every node ready {took:.0f} s after the agents started",
              flush=True)
        for run in range(1, RUNS + 1):
            for name, fault in faults(lab):
                outcome = fault()
                rows.setdefault(name, []).append(outcome)
                print(f"run {run}: {outcome.line()}", flush=True)
    left = leftovers(PREFIX)
    if left:
        print(f"left behind: {left}", file=sys.stderr)
        return 1
    print(f"\n{'fault':<40} {'failed s':>9} {'back after s':>13} {'acknowledged':>13} "
          f"{'lost':>6}   (median of {RUNS} run{'s' if RUNS > 1 else ''}; counts summed)")
    for name, outcomes in rows.items():
        print(f"{name:<40} {statistics.median(o.failed for o in outcomes):>9.1f} "
              f"{statistics.median(o.back for o in outcomes):>13.0f} "
              f"{sum(o.acknowledged for o in outcomes):>13} "
              f"{sum(len(o.lost) for o in outcomes):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
