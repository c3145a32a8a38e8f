"""Draining a host moves its VMs live: the web site in VMs keeps serving, every guest keeps its
boot, and the moves go both ways between two libvirtds.

Two pool host agents in namespaces; pm1 uses this machine's libvirtd, pm2 a second libvirtd
beside it that libvirt takes for another host (cloudd_lab.secondlibvirtd: its own mount and
UTS namespaces, host UUID and migration ports). Both see this machine's image folder, so the
manifest declares them as sharing storage `lab`, each with the URI its libvirtd is reached at
and `unsafe: true` (libvirt cannot tell that one local file system seen by two daemons is
shared); moves to pm1 are encrypted (`tls: true`: certificates the lab makes for QEMU,
`cloudd_lab.secondlibvirtd.QemuTls`), moves to pm2 are not. The web cloud (one balancer, one
server, one database) runs in VMs booted from the node image. A client writes through the
balancer every 100 ms (cloudd_lab.webfaults) while `cloudd-cli drain pm2 --move-stateful`
moves every guest on pm2 to pm1, live: each guest's boot id is the same after the move, and
the one server never stopped serving, which a stop-and-re-place could not do. Then pm1 is
drained the same way and every guest moves to pm2 (`make e2e` only). Waits are bounded
polls; the seconds of failed requests are reported, not asserted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cloudd_lab import webfaults
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.secondlibvirtd import QemuTls, SecondLibvirtd
from cloudd_lab.vmlab import leftovers, poll, virsh
from cloudd_lab.webclient import serves

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt, pytest.mark.netns, pytest.mark.services,
              pytest.mark.timeout(2400)]

PREFIX = "h28m"
SUBNET = "10.239.56.0/24"
NODES = {"database": 1, "server": 1, "balancer": 1}
#: generous bounds: 2 shared cores, three Debian guests booting systemd under TCG
UP = 1500.0
MOVED = 900.0
Say = Callable[[str], None]


def migration(uri: str, *, tls: bool = False) -> dict[str, object]:
    """A pool host's `migration` in the lab: both qemus listen on loopback."""
    return {"uri": uri, "storage": "lab", "address": "127.0.0.1", "unsafe": True, "tls": tls}


@pytest.fixture(scope="module")
def site() -> Iterator[ImageLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    second = SecondLibvirtd(Path(f"/run/cloudd-lab-{PREFIX}"), f"{PREFIX}-pm2")
    lab = ImageLab(PREFIX, hosts=2, nodes=dict(NODES), subnet=SUBNET, cloud_name=PREFIX,
                   more_libvirtds=(second.uri,),
                   host_fields={"pm1": {"migration": migration(second.main_uri, tls=True)},
                                "pm2": {"libvirt_uri": second.uri,
                                        "migration": migration(second.uri)}})
    left: list[str] = []
    with QemuTls(), second:
        try:
            with lab:
                lab.start_all()
                yield lab
        finally:
            # what the lab left on the second libvirtd, before closing it removes everything
            left += virsh("list", "--all", "--name", uri=second.uri).stdout.split()
    left += leftovers(PREFIX)
    assert left == [], f"the live migration e2e left these behind: {left}"


def drain_live(site: ImageLab, host: str, say: Say) -> None:
    outcome = webfaults.drain(site, host, bound=MOVED, move_stateful=True)
    say(outcome.line())
    assert outcome.lost == ()
    moved = outcome.detail.split(": ", 1)[1].split(", ")
    assert moved and all(m.endswith("(live)") for m in moved), outcome.detail
    events = site.events()
    for node in (m.split()[0] for m in moved):
        assert any(e.startswith(f"migrate on {host}: host {host} is drained: moving {node} ")
                   and e.endswith("(storage lab is shared)") for e in events), events[-20:]
    say("\n".join(e for e in events if e.startswith(f"migrate on {host}")))
    undone = site.cli(site.running()[0], "undrain", host)
    assert undone.returncode == 0, undone.stderr


def test_the_site_comes_up_on_two_libvirtds(site: ImageLab, say: Say) -> None:
    _, took = poll("every node ready", site.ready, bound=UP, interval=5.0)
    poll("the balancer serves", lambda: serves(site.url()), bound=120.0, interval=2.0)
    hosts = {d.host for d in site.domains().values()}
    say(f"web site in VMs on two libvirtds: every node ready after {took:.0f} s; "
        f"nodes on {', '.join(sorted(hosts))}")
    assert hosts == {"pm1", "pm2"}


def test_draining_a_host_moves_its_guests_live_while_the_site_serves(site: ImageLab,
                                                                     say: Say) -> None:
    drain_live(site, "pm2", say)
    assert {d.host for d in site.domains().values()} == {"pm1"}


@pytest.mark.e2e_full
def test_and_back_the_other_way(site: ImageLab, say: Say) -> None:
    drain_live(site, "pm1", say)
    assert {d.host for d in site.domains().values()} == {"pm2"}
