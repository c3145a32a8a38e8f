"""A pool host's duties over an in-memory backend: which libvirt connection, the leader's
commands, and every domain event of this cloud forwarded to whoever leads, at once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cloudd.config.agent import AgentSettings, Libvirt
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.host.duties import DEFAULT_URI, HostDuties, libvirt_uri
from cloudd.daemon.network.catalogue import DomainEventNote
from cloudd.errors import PermanentError
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import DomainEvent, EventKind, FakeBackend
from cloudd.vmctl.hostagent import HostCommand, Op, Outcome
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {name: pm1, address: 192.0.2.70}
  - {name: pm2, address: 192.0.2.71, libvirt_uri: "test:///pm2"}
roles:
  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]
  server: [{address: 192.0.2.176, image: /img/web1.qcow2}]
  database: [{address: 192.0.2.177, image: /img/db.qcow2}]
settings: {app_port: 8080}
"""

TEMPLATE = ("<domain type='qemu'><name>${name}</name><uuid>${uuid}</uuid>"
            "<memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>"
            "<os><type>hvm</type></os>${metadata}</domain>")


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    return load_cloud(tmp_path / "shop.yaml", CATALOG)


@pytest.mark.parametrize(("me", "own", "uri"), [
    ("pm2", "qemu+ssh://x/system", "test:///pm2"),   # the manifest's, for this host
    ("pm1", "qemu+ssh://x/system", "qemu+ssh://x/system"),   # else the agent's own
    ("pm1", None, DEFAULT_URI),                      # else the system's
])
def test_which_libvirt(cloud: Cloud, me: str, own: str | None, uri: str) -> None:
    agent = AgentSettings(name=me, libvirt=Libvirt(uri=own))
    assert libvirt_uri(cloud, me=me, settings=agent) == uri


@dataclasses.dataclass
class Host:
    duties: HostDuties
    backend: FakeBackend
    opened: list[str]
    sent: list[tuple[str, Any]]
    local: list[tuple[str, DomainEvent]]
    leader: list[str]


def host(tmp_path: Path, cloud: Cloud) -> Host:
    backend = FakeBackend(clock=FakeClock().monotonic)
    opened: list[str] = []
    sent: list[tuple[str, Any]] = []
    local: list[tuple[str, DomainEvent]] = []
    leader = [""]

    async def open_backend(uri: str) -> FakeBackend:
        opened.append(uri)
        return backend

    duties = HostDuties(
        me="pm1", cloud=lambda: cloud, settings=AgentSettings(name="pm1"),
        state_dir=tmp_path / "state", open_backend=open_backend, leader=lambda: leader[0],
        send=lambda peer, msg: sent.append((peer, msg)),
        local=lambda h, e: local.append((h, e)))
    return Host(duties, backend, opened, sent, local, leader)


def event(cloud: str) -> DomainEvent:
    meta = CloudMeta(cloud=cloud, node="shop-server-1", role="server", term=3)
    return DomainEvent(EventKind.STOPPED, f"{cloud}-x", meta, "crashed", 0.0)


@pytest.mark.parametrize(("leader", "to_leader", "to_local"), [
    ("pm2", True, False),   # another host leads: a note to it
    ("pm1", False, True),   # this host leads: its own controller, in process
    ("", False, False),     # an election runs: nobody (the next leader re-observes)
])
def test_events_go_to_whoever_leads(tmp_path: Path, cloud: Cloud, leader: str,
                                    to_leader: bool, to_local: bool) -> None:
    h = host(tmp_path, cloud)
    h.leader[0] = leader
    h.duties.forward(event("shop"))
    h.duties.forward(event("other"))  # another cloud's domain on the same host: not ours
    assert h.sent == ([("pm2", DomainEventNote("pm1", event("shop")))] if to_leader else [])
    assert h.local == ([("pm1", event("shop"))] if to_local else [])


async def test_commands_are_answered_once_libvirt_is_open(tmp_path: Path, cloud: Cloud) -> None:
    h = host(tmp_path, cloud)
    with pytest.raises(PermanentError, match="pm1 is not a pool host of shop"):
        await h.duties.execute(HostCommand(Op.LIST, 3))
    h.leader[0] = "pm2"
    task = asyncio.create_task(h.duties.run())
    try:
        for _ in range(100):
            if h.duties.agent is not None:
                break
            await asyncio.sleep(0)
        assert h.opened == [DEFAULT_URI]
        xml = render_domain(TEMPLATE, NodeDomain(
            meta=CloudMeta(cloud="shop", node="shop-server-1", role="server", term=3),
            memory_mib=64, vcpus=1, image="/img/web1.qcow2"))
        name = "shop-shop-server-1"
        for op, args in ((Op.DEFINE, (name, xml)), (Op.START, (name,))):
            result = await h.duties.execute(HostCommand(op, 3, *args))
            assert result.outcome is Outcome.DONE
        h.backend.crash(name)
        for _ in range(100):
            if len(h.sent) == 3:
                break
            await asyncio.sleep(0)
        kinds = [note.event.kind for _, note in h.sent]
        assert kinds == [EventKind.DEFINED, EventKind.STARTED, EventKind.STOPPED]
        assert {peer for peer, _ in h.sent} == {"pm2"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert h.duties.agent is None
