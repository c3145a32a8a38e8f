"""Faults made to the web cloud in VMs while a user writes through the balancer, each measured
as that user sees it: the e2e suite (tests/e2e/test_a_web_in_vms.py) asserts on the outcomes,
the bench (bench/web_in_vms.py) prints them as a table.

Each fault runs inside a `Client` writing every 100 ms (webclient): a few seconds of writes
before it, then the fault, then a bounded wait until the cloud has recovered as the fault
defines it (the replaced domain running, every node ready, the site writing again), then a few
seconds of writes after. Its `Outcome` says the seconds of failed requests, the time from the
fault until the site served again, and the writes acknowledged and lost.

A power loss in the lab (`VmLab.power_loss`: the host's agent and time server killed, its
domains destroyed) also takes the host's disk: every host here shares this machine's image
folder, so the overlays and seeds of the host's nodes are deleted, as a dead host's local disk
would be gone on a real pool; their replacements start from the base image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cloudd.vmctl.domains import SEED_SUFFIX
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.vmlab import IMAGES, poll, qemu_pid
from cloudd_lab.webclient import Client

#: writes before the fault and after the recovery, in seconds
BEFORE, AFTER = 5.0, 3.0
DATABASE = "lab-database-1"


@dataclass(frozen=True)
class Outcome:
    """One fault as the client saw it."""

    fault: str
    #: when it was made (unix time)
    at: float
    #: seconds of failed requests
    failed: float
    #: seconds from the fault until the site served again (0: it never failed)
    back: float
    acknowledged: int
    #: acknowledged writes the site no longer has
    lost: tuple[str, ...]
    #: of those, how many were sent after the fault was done (a lost database may take what
    #: it had before the fault; never what the site acknowledged after)
    lost_after: int
    #: what happened, in words (where nodes went, who leads)
    detail: str = ""

    def line(self) -> str:
        return (f"{self.fault}: {self.failed:.1f} s of failed requests, serving again after "
                f"{self.back:.0f} s, {self.acknowledged} writes acknowledged, "
                f"{len(self.lost)} lost" + (f"; {self.detail}" if self.detail else ""))


Progress = Callable[[float], None] | None


def measure(site: ImageLab, fault: str, make: Callable[[], str],
            recovered: Callable[[Client, float], object], *, bound: float,
            progress: Progress = None) -> Outcome:
    """Run `make` (which does the fault and returns its details) under a writing client; wait
    until `recovered(client, fault_time)` is truthy (AssertionError after `bound` seconds;
    `progress(elapsed)` on each round of the wait)."""
    url = site.url()
    with Client(url) as client:
        time.sleep(BEFORE)
        t_fault = time.time()
        detail = make()
        t_done = time.time()
        poll(f"recovered from: {fault}", lambda: recovered(client, t_fault), bound=bound,
             interval=2.0, progress=progress)
        time.sleep(AFTER)
    back = client.serving_again(t_fault)
    lost = client.lost(url)
    after = sum(1 for b in lost if client.sent_at[b] > t_done)
    return Outcome(fault, t_fault, client.failed_seconds(t_fault), back or 0.0,
                   len(client.acknowledged), tuple(lost), after, detail)


def writing_again(client: Client, since: float) -> bool:
    """The site served after its last failure since `since`, and took a write after that."""
    back = client.serving_again(since)
    return back is not None and client.wrote_since(since + back)


class Rejoined:
    """The nodes hit by a fault, seen gone and then back in the acting leader's view: each
    must first be seen away (its agent not alive, or its phase not ready), then alive and
    ready. The leader keeps a dead node's last report, and notices a death only after its
    probes and suspicion: a node's phase alone would say ready before the fault shows."""

    def __init__(self, site: ImageLab, nodes: list[str]) -> None:
        self.site, self.nodes, self.away = site, nodes, set[str]()

    def __call__(self) -> bool:
        view = self.site.leader_view()
        if view is None:
            return False
        alive = {n["name"] for n in view["nodes"] if n["agent_liveness"] == "alive"}
        phases = self.site.phases()
        back = {n for n in self.nodes if n in alive and phases.get(n) == "ready"}
        self.away |= set(self.nodes) - back
        return self.away == set(self.nodes) == back


def kill_vm(site: ImageLab, node: str, *, bound: float, progress: Progress = None) -> Outcome:
    """kill -9 of `node`'s qemu; recovered when its domain runs again (a new qemu), every node
    is ready and the site writes again."""
    domain = site.domain(node)
    killed: list[int] = []

    def make() -> str:
        killed.append(site.kill_vm(node))
        return f"qemu {killed[0]} of {domain} killed"

    rejoined = Rejoined(site, [node])

    def recovered(client: Client, since: float) -> bool:
        return (rejoined() and qemu_pid(domain) not in (None, *killed) and site.ready()
                and writing_again(client, since))

    return measure(site, f"kill -9 of the {role_of(node)} VM's qemu ({node})", make,
                   recovered, bound=bound, progress=progress)


