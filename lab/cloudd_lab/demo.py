"""`make demo`: the main job on this machine, from scratch, shown step by step.

It builds the test guest, makes a lab (a bridge, three pool host agents in network namespaces
sharing this machine's libvirtd, the cluster PKI), drops the example cloud's manifest on the
hosts, shows `cloudd-cli inspect` converging while the VMs boot and their agents join, kills a
VM, shows its replacement, stops the cloud cleanly (`ensure: stopped`), then removes
everything and checks that nothing is left. Run as root:

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

from cloudd_lab import testguest
from cloudd_lab.agentlab import CLOUDD
from cloudd_lab.vmlab import GUEST_DIR, VmLab, leftovers, poll, virsh

CLI = CLOUDD.removesuffix("cloudd") + "cloudd-cli"
NODES = {"database": 1, "server": 1, "balancer": 1}
BOOT = 480.0


class Show:
    """What the demo prints: steps, a progress line (redrawn on a terminal), command output."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0
        self._open = False

    def step(self, text: str) -> None:
        self.end_progress()
        print(f"\n== [{time.monotonic() - self.t0:5.0f} s] {text}", flush=True)

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
    except (AssertionError, Exception) as e:  # the demo reports any failure in one line
        show.end_progress()
        print(f"demo: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        left = leftovers(args.prefix)
        if left:
            print(f"demo: left behind: {left}", file=sys.stderr)
    return 1 if left else 0


def run(show: Show, *, prefix: str, subnet: str) -> None:
    show.step("building the test guest (cloud kernel + busybox initramfs)")
    image = testguest.build_test_guest(GUEST_DIR)
    show.say(f"kernel {image.kernel}, initrd {image.initrd}")
    if virsh("version").returncode != 0:
        raise AssertionError("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    show.step(f"making the lab: bridge {prefix}br on {subnet}, 3 host namespaces, PKI")
    with VmLab(prefix, hosts=3, nodes=dict(NODES), subnet=subnet, cloud_name=prefix) as lab:
        for name, agent in lab.agents.items():
            show.say(f"{name}: namespace {agent.ns.name}, address {agent.ns.ip}, "
                     f"settings {agent.folder / 'agent.yaml'}")
        manifest = lab.agents["pm1"].folder / "manifests" / "lab.yaml"
        show.step(f"the example cloud dropped on every pool host ({manifest.name}):")
        for line in manifest.read_text().splitlines():
            print(f"     {line}")
        pm1 = str(lab.agents["pm1"].socket)
        show.step("starting the host agents; the VMs boot and their agents join")
        since = time.time()
        lab.start_all()
        joined = lab.wait_joined(since=since, bound=BOOT, progress=show.progress)
        show.say(f"every node's agent joined within {max(t for t, _ in joined.values()):.0f} s: "
                 + ", ".join(f"{n} on {h}" for n, (_, h) in sorted(joined.items())))
        show.run([CLI, "inspect", lab.cloud_name, "--socket", pm1])

        victim = "lab-server-1"
        show.step(f"killing {victim}'s VM (kill -9 of its qemu)")
        since = time.time()
        pid = lab.kill_vm(victim)
        show.say(f"qemu {pid} of {lab.domain(victim)} killed")
        back = lab.wait_joined([victim], since=since, bound=BOOT, progress=show.progress)
        show.say(f"{victim} replaced on {back[victim][1]}; its agent rejoined "
                 f"{back[victim][0]:.1f} s after the kill")
        show.run([CLI, "events", "--cloud", lab.cloud_name, "--since", f"{since - 1:.0f}",
                  "--socket", pm1])

        show.step("a clean stop: the manifest becomes ensure: stopped on every member")
        lab.write_manifest(ensure="stopped")
        _, took = poll("every domain of the cloud gone", lambda: lab.domains() == {},
                       bound=240, progress=lambda e: show.progress(e, lab.leader_view()))
        show.say(f"every domain of {lab.cloud_name} gone after {took:.0f} s")
        show.step("removing the lab: agents, namespaces, bridge, PKI")
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"left behind: {left}")
    show.step("done: nothing left behind")


if __name__ == "__main__":
    sys.exit(main())
