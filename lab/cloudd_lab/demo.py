"""`make demo`: the main job on this machine, from scratch, shown step by step.

It builds the node image (`cloudd-cli image build`: Debian 12 with systemd, cloud-init, the
agent and the web roles' packages; cached once built), makes a lab (a bridge, three pool host
agents in network namespaces sharing this machine's libvirtd, the cluster PKI), drops a web
cloud's manifest on the hosts, shows `cloudd-cli inspect` while the VMs boot, their agents
start under systemd from their seeds and run MariaDB, WEBrick and nginx inside the guests;
then a client outside the VMs writes through the balancer every 100 ms while a server's VM is
killed, and the demo prints the seconds of failed requests, when the site served again and the
writes lost, once the leader has the server running again; it stops the cloud cleanly
(`ensure: stopped`), removes everything and checks that nothing is left. Each stage's time
is printed at the end. Run as root:

    python -m cloudd_lab.demo [--prefix cdemo] [--subnet 10.239.14.0/24]

Exit status 0 when every step did what it should, 1 otherwise (with the reason).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from cloudd.commands.image import ensure_image
from cloudd_lab import webfaults
from cloudd_lab.agentlab import CLI
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.vmlab import leftovers, poll, virsh
from cloudd_lab.webclient import entries, serves, write

NODES = {"database": 1, "server": 2, "balancer": 1}
#: generous bounds: 2 shared cores, Debian guests booting systemd under TCG
BOOT = 1200.0
BACK = 900.0


class Show:
    """What the demo prints: steps, a progress line (redrawn on a terminal), command output."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0
        self._open = False
        #: (stage, its start) while it runs, then (stage, its seconds)
        self.stages: list[tuple[str, float]] = []

    def step(self, text: str) -> None:
        self.end_progress()
        now = time.monotonic()
        if self.stages:
            self.stages[-1] = (self.stages[-1][0], now - self.stages[-1][1])
        self.stages.append((text, now))
        print(f"\n== [{now - self.t0:5.0f} s] {text}", flush=True)

    def times(self) -> None:
        """Each stage's seconds (the last stage's up to now)."""
        now = time.monotonic()
        print("\n== stages (seconds)", flush=True)
        for i, (text, value) in enumerate(self.stages):
            took = now - value if i == len(self.stages) - 1 else value
            print(f"   {took:6.0f}  {text}", flush=True)
        print(f"   {now - self.t0:6.0f}  in all", flush=True)

    def say(self, text: str) -> None:
        self.end_progress()
        print(f"   {text}", flush=True)

    def progress(self, elapsed: float, view: dict[str, Any] | None) -> None:
        if view is None:
            line = "waiting for a leader with a host quorum"
        else:
            lead = view["leadership"]
            nodes = "  ".join(f"{n['name']} {n['domain_state']}/{n['agent_liveness']}"
                              for n in view["nodes"])
            line = f"leader {lead['leader']} (term {lead['term']})  {nodes}"
        line = f"   {elapsed:4.0f} s  {line}"
        if self.tty:
            print("\r" + line[:160].ljust(160), end="", flush=True)
            self._open = True
            return
        if elapsed < self._last:  # a new wait began
            self._last = 0.0
        if elapsed - self._last >= 10:
            self._last = elapsed
            print(line, flush=True)

    def end_progress(self) -> None:
        if self._open:
            print(flush=True)
            self._open = False

    def run(self, argv: Sequence[str]) -> None:
        self.say("$ " + " ".join(a.replace(CLI, "cloudd-cli") for a in argv))
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              check=False)
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            print(f"     {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudd_lab.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="cdemo",
                        help="names of the lab's bridge, namespaces and domains")
    parser.add_argument("--subnet", default="10.239.14.0/24", help="the lab's IPv4 subnet")
    args = parser.parse_args(argv)
    show = Show()
    try:
        run(show, prefix=args.prefix, subnet=args.subnet)
    except Exception as e:  # the demo reports any failure (a failed check too) in one line
        show.end_progress()
        print(f"demo: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        left = leftovers(args.prefix)
        if left:
            print(f"demo: left behind: {left}", file=sys.stderr)
    return 1 if left else 0


def run(show: Show, *, prefix: str, subnet: str) -> None:
    show.step("building the node image (cloudd-cli image build --type web; cached once built)")
    image = ensure_image("web", report=lambda stage: show.say(
        f"{stage.name}: {stage.seconds:.0f} s" + (f" ({stage.detail})" if stage.detail else "")))
    show.say(f"{image.qcow2} (+ .vmlinuz, .initrd, .packages)")
    if virsh("version").returncode != 0:
        raise AssertionError("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    show.step(f"making the lab: bridge {prefix}br on {subnet}, 3 host namespaces, PKI")
    with ImageLab(prefix, hosts=3, nodes=dict(NODES), subnet=subnet, cloud_name=prefix,
                  image=image) as lab:
        for name, agent in lab.agents.items():
            show.say(f"{name}: namespace {agent.ns.name}, address {agent.ns.ip}, "
                     f"settings {agent.folder / 'agent.yaml'}")
        manifest = lab.agents["pm1"].folder / "manifests" / "lab.yaml"
        show.step(f"the web cloud dropped on every pool host ({manifest.name}):")
        for line in manifest.read_text().splitlines():
            print(f"     {line}")
        pm1 = str(lab.agents["pm1"].socket)
        show.step("starting the host agents; the VMs boot Debian, their agents start under "
                  "systemd from their seeds and run their roles' services")
        lab.start_all()
        _, took = poll("every node ready", lab.ready, bound=BOOT, interval=3.0,
                       progress=lambda e: show.progress(e, lab.leader_view()))
        show.say(f"every node ready {took:.0f} s after the agents started: "
                 + ", ".join(f"{n} {p}" for n, p in sorted(lab.phases().items())))
        show.run([CLI, "inspect", lab.cloud_name, "--socket", pm1])
        url = lab.url()
        poll("the balancer serves", lambda: serves(url), bound=120.0, interval=2.0)
        show.step(f"the web site, through the balancer at {url}")
        show.say(f"POST /entries 'hello from outside the VMs': "
                 f"{'201' if write(url, 'hello from outside the VMs') else 'failed'}")
        show.say(f"GET /entries: {entries(url)}")

        victim = "lab-server-1"
        show.step(f"a client writes every 100 ms while {victim}'s VM is killed (kill -9 of "
                  "its qemu): the other server serves, and the leader starts it again")
        outcome = webfaults.kill_vm(lab, victim, bound=BACK,
                                    progress=lambda e: show.progress(e, lab.leader_view()))
        show.say(outcome.line())
        show.say(f"the site served again {outcome.back:.0f} s after the kill; every node "
                 "ready again")
        if outcome.lost:
            raise AssertionError(f"acknowledged writes lost: {list(outcome.lost)[:5]}")
        since = outcome.at
        leader = lab.leader() or "pm1"  # the leader's own log holds what it did
        show.run([CLI, "events", "--cloud", lab.cloud_name, "--since", f"{since - 1:.0f}",
                  "--socket", str(lab.agents[leader].socket)])

        show.step("a clean stop: the manifest becomes ensure: stopped on every member")
        lab.write_manifest(ensure="stopped")
        _, took = poll("every domain of the cloud gone", lambda: lab.domains() == {},
                       bound=300, progress=lambda e: show.progress(e, lab.leader_view()))
        show.say(f"every domain of {lab.cloud_name} gone after {took:.0f} s")
        show.step("removing the lab: agents, namespaces, bridge, PKI, overlays, seeds")
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"left behind: {left}")
    show.step("done: nothing left behind")
    show.times()


if __name__ == "__main__":
    sys.exit(main())
