"""What an idle agent costs: RSS and CPU of cloudd agents doing nothing but keeping a cloud.

A cloud of 3 host agents and 2 node agents (`AgentLab`, `profile: production`, each in its
own network namespace; the hosts connected to the machine's libvirtd), settled on a leader,
is left alone for `--seconds` (60 by default); the idle cost includes probing its peers
(SWIM) and the leader's lease renewals. The node
agents are `managed: false` nodes of a web cloud whose database has no agent: they hold their
assignment and wait for it, so that their figures are the agent's own (no role services run).
For reference, in the same window, a 3-member etcd cluster (Debian's etcd-server with its
defaults, same kind of namespaces, `bench/failover.py`'s `EtcdLab`) idles beside it.

Per process: RSS from /proc/PID/status VmRSS, sampled every `--interval` s (median and max),
CPU as the utime+stime delta over the window in % of one core, and which of the large shared
libraries it has mapped (/proc/PID/maps: libvirt's binding, cryptography's). All run at once,
so they share the machine the same way; the window starts after a warm-up. The tables go to
bench/results/idle_agent.json too (`bench/report.py`).

Run as root, libvirtd running (`scripts/ensure-libvirtd.sh`):
`.venv/bin/python bench/idle_agent.py [--seconds 60]`. Everything it starts is
removed at the end, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloudd_lab.agentlab import AgentLab

# (run as a script, this folder is on sys.path: the etcd lab is failover.py's)
from failover import EtcdLab, sigterm_as_interrupt, wait
from report import one_line, table, write_result

#: Seconds after the leader settles before the window opens (start-up allocations, the
#: first full gossip round, the manifest distribution, the nodes' assignments).
WARMUP = 5.0
TICKS = os.sysconf("SC_CLK_TCK")
#: The nodes that run an agent (the database's node has none: the others wait for it)
NODE_AGENTS = ("lab-balancer-1", "lab-server-1")
#: The host agents' libvirt, as a real host's: the machine's libvirtd (they define no domain:
#: the nodes are not VMs), which they reach by libvirt's protocol (cloudd.vmctl.libvirt_wire);
#: the labs' usual `test:///default` is an in-process driver only libvirt's binding has.
SYSTEM = "qemu:///system"
#: Shared libraries worth naming when a process has them mapped.
LIBRARIES = {"libvirtmod": "libvirt", "_rust.abi3": "cryptography", "libvirt.so": "libvirt"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"process {pid} has no VmRSS (a zombie?)")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def libraries(pid: int) -> str:
    """The large libraries of LIBRARIES that `pid` has mapped, or "-"."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    found = sorted({name for mark, name in LIBRARIES.items() if mark in maps})
    return ",".join(found) or "-"


@dataclass
class Sample:
    """One watched process over the window."""

    system: str
    kind: str
    member: str
    role: str
    pid: int
    rss: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    mapped: str = ""

    def cpu(self, seconds: float) -> float:
        return 100.0 * (self.cpu_end - self.cpu_start) / seconds

    def cells(self, seconds: float) -> list[object]:
        return [self.system, self.kind, self.member, self.role,
                round(statistics.median(self.rss) / 1024, 1), round(max(self.rss) / 1024, 1),
                round(self.cpu(seconds), 2), self.mapped]


def watch(samples: list[Sample], *, seconds: float, interval: float) -> float:
    """Sample every process for `seconds`; returns the real length of the window."""
    for s in samples:
        s.cpu_start = cpu_seconds(s.pid)
    start = time.monotonic()
    end = start + seconds
    while True:
        for s in samples:
            s.rss.append(rss_kib(s.pid))
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(interval, end - now))
    for s in samples:
        s.cpu_end = cpu_seconds(s.pid)
        s.mapped = libraries(s.pid)
    return time.monotonic() - start


