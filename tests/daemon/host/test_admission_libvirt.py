"""The host's checks in front of a real libvirt connection (the in-process `test:///default`
driver): what the host renders itself is defined, a forged domain never reaches libvirt, and
the leader's own calls to its host pass the same checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.leader.hostcalls import HostCalls
from cloudd.vmctl.backend import Backend
from cloudd.vmctl.hostagent import CommandOutcome, HostCommand, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend

from .conftest import HostRig, make_host, running, write_cloud

SERVER = "shop-server-1"
DOMAIN = f"shop-{SERVER}"


@pytest.fixture
async def libvirt_rig(tmp_path: Path) -> AsyncIterator[HostRig]:
    cloud = write_cloud(tmp_path / "manifests", kind="test")
    opened: list[LibvirtBackend] = []

    async def open_backend(uri: str) -> Backend:
        opened.append(await LibvirtBackend.open("test:///default", call_timeout=10.0))
        return opened[-1]

    h = make_host(tmp_path, cloud, open_backend=open_backend)
    h.leases["pm1"] = 3
    async with running(h.duties):
        yield h


async def names(h: HostRig) -> list[str]:
    agent = h.duties.agent
    assert agent is not None
    return [d.name for d in await agent.backend.list()]


async def test_the_leader_reaches_its_own_host_through_the_same_checks(
        libvirt_rig: HostRig) -> None:
    h = libvirt_rig
    asked: list[Any] = []

    async def request(peer: str, msg: Any) -> Any:
        asked.append((peer, msg))
        raise AssertionError("the leader's own host is reached in process")

    calls = HostCalls(me="pm1", local=lambda: h.duties, request=request, clock=FakeClock(),
                      generation=lambda: h.duties.renderer.generation(h.cloud[0]))
    xml = h.duties.renderer.render(h.cloud[0], SERVER, 3)
    # a forged domain (a disk on the host's /dev/sda) never reaches libvirt
    forged = xml.replace("<disk type='file' device='disk'>",
                         "<disk type='block' device='disk'>").replace(
        "<source file='/var/lib/cloudd/images/web1.qcow2'/>", "<source dev='/dev/sda'/>")
    assert forged != xml
    refused = await calls.call("pm1", HostCommand(Op.DEFINE, 3, DOMAIN, forged))
    assert refused.outcome is CommandOutcome.FAILED
    assert refused.message == (f"the domain XML of {DOMAIN} is not this host's rendering of "
                               f"node {SERVER} in term 3")
    assert await names(h) == []
    # its own rendering is defined, carrying the generation the leader stamped
    done = await calls.call("pm1", HostCommand(Op.DEFINE, 3, DOMAIN, xml))
    assert done.outcome is CommandOutcome.DONE, done.message
    assert done.command.generation == h.duties.renderer.generation(h.cloud[0])
    assert await names(h) == [DOMAIN]
    # the leader's lease lapses: its own host refuses it like any other
    del h.leases["pm1"]
    lapsed = await calls.call("pm1", HostCommand(Op.START, 3, DOMAIN))
    assert (lapsed.outcome, lapsed.message) == (
        CommandOutcome.FAILED, "pm1 holds no unexpired lease of pm1 for term 3")
    assert asked == []
    agent = h.duties.agent
    assert agent is not None
    await agent.execute(HostCommand(Op.UNDEFINE, 3, DOMAIN))
