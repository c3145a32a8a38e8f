"""The host agent's record of the overlays it made, and REMOVE_IMAGE with its refusals (fake
backend, the real qemu-img): only an overlay this host made for that very domain, inside its
image folders, that no domain defined here uses; a refusal removes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from shared.domains import one_disk_xml

from cloudd.vmctl.backend import FakeBackend, _FakeDomain
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.overlays import OVERLAYS_FILE


class Host:
    def __init__(self, tmp_path: Path) -> None:
        self.images = tmp_path / "images"
        self.images.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.backend = FakeBackend(clock=lambda: 0.0)
        self.agent = self.reopen()
        self.base = self.images / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.base), "16M"],
                       check=True)

    def reopen(self) -> HostAgent:
        self.agent = HostAgent(self.backend, state_dir=self.state, host="pm1", cloud="c1",
                               image_dirs=(self.images,))
        return self.agent

    async def overlay(self, node: str) -> Path:
        image = self.images / f"c1-{node}.qcow2"
        result = await self.agent.execute(HostCommand(Op.OVERLAY, 1, f"c1-{node}",
                                                      image=str(image), base=str(self.base)))
        assert result.outcome is CommandOutcome.DONE, result.message
        return image

    async def remove(self, image: Path | str, domain: str, *, term: int = 1) -> HostResult:
        return await self.agent.execute(HostCommand(Op.REMOVE_IMAGE, term, domain,
                                                    image=str(image)))

    async def reported(self) -> tuple[tuple[str, str], ...]:
        result = await self.agent.execute(HostCommand(Op.INVENTORY, 1))
        assert result.inventory is not None
        return result.inventory.overlays


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


async def test_an_overlay_is_recorded_reported_and_removed(host: Host) -> None:
    image = await host.overlay("web2")
    assert await host.reported() == ((str(image), "c1-web2"),)
    # the record is the host's own, in its state dir, and outlives the agent
    assert json.loads((host.state / OVERLAYS_FILE).read_text()) == {str(image): "c1-web2"}
    assert await host.reopen().execute(HostCommand(Op.LIST, 1))
    assert await host.reported() == ((str(image), "c1-web2"),)
    result = await host.remove(image, "c1-web2")
    assert result.outcome is CommandOutcome.DONE, result.message
    assert not image.exists() and host.base.exists()
    assert await host.reported() == ()
    assert json.loads((host.state / OVERLAYS_FILE).read_text()) == {}
    # the same order again (its answer was lost): nothing left to do
    again = await host.remove(image, "c1-web2")
    assert again.outcome is CommandOutcome.NOOP


async def test_a_base_image_is_never_reported_nor_removed(host: Host) -> None:
    await host.overlay("web2")
    result = await host.remove(host.base, "c1-web2")
    assert (result.outcome, result.message) == (
        CommandOutcome.FAILED, f"remove {host.base}: this host made no overlay of that path "
                               "for domain c1-web2")
    assert host.base.exists()
    assert [p for p, _ in await host.reported()] == [str(host.images / "c1-web2.qcow2")]


async def test_an_overlay_goes_only_for_the_domain_it_was_made_for(host: Host) -> None:
    image = await host.overlay("web2")
    result = await host.remove(image, "c1-web3")
    assert (result.outcome, result.message) == (
        CommandOutcome.FAILED, f"remove {image}: this host made no overlay of that path for "
                               "domain c1-web3 (it is c1-web2's)")
    assert image.exists()


async def test_a_file_this_host_did_not_make_stays(host: Host) -> None:
    # in the image folder, named like a node's overlay, but made by someone else
    theirs = host.images / "c1-db.qcow2"
    theirs.write_bytes(b"data")
    result = await host.remove(theirs, "c1-db")
    assert result.outcome is CommandOutcome.FAILED
    assert "this host made no overlay of that path" in result.message
    assert theirs.read_bytes() == b"data"


@pytest.mark.parametrize("where", ["outside", "dotdot", "relative", "nul"])
async def test_a_path_outside_the_image_folders_is_refused(host: Host, tmp_path: Path,
                                                           where: str) -> None:
    outside = tmp_path / "c1-web2.qcow2"
    outside.write_bytes(b"keep")
    path = {"outside": str(outside), "dotdot": f"{host.images}/../c1-web2.qcow2",
            "relative": "c1-web2.qcow2", "nul": f"{host.images}/x\0/../c1-web2.qcow2"}[where]
    result = await host.remove(path, "c1-web2")
    assert result.outcome is CommandOutcome.FAILED
    assert ("outside this host's image folders" in result.message if where != "relative"
            else result.message == "remove-image needs an absolute image path and its domain")
    assert outside.read_bytes() == b"keep"


async def test_an_overlay_whose_domain_is_defined_stays(host: Host) -> None:
    image = await host.overlay("web2")
    await host.backend.define(one_disk_xml("c1", "web2", str(image)))
    result = await host.remove(image, "c1-web2")
    assert (result.outcome, result.message) == (
        CommandOutcome.FAILED, f"remove {image}: domain c1-web2 is still defined on this host")
    assert image.exists()
    # undefined (a node dropped from the manifest): now it goes
    assert await host.backend.undefine("c1-web2")
    assert (await host.remove(image, "c1-web2")).outcome is CommandOutcome.DONE
    assert not image.exists()


@pytest.mark.parametrize("user", ["another node", "another cloud", "not cloudd's"])
async def test_an_overlay_any_defined_domain_uses_stays(host: Host, user: str) -> None:
    image = await host.overlay("web2")
    if user == "not cloudd's":
        host.backend.domains["handmade"] = _FakeDomain(
            xml=f"<domain><name>handmade</name><devices><disk type='file'><source file="
                f"'{host.images}/./c1-web2.qcow2'/></disk></devices></domain>",
            meta=None, uuid="uuid-handmade")
    else:
        await host.backend.define(one_disk_xml("c2" if user == "another cloud" else "c1",
                                               "web9", str(image)))
    result = await host.remove(image, "c1-web2")
    assert (result.outcome, result.message) == (
        CommandOutcome.FAILED, f"remove {image}: a domain defined on this host uses it as a disk")
    assert image.exists()
    assert await host.reported() == ((str(image), "c1-web2"),)


async def test_a_stale_term_removes_nothing(host: Host) -> None:
    image = await host.overlay("web2")
    await host.agent.execute(HostCommand(Op.LIST, 5))
    result = await host.remove(image, "c1-web2", term=4)
    assert result.outcome is CommandOutcome.STALE_TERM
    assert image.exists()


async def test_an_overlay_is_recorded_before_it_is_made(host: Host) -> None:
    # qemu-img fails (no base): the entry of the missing file is not reported, and goes with
    # the removal that finds nothing to remove
    image = host.images / "c1-web4.qcow2"
    failed = await host.agent.execute(HostCommand(Op.OVERLAY, 1, "c1-web4", image=str(image),
                                                  base=str(host.images / "absent.qcow2")))
    assert failed.outcome is CommandOutcome.FAILED
    assert json.loads((host.state / OVERLAYS_FILE).read_text()) == {str(image): "c1-web4"}
    assert await host.reported() == ()
    assert (await host.remove(image, "c1-web4")).outcome is CommandOutcome.NOOP
    assert json.loads((host.state / OVERLAYS_FILE).read_text()) == {}


async def test_an_overlay_without_its_domain_is_refused(host: Host) -> None:
    image = host.images / "c1-web5.qcow2"
    result = await host.agent.execute(HostCommand(Op.OVERLAY, 1, image=str(image),
                                                  base=str(host.base)))
    assert (result.outcome, result.message) == (
        CommandOutcome.FAILED, "overlay without the domain whose disk it is")
    assert not image.exists()


async def test_an_unreadable_record_forgets_rather_than_invents(host: Host) -> None:
    image = await host.overlay("web2")
    (host.state / OVERLAYS_FILE).write_text("[not, an, object")
    host.reopen()
    assert await host.reported() == ()
    assert (await host.remove(image, "c1-web2")).outcome is CommandOutcome.FAILED
    assert image.exists()
