"""What an idle agent costs: RSS and CPU of cloudd agents doing nothing but keeping a cloud.

A cloud of 3 host agents (`AgentLab`, `profile: production`, each in its own network
namespace), settled on a leader, is left alone for `--seconds` (60 by default); the idle cost
includes probing its peers (SWIM) and the leader's lease renewals. For reference, in the same
window, a 3-member etcd cluster (Debian's etcd-server with its defaults, same kind of
namespaces, `bench/failover.py`'s `EtcdLab`) idles beside it.

Per process: RSS from /proc/PID/status VmRSS, sampled every `--interval` s (median and max),
and CPU as the utime+stime delta over the window in % of one core. Both clusters run at once,
so they share the machine the same way; the window starts after a warm-up.

Run as root: `.venv/bin/python bench/idle_agent.py [--seconds 60]`. Everything it starts is
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

#: Seconds after the leader settles before the window opens (start-up allocations, the
#: first full gossip round, the manifest distribution).
WARMUP = 3.0
TICKS = os.sysconf("SC_CLK_TCK")


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


@dataclass
class Sample:
    """One watched process over the window."""

    system: str
    member: str
    role: str
    pid: int
    rss: list[int] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0

    def row(self, seconds: float) -> str:
        cpu = 100.0 * (self.cpu_end - self.cpu_start) / seconds
        return (f"{self.system:<7} {self.member:<6} {self.role:<9} "
                f"{statistics.median(self.rss) / 1024:>10.1f} {max(self.rss) / 1024:>8.1f} "
                f"{cpu:>8.2f}")


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
    return time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the window")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or not 0 < args.interval <= args.seconds:
        parser.error("--seconds must be > 0 and --interval within (0, --seconds]")
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        cloud = stack.enter_context(AgentLab("h14ic", hosts=3, subnet="10.234.148.0/24",
                                             profile="production"))
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
            samples.append(Sample("cloudd", name, "leader" if name == leader else "follower",
                                  agent.proc.pid))
        for name in members:
            samples.append(Sample("etcd", name, "leader" if name == etcd_leader else "follower",
                                  etcd.pid(name)))
        for s in samples:  # `ip netns exec` execs the program: the pid is the program's
            if command(s.pid) == "ip":
                raise SystemExit(f"pid {s.pid} of {s.member} is still `ip`, not the program")
        print(f"idle for {args.seconds:.0f} s, sampling every {args.interval} s ...", flush=True)
        window = watch(samples, seconds=args.seconds, interval=args.interval)
        still = cloud.one_leader(agents)
        if still != (leader, _):
            print(f"note: the cloudd leader changed during the window: {still}")
    print(f"\nidle for {window:.1f} s: RSS (VmRSS, {len(samples[0].rss)} samples) and CPU "
          "(utime+stime over the window, % of one core)")
    print("system  member role        RSS med MiB  max MiB    CPU %")
    for s in samples:
        print(s.row(window))
    for system in ("cloudd", "etcd"):
        mine = [s for s in samples if s.system == system]
        rss = statistics.median(statistics.median(s.rss) for s in mine) / 1024
        cpu = statistics.median(100.0 * (s.cpu_end - s.cpu_start) / window for s in mine)
        print(f"{system:<7} median of {len(mine)} members: RSS {rss:.1f} MiB, CPU {cpu:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
