"""The e2e suite's lab: three pool host agents in namespaces on this machine's libvirtd and a
web cloud of three VMs whose agents run inside the guests (cloudd_lab.vmlab).

One lab serves the whole suite (booting guests under TCG is the expensive part), so the tests
run in file order, each starting from the cloud the previous one left converged. After the
session nothing of it may remain: no domain, namespace, bridge, agent process or folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cloudd_lab.vmlab import VmLab, leftovers, virsh

#: netlab prefix, cloud name and domain name prefix: unique to this suite on a shared machine
PREFIX = "h13e"
SUBNET = "10.239.13.0/24"
NODES = {"database": 1, "server": 1, "balancer": 1}


@pytest.fixture
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a finding (a timing) even while pytest captures the test's output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def out(line: str) -> None:
        with capman.global_and_fixture_disabled():
            print(f"\n[e2e] {line}", flush=True)
    return out


@pytest.fixture(scope="package", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    left = leftovers(PREFIX)
    assert left == [], f"the e2e suite left these behind: {left}"


@pytest.fixture(scope="package")
def lab() -> Iterator[VmLab]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    with VmLab(PREFIX, hosts=3, nodes=dict(NODES), subnet=SUBNET, cloud_name=PREFIX) as lab:
        yield lab