def restart_agent_in_guest(site: ImageLab, node: str, *, bound: float,
                           service: str = "mariadbd") -> Outcome:
    """`systemctl restart cloudd`, then `stop` and `start`, inside `node`'s guest: the process
    `service` (the database's, by default) is kept (AssertionError if its pid changes or the
    agent stays down)."""

    def ssh(*argv: str) -> str:
        done = site.guest_ssh(node, *argv)
        if done.returncode != 0:
            raise AssertionError(f"{argv} in {node}: {done.stdout} {done.stderr}")
        return done.stdout.strip()

    pids = ssh("pgrep", "-x", service)

    def make() -> str:
        ssh("systemctl", "restart", "cloudd")
        poll("cloudd active again in the guest", lambda: site.guest_ssh(
            node, "systemctl", "is-active", "cloudd").stdout.strip() == "active",
             bound=bound, interval=2.0)
        ssh("systemctl", "stop", "cloudd")
        if ssh("pgrep", "-x", service) != pids:
            raise AssertionError(f"{service} in {node} did not outlive the stopped agent")
        ssh("systemctl", "start", "cloudd")
        return f"{service} pid {' '.join(pids.split())} kept"

    outcome = measure(site, f"systemctl restart/stop/start cloudd in {node}", make,
                      lambda client, since: site.ready() and writing_again(client, since),
                      bound=bound)
    if ssh("pgrep", "-x", service) != pids:
        raise AssertionError(f"{service} in {node} was restarted by the new agent")
    return outcome


def power_loss(site: ImageLab, host: str, *, bound: float, label: str = "") -> Outcome:
    """`host` loses power and its disk (see the module's docstring); recovered when each of its
    nodes runs on another host, every node is ready and the site writes again. The host stays
    down: `site.bring_back(host)` powers it on (its disk empty)."""
    lost: list[str] = []

    def make() -> str:
        # The host is frozen and its disk taken while its VMs still run (they keep their open
        # files): its nodes are re-placed only once it is found dead, so always on files made
        # anew, never on these. Deleting after the power loss raced a fast re-placement.
        lost.extend(sorted(n for n, d in site.domains().items() if d.host == host))
        site.freeze(host)
        for node in lost:
            site.overlay(node).unlink(missing_ok=True)
            (IMAGES / f"{site.domain(node)}{SEED_SUFFIX}").unlink(missing_ok=True)
        site.power_loss(host)
        return ""

    rejoined = Rejoined(site, lost)

    def recovered(client: Client, since: float) -> bool:
        doms = site.domains()
        return (rejoined()
                and all(n in doms and doms[n].running and doms[n].host != host for n in lost)
                and site.ready() and writing_again(client, since))

    outcome = measure(site, label or f"power loss of {host}", make, recovered, bound=bound)
    doms = site.domains()
    moved = ", ".join(f"{n} to {doms[n].host}" for n in sorted(lost))
    return replace(outcome, detail=f"{host} ran {', '.join(sorted(lost)) or 'no node'}: "
                                   f"{moved}; leader now {site.leader()}")


def drain(site: ImageLab, host: str, *, bound: float, move_stateful: bool = False) -> Outcome:
    """`cloudd-cli drain HOST` (with `--move-stateful`); recovered when none of the cloud's
    domains is left on `host`, each of its nodes runs elsewhere, every node is ready and the
    site writes again. Each moved guest's boot id, read before and after over SSH, says
    whether it moved live (the same boot) or was started anew; the detail names both. The
    host stays drained: `cloudd-cli undrain HOST` lets placements back."""
    moved: list[str] = []
    boots: dict[str, str] = {}

    def boot(node: str) -> str:
        return site.guest_ssh(node, "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()

    def make() -> str:
        moved.extend(sorted(n for n, d in site.domains().items() if d.host == host))
        boots.update((n, boot(n)) for n in moved)
        other = next(h for h in site.running() if h.startswith("pm") and h != host)
        done = site.cli(other, "drain", host, *(["--move-stateful"] if move_stateful else []))
        if done.returncode != 0:
            raise AssertionError(f"cloudd-cli drain {host}: {done.stderr.strip()}")
        return ""

    def recovered(client: Client, since: float) -> bool:
        doms = site.domains()
        return (all(n in doms and doms[n].running and doms[n].host != host for n in moved)
                and site.ready() and writing_again(client, since))

    outcome = measure(site, f"drain of {host}{' --move-stateful' if move_stateful else ''}",
                      make, recovered, bound=bound)
    doms = site.domains()
    live = [n for n in moved if boot(n) == boots[n] != ""]
    return replace(outcome, detail=f"{host} ran {', '.join(moved) or 'no node'}: "
                   + ", ".join(f"{n} to {doms[n].host} ({'live' if n in live else 'restarted'})"
                               for n in moved))


def leader_host_loss(site: ImageLab, *, bound: float) -> tuple[str, Outcome]:
    """The acting leader's host loses power, the database running elsewhere: (host, outcome)."""
    leader = site.leader()
    db_host = site.domains()[DATABASE].host
    if leader is None or leader == db_host:
        raise AssertionError(f"the database runs on the leader's host {leader}: this fault "
                             "needs it elsewhere")
    return leader, power_loss(site, leader, bound=bound,
                              label=f"power loss of the leader's host {leader}")


def database_host_loss(site: ImageLab, *, bound: float) -> tuple[str, Outcome]:
    """The database's host loses power and its disk: (host, outcome). The database comes back
    elsewhere from the base image, empty: what it had acknowledged is lost."""
    host = site.domains()[DATABASE].host
    return host, power_loss(site, host, bound=bound,
                            label=f"power loss of the database's host {host}")


def role_of(node: str) -> str:
    """The role in a lab node's name (lab-ROLE-N)."""
    return node.split("-")[1]
