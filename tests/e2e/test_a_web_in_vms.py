"""The web site served from real VMs, measured as a user would see it.

Three pool host agents in namespaces share this machine's libvirtd; the web cloud (one
balancer, two app servers, one database) runs in VMs booted from the node image
(`cloudd-cli image build`: Debian 12, systemd, cloud-init, the agent in its own virtualenv):
each node's agent starts under the guest's systemd from the identity its NoCloud seed
brings, and runs its role's MariaDB, WEBrick or nginx inside the guest (cloudd_lab.imagelab).
A client outside the VMs writes an entry through the balancer every 100 ms while a fault is
made; the test reports the seconds of failed requests, the time until the site serves
again, and the writes acknowledged and lost. Waits are bounded polls, never timed asserts.

This module runs first in the e2e package (its name) and its lab goes away with it, before
the test-guest lab of the thesis tests comes up: the machine runs one lab of VMs at a time.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.vmlab import leftovers, poll, qemu_pid, virsh
from cloudd_lab.webclient import Client, entries, serves

#: pytest-timeout's per-test bound (600 s by default) is too short for a cold start of four
#: Debian guests on a busy machine; each wait below is bounded on its own.
pytestmark = [pytest.mark.e2e, pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services,
              pytest.mark.timeout(2400)]

PREFIX = "h12v"
SUBNET = "10.239.22.0/24"
NODES = {"database": 1, "server": 2, "balancer": 1}
#: generous bounds: 2 shared cores, four Debian guests booting systemd under TCG
UP = 1500.0
BACK = 900.0
Say = Callable[[str], None]


@pytest.fixture(scope="module")
def site() -> Iterator[ImageLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    try:
        with ImageLab(PREFIX, hosts=3, nodes=dict(NODES), subnet=SUBNET,
                      cloud_name=PREFIX) as lab:
            lab.start_all()
            yield lab
    finally:
        left = leftovers(PREFIX)
        assert left == [], f"the web e2e left these behind: {left}"


def test_the_site_comes_up_in_vms(site: ImageLab, say: Say) -> None:
    t0 = time.monotonic()
    _, took = poll("every node ready", site.ready, bound=UP, interval=5.0)
    url = site.url()
    poll("the balancer serves", lambda: serves(url), bound=120.0, interval=2.0)
    say(f"web site in VMs: every node ready {took:.0f} s after the agents started "
        f"({time.monotonic() - t0:.0f} s)")
    req = urllib.request.Request(f"{url}/entries", data=b"hello from outside", method="POST")
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert reply.status == 201
    assert "hello from outside" in entries(url)


def test_the_agent_restarts_and_stops_under_systemd_and_mariadb_keeps_serving(
        site: ImageLab, say: Say) -> None:
    """`systemctl restart cloudd` and `systemctl stop cloudd` inside the database guest leave
    MariaDB running (the unit's KillMode=process); the new agent adopts it."""
    db = "lab-database-1"

    def ssh(*argv: str) -> str:
        done = site.guest_ssh(db, *argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout.strip()

    pid = ssh("pgrep", "-x", "mariadbd")
    url = site.url()
    with Client(url) as client:
        time.sleep(2.0)
        since = time.time()
        ssh("systemctl", "restart", "cloudd")
        poll("cloudd active again in the guest",
             lambda: site.guest_ssh(db, "systemctl", "is-active", "cloudd").stdout.strip()
             == "active", bound=300.0, interval=2.0)
        ssh("systemctl", "stop", "cloudd")
        assert ssh("pgrep", "-x", "mariadbd") == pid  # still the same process, agent gone
        ssh("systemctl", "start", "cloudd")
        poll("the database node ready again", site.ready, bound=300.0, interval=2.0)
        time.sleep(2.0)
    assert ssh("pgrep", "-x", "mariadbd") == pid
    lost = client.lost(url)
    say(f"systemctl restart/stop/start cloudd in the database guest: mariadbd pid {pid} kept, "
        f"{client.failed_seconds(since):.1f} s of failed requests, "
        f"{len(client.acknowledged)} writes acknowledged, {len(lost)} lost")
    assert lost == []


def test_the_guests_clocks_follow_the_pool_hosts(site: ImageLab, say: Say) -> None:
    hosts = {site.agents[h].ns.ip for h in ("pm1", "pm2", "pm3")}
    for node in sorted(site.node_addresses):
        def synced(node: str = node) -> str | None:
            lines = site.guest_ssh(node, "chronyc", "-n", "sources").stdout.splitlines()
            return next((line for line in lines if line.startswith(("^*", "^+"))
                         and line.split()[1] in hosts), None)
        line, took = poll(f"{node}'s chrony follows a pool host", synced, bound=300.0,
                          interval=5.0)
        say(f"{node}: chrony {line.split()[0]} {line.split()[1]} after {took:.0f} s")


def test_kill_9_the_database_vm_keeps_every_acknowledged_write(site: ImageLab,
                                                               say: Say) -> None:
    url = site.url()
    domain = site.domain("lab-database-1")
    pid = qemu_pid(domain)
    assert pid is not None
    with Client(url) as client:
        time.sleep(5.0)  # some writes before the fault
        t_fault = time.time()
        os.kill(pid, signal.SIGKILL)
        poll("the database VM respawned and the site writes again",
             lambda: (qemu_pid(domain) not in (None, pid)
                      and client.serving_again(t_fault) is not None
                      and client.wrote_since(t_fault + 1.0)),
             bound=BACK, interval=2.0)
        time.sleep(3.0)  # writes after the recovery
    lost = client.lost(url)
    back = client.serving_again(t_fault)
    say(f"kill -9 of the database VM's qemu: {client.failed_seconds(t_fault):.1f} s of failed "
        f"requests, serving again after {back:.0f} s, {len(client.acknowledged)} writes "
        f"acknowledged, {len(lost)} lost")
    assert lost == []
