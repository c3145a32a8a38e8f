"""A pool host's duties over a backend of the test's choice, with a lease table the test
writes: `HostRig.leases[member] = term` is the lease this host granted that member."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloudd.config.agent import AgentSettings, Libvirt
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.host.duties import HostDuties
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import Backend, DomainEvent, FakeBackend
from cloudd.vmctl.hostagent import HostAgent

IMAGES = "/var/lib/cloudd/images"


def shop_manifest(images: str | Path = IMAGES) -> str:
    """The shop cloud on two pool hosts (pm2 with a libvirt URI of its own), its disks in
    `images`: the server's an overlay of a base image pm2 has."""
    return f"""\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {{name: pm1, address: 192.0.2.70}}
  - {{name: pm2, address: 192.0.2.71, libvirt_uri: "test:///pm2"}}
roles:
  balancer: [{{address: 192.0.2.175, image: {images}/lb.qcow2}}]
  server:
    - {{address: 192.0.2.176, image: {images}/web1.qcow2, overlay: true,
       base_image: {images}/web.qcow2, source_host: pm2}}
  database: [{{address: 192.0.2.177, image: {images}/db.qcow2}}]
network: {{prefix_length: 24, gateway: 192.0.2.1}}
settings: {{app_port: 8080}}
"""


MANIFEST = shop_manifest()

TEMPLATE = """<domain type='${kind}'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type><cmdline>${cmdline}</cmdline></os>
  ${metadata}
  <devices>
    <disk type='file' device='disk'><source file='${image}'/><target dev='vda'/></disk>
    <serial type='file'><source path='${serial_log}'/><target port='0'/></serial>
  </devices>
</domain>
"""


def write_cloud(folder: Path, *, kind: str = "qemu", manifest: str = MANIFEST,
                template: str = TEMPLATE) -> Cloud:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "web.xml").write_text(template.replace("${kind}", kind))
    (folder / "shop.yaml").write_text(manifest)
    return load_cloud(folder / "shop.yaml", CATALOG)


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return write_cloud(tmp_path / "manifests")


@dataclasses.dataclass
class HostRig:
    duties: HostDuties
    backend: Backend
    opened: list[str]
    sent: list[tuple[str, Any]]
    local: list[tuple[str, DomainEvent]]
    leader: list[str]
    leases: dict[str, int]
    cloud: list[Cloud]


def make_host(tmp_path: Path, cloud: Cloud, *, backend: Backend | None = None,
              open_backend: Callable[[str], Awaitable[Backend]] | None = None,
              settings: AgentSettings | None = None,
              fence: Callable[[], int | None] | None = None) -> HostRig:
    backend = backend or FakeBackend(clock=FakeClock().monotonic)
    opened: list[str] = []
    sent: list[tuple[str, Any]] = []
    local: list[tuple[str, DomainEvent]] = []
    leader = [""]
    leases: dict[str, int] = {}
    current = [cloud]

    async def opening(uri: str) -> Backend:
        opened.append(uri)
        return backend if open_backend is None else await open_backend(uri)

    duties = HostDuties(
        me="pm1", cloud=lambda: current[0],
        settings=settings or AgentSettings(name="pm1", libvirt=Libvirt(image_dirs=[IMAGES])),
        state_dir=tmp_path / "state", open_backend=opening, leader=lambda: leader[0],
        send=lambda peer, msg: sent.append((peer, msg)),
        local=lambda h, e: local.append((h, e)),
        holds_lease=lambda member, term: leases.get(member) == term, fence=fence)
    return HostRig(duties, backend, opened, sent, local, leader, leases, current)


@contextlib.asynccontextmanager
async def running(duties: HostDuties) -> AsyncIterator[HostAgent]:
    """`duties.run()` as a task for the block, which starts once its host agent is open (a
    wait bounded at 10 s); the task is cancelled after it."""
    task = asyncio.create_task(duties.run())
    try:
        for i in range(1010):
            if duties.agent is not None or task.done():
                break
            await asyncio.sleep(0 if i < 10 else 0.01)
        assert duties.agent is not None
        yield duties.agent
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def rig(tmp_path: Path, cloud: Cloud) -> AsyncIterator[HostRig]:
    """A host whose duties run (its backend open); pm2 holds its lease for term 3."""
    h = make_host(tmp_path, cloud)
    h.leases["pm2"] = 3
    h.leader[0] = "pm2"
    async with running(h.duties):
        yield h
