"""Host failover on real libvirt: a pool host loses power; how long until its nodes run again.

Three host agents in network namespaces share qemu:///system (as in
tests/real/daemon/test_leader_real.py); a web cloud of four minimal test guests runs on them.
Each run kills -9 the agent of the host with the most nodes and destroys its domains (a power
loss), waits until every node runs again on the surviving hosts, then starts the dead agent
again (it rejoins empty: its domains were fenced). Figures, from the kill, median and max over
RUNS runs:

- fenced: the lab fence command finished (SWIM declaring the host dead, the leader noticing,
  the fence command itself: a Python start and the libvirt calls);
- first define: the first re-placed node defined on a survivor;
- all running: every node of the lost host running again (mostly QEMU starting under TCG).

Run as root with libvirtd up: `.venv/bin/python bench/failover_hosts.py` (RUNS=3 by default).
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudd_lab import testguest
from cloudd_lab.agentlab import AgentLab, lab_domains, remove_domains, virsh

RUNS = int(os.environ.get("RUNS", "3"))
URI = "qemu:///system"
PREFIX = "h12fb"
NODES = {"database": 1, "server": 2, "balancer": 1}
NODE_NAMES = [f"lab-{r}-{i}" for r, c in NODES.items() for i in range(1, c + 1)]
IMAGE = Path("/var/lib/cloudd/images") / f"{PREFIX}-node.img"
BOUND = 180.0


def wait(what: str, check: Callable[[], Any]) -> Any:
    end = time.monotonic() + BOUND
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"not within {BOUND} s: {what}")
        time.sleep(0.1)


def placement(live: set[str]) -> dict[str, str] | None:
    """node -> host when every node runs on a live host, else None."""
    doms = lab_domains(URI, f"{PREFIX}-")
    out = {}
    for node in NODE_NAMES:
        d = doms.get(f"{PREFIX}-{node}")
        if d is None or not d.running or d.host not in live:
            return None
        out[node] = d.host
    return out


def one_run(lab: AgentLab, record: Path) -> tuple[str, int, float, float, float]:
    live = set(lab.running())
    where = wait("every node running", lambda: placement(live))
    counts = {h: [n for n, at in where.items() if at == h] for h in live}
    lost = max(sorted(counts), key=lambda h: len(counts[h]))
    moved = counts[lost]
    t0 = time.time()
    lab.kill(lost, signal.SIGKILL)
    for node in moved:
        virsh(URI, "destroy", f"{PREFIX}-{node}")
    wait("re-placed", lambda: placement(live - {lost}))
    t_all = time.time() - t0
    fences = [float(line.split()[0]) for line in record.read_text().splitlines()
              if line.split()[2] == lost and float(line.split()[0]) >= t0]
    defines = [e["at"] for e in lab.actions("define", since=t0) if e.get("node") in moved]
    lab.start(lost)
    wait(f"{lost} back", lambda: (s := lab.status(lost)) is not None and s.get("leader"))
    return lost, len(moved), min(fences) - t0, min(defines) - t0, t_all


def main() -> int:
    if virsh(URI, "version").returncode != 0:
        print("no libvirtd at qemu:///system", file=sys.stderr)
        return 1
    cache = Path("/var/tmp/cloudd-h12-guest")
    cache.mkdir(parents=True, exist_ok=True)
    image = testguest.build_minimal_guest(cache)
    record = Path(tempfile.mkdtemp(prefix="cloudd-h12fb-")) / "fences"
    lab = AgentLab(
        PREFIX, hosts=3, nodes=NODES, subnet="10.234.13.0/24", cloud_name=PREFIX,
        libvirt_uri=URI, template=testguest.TEMPLATE, node_image=str(IMAGE),
        template_values={"kernel": str(image.kernel), "initrd": str(image.initrd),
                         "bridge": f"{PREFIX}br"},
        fence=lambda host: [sys.executable, "-m", "cloudd_lab.labfence", "--uri", URI,
                            "--host", host, "--cloud", PREFIX, "--record", str(record)])
    rows = []
    with lab:  # the lab's lock: another run of this bench waits
        try:
            remove_domains(URI, f"{PREFIX}-")  # a crashed earlier run's
            IMAGE.parent.mkdir(parents=True, exist_ok=True)
            IMAGE.write_bytes(b"")
            lab.start_all()
            for i in range(RUNS):
                rows.append(one_run(lab, record))
                print(f"run {i + 1}: lost {rows[-1][0]} ({rows[-1][1]} nodes): "
                      + ", ".join(f"{v:.2f} s" for v in rows[-1][2:]), file=sys.stderr)
        finally:
            for name in list(lab.agents):
                lab.kill(name)
            remove_domains(URI, f"{PREFIX}-")
            IMAGE.unlink(missing_ok=True)
            for log in Path("/var/log/libvirt/qemu").glob(f"{PREFIX}-*.log"):
                log.unlink(missing_ok=True)  # the domains' console, virtiofsd and qemu logs
            record.unlink(missing_ok=True)
            record.parent.rmdir()
    print(f"host power loss -> nodes running on the survivors ({RUNS} runs, 3 hosts, "
          f"{len(NODE_NAMES)} TCG guests)")
    print(f"{'figure (s from the kill)':<28}{'median':>8}{'max':>8}")
    for label, col in (("fenced", 2), ("first define", 3), ("all running", 4)):
        values = [r[col] for r in rows]
        print(f"{label:<28}{statistics.median(values):>8.2f}{max(values):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
