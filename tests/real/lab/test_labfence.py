"""The lab's fence command against real libvirtd and real QEMU guests (marker `libvirt`).

Two host agents share qemu:///system, as in the agent lab: each defines through its HostAgent
(which stamps its host into the metadata). Fencing one host removes exactly its domains of the
named cloud; the other host's, another cloud's and a hand-made domain stay.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cloudd_lab.agentlab import LabLock
from cloudd_lab.testguest import build_minimal_guest

from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, RawXml, domain_values, render

pytestmark = pytest.mark.libvirt

SYSTEM = "qemu:///system"
PREFIX = "h12lf"
GUEST_CACHE = Path("/var/tmp/cloudd-h12-guest")
TEMPLATE = """<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory>
  <vcpu>${vcpus}</vcpu>
  ${metadata}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel>
    <initrd>${initrd}</initrd>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices><memballoon model='none'/></devices>
</domain>
"""


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", SYSTEM, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def names() -> set[str]:
    return {n for n in virsh("list", "--all", "--name").stdout.split() if n.startswith(PREFIX)}


def cleanup() -> None:
    for name in names():
        virsh("destroy", name)
        virsh("undefine", name)
    for log in Path("/var/log/libvirt/qemu").glob(f"{PREFIX}*.log"):
        log.unlink(missing_ok=True)


@pytest.fixture
def clean() -> Iterator[None]:
    if virsh("version").returncode != 0:
        pytest.skip("no libvirtd at qemu:///system (scripts/ensure-libvirtd.sh)")
    with LabLock(PREFIX):  # another run of this test waits rather than removing our domains
        cleanup()
        try:
            yield
        finally:
            cleanup()


def xml(cloud: str, node: str, *, metadata: bool = True) -> str:
    GUEST_CACHE.mkdir(parents=True, exist_ok=True)
    GUEST_CACHE.chmod(0o755)
    image = build_minimal_guest(GUEST_CACHE)
    values = domain_values(NodeDomain(
        meta=CloudMeta(cloud=cloud, node=node, role="compute", term=1), memory_mib=96,
        vcpus=1, image="", extra={"kernel": str(image.kernel), "initrd": str(image.initrd)}))
    if not metadata:
        values["metadata"] = RawXml("")  # a domain defined by hand: no cloudd metadata
    return render(TEMPLATE, values)


@pytest.fixture
async def hosts(clean: None, tmp_path: Path) -> AsyncIterator[dict[str, HostAgent]]:
    agents = {}
    for host in ("pma", "pmb"):
        backend = await LibvirtBackend.open(SYSTEM)
        agents[host] = HostAgent(backend, state_dir=tmp_path / host, host=host, image_dirs=())
    try:
        yield agents
    finally:
        for agent in agents.values():
            await agent.backend.close()


def fence(host: str, record: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudd_lab.labfence", "--uri", SYSTEM, "--host", host,
         "--cloud", f"{PREFIX}c", "--record", str(record)],
        capture_output=True, text=True, timeout=120, check=False)


async def test_fence_removes_only_that_hosts_domains(hosts: dict[str, HostAgent],
                                                     tmp_path: Path) -> None:
    pma, pmb = hosts["pma"], hosts["pmb"]
    cloud = f"{PREFIX}c"
    for agent, node, start in ((pma, "n1", True), (pma, "n2", False), (pmb, "n3", True)):
        name = f"{cloud}-{node}"
        assert (await agent.execute(HostCommand(Op.DEFINE, 1, name, xml(cloud, node)))) \
            .outcome is CommandOutcome.DONE
        if start:
            assert (await agent.execute(HostCommand(Op.START, 1, name))).outcome \
                is CommandOutcome.DONE
    other = f"{PREFIX}x-n1"
    await pma.execute(HostCommand(Op.DEFINE, 1, other, xml(f"{PREFIX}x", "n1")))
    handmade = f"{PREFIX}-handmade"
    path = tmp_path / "hand.xml"
    path.write_text(xml("h", "h", metadata=False).replace("h-h", handmade))
    assert virsh("define", str(path)).returncode == 0
    # libvirt kept the stamped host: each host lists only its own
    listed = await pma.execute(HostCommand(Op.LIST, 1))
    assert sorted(d.name for d in listed.domains) == [f"{cloud}-n1", f"{cloud}-n2", other]
    assert {d.meta.host for d in listed.domains} == {"pma"}
    assert [d.name for d in (await pmb.execute(HostCommand(Op.LIST, 1))).domains] == \
        [f"{cloud}-n3"]

    record = tmp_path / "fences"
    done = fence("pma", record)
    assert done.returncode == 0, done.stderr
    assert "removed 2 domain(s)" in done.stderr.splitlines()[-1]
    assert names() == {f"{cloud}-n3", other, handmade}
    assert virsh("domstate", f"{cloud}-n3").stdout.strip() == "running"
    line = record.read_text().split()
    assert line[1:] == ["fenced", "pma", f"{cloud}-n1", f"{cloud}-n2"]
    # nothing left: fencing again succeeds at once
    assert fence("pma", record).returncode == 0


def test_fence_fails_when_libvirtd_cannot_be_reached(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudd_lab.labfence", "--uri",
         f"qemu+unix:///system?socket={tmp_path}/no-such.sock", "--host", "pma"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("fence pma: libvirt connect")