def groups(samples: list[Sample], window: float) -> list[tuple[str, int, float, float]]:
    """(group, members, median RSS MiB, median CPU %) for host agents, node agents, etcd."""
    out = []
    for label, system, kind in (("cloudd host agent", "cloudd", "host"),
                                ("cloudd node agent", "cloudd", "node"),
                                ("etcd member", "etcd", "member")):
        mine = [s for s in samples if s.system == system and s.kind == kind]
        if mine:
            out.append((label, len(mine),
                        round(statistics.median(statistics.median(s.rss) for s in mine) / 1024,
                              1),
                        round(statistics.median(s.cpu(window) for s in mine), 2)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the window")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--agent-settings", default="", metavar="YAML",
                        help="more agent settings for every cloudd agent, as YAML lines (to "
                             "weigh a timing against the default)")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or not 0 < args.interval <= args.seconds:
        parser.error("--seconds must be > 0 and --interval within (0, --seconds]")
    settings = args.agent_settings + "\n" if args.agent_settings else ""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        cloud = stack.enter_context(AgentLab("h14ic", hosts=3, subnet="10.234.148.0/24",
                                             profile="production", agent_nodes=NODE_AGENTS,
                                             extra_settings=settings, libvirt_uri=SYSTEM))
        etcd = stack.enter_context(EtcdLab("h14ie", 3, subnet="10.234.158.0/24"))
        cloud.start_all()
        etcd.start_all()
        agents, members = list(cloud.agents), list(etcd.members)
        leader, _ = wait("one cloudd leader", lambda: cloud.one_leader(agents),
                         detail=cloud.statuses)
        etcd_leader = wait("one etcd leader", lambda: etcd.one_leader(members))
        time.sleep(WARMUP)
        samples = []
        for name, agent in cloud.agents.items():
            assert agent.proc is not None
            samples.append(Sample("cloudd", "node" if name in NODE_AGENTS else "host", name,
                                  "leader" if name == leader else "follower", agent.proc.pid))
        for name in members:
            samples.append(Sample("etcd", "member", name,
                                  "leader" if name == etcd_leader else "follower",
                                  etcd.pid(name)))
        for s in samples:  # `ip netns exec` execs the program: the pid is the program's
            if command(s.pid) == "ip":
                raise SystemExit(f"pid {s.pid} of {s.member} is still `ip`, not the program")
        print(f"idle for {args.seconds:.0f} s, sampling every {args.interval} s ...", flush=True)
        window = watch(samples, seconds=args.seconds, interval=args.interval)
        still = cloud.one_leader(agents)
        notes = []
        if still != (leader, _):
            notes.append(f"the cloudd leader changed during the window: {still}")
            print(f"note: {notes[-1]}")
    columns = ["system", "kind", "member", "role", "RSS med MiB", "max MiB", "CPU %", "mapped"]
    rows = [s.cells(window) for s in samples]
    print(f"\nidle for {window:.1f} s: RSS (VmRSS, {len(samples[0].rss)} samples), CPU "
          "(utime+stime over the window, % of one core), large libraries mapped")
    print(f"{'system':<7} {'kind':<6} {'member':<15} {'role':<9} {'RSS med MiB':>11} "
          f"{'max MiB':>8} {'CPU %':>7}  mapped")
    for r in rows:
        print(f"{r[0]:<7} {r[1]:<6} {r[2]:<15} {r[3]:<9} {r[4]:>11.1f} {r[5]:>8.1f} "
              f"{r[6]:>7.2f}  {r[7]}")
    summary = groups(samples, window)
    print("\nside by side (medians)")
    for label, n, rss, cpu in summary:
        print(f"{label:<18} x{n}: RSS {rss:.1f} MiB, CPU {cpu:.2f} %")
    by = {label: (rss, cpu) for label, _, rss, cpu in summary}
    host, node, ref = (by.get("cloudd host agent"), by.get("cloudd node agent"),
                       by.get("etcd member"))
    figure = "; ".join(f"{who} {v[0]:.0f} MiB RSS, {v[1]:.1f} % of a core"
                       for who, v in (("host agent", host), ("node agent", node),
                                      ("etcd", ref)) if v is not None)
    tuned = f", agents with {one_line(args.agent_settings)}" if args.agent_settings else ""
    path = write_result(
        "idle_agent", variant="tuned" if args.agent_settings else "",
        what=f"an idle agent of a cloud of 3 hosts and 2 nodes, {window:.0f} s (production "
             f"profile{tuned}; etcd 3.4 beside it)",
        figure=figure, notes=notes,
        tables=[table("per process", columns, rows),
                table("side by side (medians)", ["group", "members", "RSS MiB", "CPU %"],
                      [list(g) for g in summary])])
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
