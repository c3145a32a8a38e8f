"""REMOVE_IMAGE against real libvirtd (qemu:///system) and the real qemu-img (marker `libvirt`):
a host agent removes an overlay it made once no domain defined there uses it, and refuses a
path outside its image folders, a base image, and an overlay a defined domain (cloudd's or
not) uses. No guest is started. Domains are named `h12c-...` and removed by the fixtures."""

from __future__ import annotations

import asyncio
import shutil
import string
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from shared.domains import ONE_DISK, one_disk_xml

from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend

pytestmark = pytest.mark.libvirt

SYSTEM = "qemu:///system"
PREFIX = "h12c-"
def handmade_xml(name: str, image: Path) -> str:
    """A domain an operator defined by hand on the same disk: no cloudd metadata."""
    return string.Template(ONE_DISK).substitute(name=name, uuid=uuid.uuid4(), memory_kib=65536,
                                                vcpus=1, metadata="", image=image)


def virsh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", SYSTEM, *args], capture_output=True, text=True,
                          input=stdin, timeout=60, check=False)


async def qemu_img(*args: str) -> None:
    await asyncio.to_thread(subprocess.run, ["qemu-img", *args], check=True, timeout=30)


def cleanup(cloud: str) -> None:
    for name in virsh("list", "--all", "--name").stdout.split():
        if name.startswith(cloud):
            virsh("destroy", name)
            virsh("undefine", name)


@dataclass
class Host:
    cloud: str
    folder: Path
    images: Path
    base: Path
    agent: HostAgent

    def domain(self, node: str) -> str:
        return f"{self.cloud}-{node}"

    def xml(self, node: str, image: Path) -> str:
        return one_disk_xml(self.cloud, node, str(image), role="database")

    async def run(self, op: Op, domain: str = "", **kw: str) -> HostResult:
        return await self.agent.execute(HostCommand(op, 1, domain, **kw))

    async def remove(self, image: Path | str, node: str) -> HostResult:
        return await self.run(Op.REMOVE_IMAGE, self.domain(node), image=str(image))


@pytest.fixture
def cloud() -> Iterator[str]:
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    yield name
    cleanup(name)


@pytest.fixture
async def host(cloud: str, tmp_path: Path) -> AsyncIterator[Host]:
    folder = Path("/var/tmp") / cloud
    images = folder / "images"
    images.mkdir(parents=True, mode=0o755)
    base = images / "base.qcow2"
    await qemu_img("create", "-q", "-f", "qcow2", str(base), "32M")
    backend = await LibvirtBackend.open(SYSTEM, call_timeout=60)
    agent = HostAgent(backend, state_dir=tmp_path / "state", host="pm1", cloud=cloud,
                      image_dirs=(images,))
    try:
        yield Host(cloud, folder, images, base, agent)
    finally:
        await agent.close()
        await backend.close()
        cleanup(cloud)
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


async def test_an_overlay_is_removed_once_no_defined_domain_uses_it(host: Host) -> None:
    disk = host.images / f"{host.domain('db')}.qcow2"
    made = await host.run(Op.OVERLAY, host.domain("db"), image=str(disk), base=str(host.base))
    assert made.outcome is CommandOutcome.DONE, made.message
    listed = await host.run(Op.INVENTORY)
    assert listed.inventory is not None
    assert listed.inventory.overlays == ((str(disk), host.domain("db")),)
    # its own domain defined: the overlay stays
    defined = await host.run(Op.DEFINE, host.domain("db"), xml=host.xml("db", disk))
    assert defined.outcome is CommandOutcome.DONE, defined.message
    refused = await host.remove(disk, "db")
    assert (refused.outcome, refused.message) == (
        CommandOutcome.FAILED, f"remove {disk}: domain {host.domain('db')} is still defined on "
                               "this host")
    assert (await host.run(Op.UNDEFINE, host.domain("db"))).outcome is CommandOutcome.DONE
    # a domain cloudd did not define uses it: libvirt's own list of disks says so
    handmade = host.domain("handmade")
    assert virsh("define", "/dev/stdin",
                 stdin=handmade_xml(handmade, disk)).returncode == 0
    refused = await host.remove(disk, "db")
    assert (refused.outcome, refused.message) == (
        CommandOutcome.FAILED, f"remove {disk}: a domain defined on this host uses it as a disk")
    assert disk.is_file()
    assert virsh("undefine", handmade).returncode == 0
    # nothing uses it now: removed, and no longer reported; the base image stays
    removed = await host.remove(disk, "db")
    assert removed.outcome is CommandOutcome.DONE, removed.message
    assert not disk.exists() and host.base.is_file()
    listed = await host.run(Op.INVENTORY)
    assert listed.inventory is not None and listed.inventory.overlays == ()


async def test_a_path_outside_the_image_folders_and_a_base_image_stay(host: Host) -> None:
    outside = host.folder / f"{host.domain('db')}.qcow2"
    await qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(host.base),
                   str(outside))
    for path in (outside, f"{host.images}/../{outside.name}"):
        refused = await host.remove(path, "db")
        assert refused.outcome is CommandOutcome.FAILED
        assert "is outside this host's image folders" in refused.message
    refused = await host.remove(host.base, "db")
    assert (refused.outcome, refused.message) == (
        CommandOutcome.FAILED, f"remove {host.base}: this host made no overlay of that path "
                               f"for domain {host.domain('db')}")
    assert outside.is_file() and host.base.is_file()
