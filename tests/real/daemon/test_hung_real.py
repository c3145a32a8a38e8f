"""Hung guests, end to end: three pool host agents in namespaces on this machine's libvirtd, and
a web cloud whose database and server are test guests (TCG), the balancer a manifest entry
only. The manifest's `timing.unreachable_reset_after` is short (BOUND seconds).

- The database's guest never runs its agent (its /init sleeps instead, chosen by its name on
  the kernel command line): its domain runs, its agent is never seen, and the leader resets it
  once the bound has passed since the domain started (`node_reset`, with `unreachable_for`
  at least the bound); the guest boots again (its console, appended to, shows a second boot).
- The server's guest runs its agent; once that agent has joined, its qemu is stopped
  (SIGSTOP): the domain still reads running, the agent goes dead, and past the bound the
  leader resets it. The stopped qemu cannot carry a reset out, so its host destroys and starts
  the domain (`reset_unanswered`), and the server's agent joins again from the new qemu.
Bounded waits only; the timings are printed, never asserted.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cloudd_lab.vmlab import VmLab, agent_command, leftovers, poll, qemu_pid, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.netns]

PREFIX, SUBNET = "h13h", "10.239.33.0/24"
#: the manifest's bound, seconds: well past this test guest's boot and join (15-20 s here; a
#: bound under a guest's boot would reset it for ever)
BOUND = 90
SILENT, STOPPED, ABSENT = "lab-database-1", "lab-server-1", "lab-balancer-1"
#: generous bounds on each wait: a shared machine, guests under TCG
WAIT = 600.0


class HungLab(VmLab):
    """VmLab with the short bound, whose SILENT guest sleeps instead of running the agent."""

    def manifest_extra(self) -> str:
        return f"timing: {{unreachable_reset_after: {BOUND}}}\n"

    def boot_values(self) -> dict[str, str]:
        values = super().boot_values()
        # the guest runs the agent of the checkout under test (a worktree's PYTHONPATH), whose
        # manifest model knows `timing`
        path = os.environ.get("PYTHONPATH")
        env = f"export PYTHONPATH={shlex.quote(path)}; " if path else ""
        command = (f'{env}case " $(cat /proc/cmdline) " in *" cloudd.hostname={SILENT} "*) '
                   f"echo 'no agent here'; exec sleep 1000000;; esac; {agent_command()}")
        values["agent_cmd64"] = base64.b64encode(command.encode()).decode()
        return values


@pytest.fixture(scope="module")
def lab() -> Iterator[HungLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    try:
        hung = HungLab(PREFIX, hosts=3, subnet=SUBNET, cloud_name=PREFIX,
                       nodes={"database": 1, "server": 1, "balancer": 1})
        hung.own_fields[ABSENT] = "managed: false"
        with hung:
            hung.start_all()
            yield hung
    finally:
        left = leftovers(PREFIX)
        assert left == [], f"the hung-guest test left these behind: {left}"


def resets(lab: HungLab, node: str, *, since: float) -> list[dict[str, Any]]:
    return [e for e in lab.log_events() if e.get("event") == "node_reset"
            and e.get("node") == node and e["at"] >= since]


def came_alive(lab: HungLab, node: str, *, since: float) -> bool:
    """A pool host saw `node`'s agent come alive after `since` (its own answer to a probe:
    a member never heard from reads alive before its first probe, which proves nothing)."""
    return any(e.get("event") == "election_member" and e.get("peer") == node
               and str(e.get("reason", "")).startswith("alive") and e["agent"].startswith("pm")
               and e["at"] >= since for e in lab.log_events())


def boots(lab: HungLab, node: str) -> int:
    """How many times the node's guest has booted (its console is appended to)."""
    return lab.serial_log(node).count("step mounts")


def console_tail(lab: HungLab, node: str) -> str:
    return "\n".join(lab.serial_log(node).splitlines()[-40:])


def every(seconds: float, node: str) -> Callable[[float, dict[str, Any] | None], None]:
    """A `wait_joined` progress that prints the leader's word on `node` every `seconds`."""
    said = [0.0]

    def progress(elapsed: float, view: dict[str, Any] | None) -> None:
        if elapsed - said[0] >= seconds:
            said[0] = elapsed
            n = next((n for n in (view or {}).get("nodes", ()) if n["name"] == node), {})
            print(f"  {elapsed:4.0f} s: {node} domain {n.get('domain_state')}, agent "
                  f"{n.get('agent_liveness')}, {n.get('waiting') or 'not waiting'}")
    return progress


def test_hung_guests_are_reset_and_come_back(lab: HungLab) -> None:
    started = time.time()
    _, took = poll(f"{STOPPED}'s agent joins", lambda: came_alive(lab, STOPPED, since=started),
                   bound=WAIT, interval=1.0)
    print(f"\n{STOPPED}'s agent joined {took:.0f} s after the agents started")

    # -- the guest whose qemu is stopped: stopped now, checked last -------------------------
    domain = lab.domain(STOPPED)
    pid = qemu_pid(domain)
    assert pid is not None
    stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        # -- meanwhile, the guest whose agent never starts -----------------------------------
        [first], _ = poll(f"the leader resets {SILENT}",
                          lambda: resets(lab, SILENT, since=started)[:1], bound=WAIT)
        print(f"{SILENT} (no agent) reset {first['at'] - started:.0f} s after the agents "
              f"started, its agent unreachable for {first['unreachable_for']} s")
        assert first["host"] and first["unreachable_for"] >= BOUND
        assert "agent unreachable for" in first["reason"]
        poll(f"{SILENT}'s guest boots again", lambda: boots(lab, SILENT) >= 2, bound=WAIT)

        [reset], _ = poll(f"the leader resets {STOPPED}",
                          lambda: resets(lab, STOPPED, since=stopped_at)[:1], bound=WAIT)
        print(f"{STOPPED} (qemu stopped) reset {reset['at'] - stopped_at:.0f} s after the "
              f"SIGSTOP, its agent unreachable for {reset['unreachable_for']} s")
        assert reset["unreachable_for"] >= BOUND
        try:
            rejoined = lab.wait_joined([STOPPED], since=stopped_at, bound=WAIT,
                                       progress=every(30.0, STOPPED))
        except AssertionError:
            print(f"{STOPPED}'s console, last lines:\n{console_tail(lab, STOPPED)}")
            raise
    finally:
        if qemu_pid(domain) == pid:  # not destroyed: let it go on, for close() to remove
            os.kill(pid, signal.SIGCONT)
    print(f"{STOPPED}'s agent joined again from a new qemu {rejoined[STOPPED][0]:.0f} s after "
          "the SIGSTOP")
    unanswered = [e for e in lab.log_events() if e.get("event") == "reset_unanswered"
                  and e.get("domain") == domain]
    assert unanswered, "the stopped qemu's host did not fall back to destroy and start"
    assert qemu_pid(domain) != pid
