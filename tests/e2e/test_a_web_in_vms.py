"""The web site served from real VMs, measured as a user would see it.

Three pool host agents in namespaces share this machine's libvirtd; the web cloud (one
balancer, two app servers, one database) runs in VMs booted from the node image
(`cloudd-cli image build`: Debian 12, systemd, cloud-init, the agent in its own virtualenv):
each node's agent starts under the guest's systemd from the identity its NoCloud seed
brings, and runs its role's MariaDB, WEBrick or nginx inside the guest (cloudd_lab.imagelab).
A client outside the VMs writes an entry through the balancer every 100 ms while a fault is
made (cloudd_lab.webfaults); the test reports the seconds of failed requests, the time until
the site serves again, and the writes acknowledged and lost. Waits are bounded polls, never
timed asserts. The faults, in order: the agent restarted and stopped under the database
guest's systemd; kill -9 of the database's, a server's and the balancer's qemu; a node whose
domain the operator defines by hand with its `cloudd-cli seed` joins; the leader's host loses
power (the database elsewhere); the database's own host loses power and its disk. `make test`
runs one case of each kind; the rest (`e2e_full`) runs in `make e2e`.

This module runs first in the e2e package (its name) and its lab goes away with it, before
the test-guest lab of the thesis tests comes up: the machine runs one lab of VMs at a time.
"""

from __future__ import annotations

import string
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from cloudd_lab import webfaults
from cloudd_lab.agentlab import CLI
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.paths import example_template
from cloudd_lab.vmlab import IMAGES, leftovers, poll, virsh
from cloudd_lab.webclient import entries, serves

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
                      cloud_name=PREFIX, hosts_last_first=True) as lab:
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
    outcome = webfaults.restart_agent_in_guest(site, webfaults.DATABASE, bound=300.0)
    say(outcome.line())
    assert outcome.lost == ()


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
    outcome = webfaults.kill_vm(site, webfaults.DATABASE, bound=BACK)
    say(outcome.line())
    assert outcome.lost == ()


@pytest.mark.e2e_full
def test_kill_9_a_server_vm_the_other_server_serves(site: ImageLab, say: Say) -> None:
    outcome = webfaults.kill_vm(site, "lab-server-1", bound=BACK)
    say(outcome.line())
    assert outcome.lost == ()


@pytest.mark.e2e_full
def test_kill_9_the_balancer_vm(site: ImageLab, say: Say) -> None:
    outcome = webfaults.kill_vm(site, "lab-balancer-1", bound=BACK)
    say(outcome.line())
    assert outcome.lost == ()


def test_a_node_defined_by_hand_with_its_seed_joins(site: ImageLab, say: Say) -> None:
    """An operator adds a `managed: false` server to the manifest, makes its seed with
    `cloudd-cli seed`, and defines its domain by hand from the built image and the shipped
    template (no cloudd metadata: no host agent manages it). Its agent starts from the seed
    alone, joins, takes the server role, and the database lets it in."""
    node = site.add_node("server")
    site.write_manifest()
    manifest = site.agents["pm1"].folder / "manifests" / "lab.yaml"
    seed = IMAGES / f"{PREFIX}-byhand-{node}.seed.iso"
    overlay = IMAGES / f"{PREFIX}-byhand-{node}.qcow2"
    made = subprocess.run([CLI, "seed", node, "--manifest", str(manifest), "--out", str(seed),
                           "--dir", str(site.root / "pki")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    mac = made.stdout.rsplit("MAC: ", 1)[1].strip(" )\n")
    assert site.image is not None
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(site.image.qcow2), str(overlay)], check=True, timeout=60)
    domain = f"{PREFIX}-byhand-{node}"
    xml = string.Template(example_template("web").read_text()).substitute(
        name=domain, uuid=str(uuid.uuid4()), metadata="", memory_kib=str(1024 * 1024),
        vcpus="1", image=str(overlay), mac=mac, seed=str(seed), bridge=site.net.bridge,
        serial_log=f"/var/log/libvirt/qemu/{domain}.serial.log",
        kernel=str(site.image.kernel), initrd=str(site.image.initrd))
    xml_file = site.root / f"{domain}.xml"
    xml_file.write_text(xml)
    for argv in (("define", str(xml_file)), ("start", domain)):
        done = virsh(*argv)
        assert done.returncode == 0, done.stderr
    try:
        _, took = poll(f"{node} ready", lambda: site.phases().get(node) == "ready",
                       bound=UP, interval=5.0)
        address = site.node_addresses[node]
        req = urllib.request.Request(f"http://{address}:8080/entries", data=b"by hand",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as reply:
            assert reply.status == 201  # its WEBrick reached the database as the app's user
        assert "by hand" in entries(site.url())
        say(f"{node}, a domain defined by hand with only its `cloudd-cli seed` ISO: ready "
            f"{took:.0f} s after virsh start, writes through its own WEBrick")
    finally:  # the operator takes it out again: the next faults are the four-node cloud's
        site.remove_node(node)
        site.write_manifest()
        virsh("destroy", domain)
        virsh("undefine", domain)
        overlay.unlink(missing_ok=True)
        seed.unlink(missing_ok=True)


@pytest.mark.e2e_full
def test_the_leaders_host_loses_power_with_the_database_elsewhere(site: ImageLab,
                                                                   say: Say) -> None:
    host, outcome = webfaults.leader_host_loss(site, bound=BACK)
    say(outcome.line())
    assert outcome.lost == ()
    site.bring_back(host)


def test_the_databases_host_loses_power_and_its_disk(site: ImageLab, say: Say) -> None:
    """The last fault, honestly: a single database on a host's local disk loses what it had
    when that disk goes; the node comes back elsewhere from its base image and the site takes
    writes again, none of which is lost."""
    host, outcome = webfaults.database_host_loss(site, bound=BACK)
    say(outcome.line() + f"; {len(outcome.lost)} of the writes acknowledged before the power "
        "loss went with the database's disk")
    assert outcome.lost_after == 0
    site.bring_back(host)
