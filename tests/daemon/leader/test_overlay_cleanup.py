"""The leader's controller over real HostAgents (fake hypervisors, real qemu-img overlays, seed
files): a node keeps its overlay through a restart in place and a re-define, and a node
dropped from the manifest, or a stopped cloud, leaves no domain, no seed and no overlay."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from shared.domains import one_disk_xml

from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.controller import Controller, LocalHosts
from cloudd.daemon.leader.imagecopy import create_overlay
from cloudd.daemon.network.catalogue import register_all
from cloudd.daemon.network.codec import Codec
from cloudd.vmctl.backend import FakeBackend, Inventory, PowerState
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.plan import BackoffPolicy, Desired, Ensure, Liveness, NodeSpec


def render(spec: NodeSpec, term: int) -> str:
    return one_disk_xml("c1", spec.name, spec.image, role=spec.role, term=term,
                        memory_mib=spec.memory_mib)


@dataclass
class FileSeeds:
    """Seed hooks that make the seed a file beside the overlays, as NodeSeeds does."""

    folder: Path

    def path(self, domain: str) -> Path:
        return self.folder / f"{domain}.seed.iso"

    async def prepare(self, domain: str, term: int) -> None:
        self.path(domain).write_text(f"seed of {domain} in term {term}\n")

    async def remove(self, domain: str) -> None:
        self.path(domain).unlink(missing_ok=True)


@dataclass
class Cloud:
    images: Path
    base: Path
    backends: dict[str, FakeBackend]
    agents: dict[str, HostAgent]
    nodes: list[NodeSpec]
    ensure: list[Ensure]
    controller: Controller
    events: EventLog

    def disk(self, node: str) -> Path:
        return self.images / f"c1-{node}.qcow2"

    def seed(self, node: str) -> Path:
        return self.images / f"c1-{node}.seed.iso"

    def where(self, node: str) -> str | None:
        """The host that has a domain of `node`."""
        return next((h for h, b in self.backends.items() if f"c1-{node}" in b.domains), None)

    def running(self) -> set[str]:
        return {d.meta.node for b in self.backends.values() for d in b.domains.values()
                if d.meta is not None and d.state is PowerState.RUNNING}

    async def converge(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            await self.controller.pass_once()
            await self.controller.idle()


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    # two hosts sharing one image folder, as the lab's do
    images = tmp_path / "images"
    images.mkdir()
    base = images / "base.qcow2"
    await asyncio.to_thread(subprocess.run, ["qemu-img", "create", "-q", "-f", "qcow2",
                                             str(base), "16M"], check=True)
    clock = FakeClock()
    backends = {h: FakeBackend(clock=clock.monotonic) for h in ("h0", "h1")}
    agents = {h: HostAgent(b, state_dir=tmp_path / h, host=h, cloud="c1", image_dirs=(images,),
                           seeds=FileSeeds(images)) for h, b in backends.items()}
    client = LocalHosts(agents)
    nodes = [NodeSpec(n, "db" if n == "n0" else "web", 256, 1, str(images / f"c1-{n}.qcow2"),
                      base_image=str(base)) for n in ("n0", "n1", "n2")]
    ensure = [Ensure.RUNNING]
    events = EventLog.in_state_dir(tmp_path)
    controller = Controller(
        desired=lambda: Desired("c1", ensure[0], tuple(nodes), ("db", "web")),
        hosts=lambda: sorted(backends), liveness=lambda _: Liveness.ALIVE, leader=lambda: 3,
        client=client, events=events, render=render, clock=clock,
        overlay=lambda host, spec: create_overlay(client, host, spec, cloud="c1",
                                                  term=lambda: 3),
        policy=BackoffPolicy(base=10.0, jitter=0.0, stable=600.0), resync=3600.0)
    made = Cloud(images, base, backends, agents, nodes, ensure, controller, events)
    await made.converge()
    assert made.running() == {"n0", "n1", "n2"}
    for n in ("n0", "n1", "n2"):
        assert made.disk(n).is_file() and made.seed(n).is_file()
    yield made
    events.close()


async def test_a_restart_in_place_keeps_the_overlay(cloud: Cloud) -> None:
    host = cloud.where("n0")
    assert host is not None
    disk = cloud.disk("n0").stat()
    cloud.backends[host].crash("c1-n0")
    await cloud.converge()
    assert cloud.where("n0") == host and "n0" in cloud.running()
    after = cloud.disk("n0").stat()
    assert (after.st_ino, after.st_mtime_ns) == (disk.st_ino, disk.st_mtime_ns)


async def test_a_domain_undefined_to_be_defined_again_keeps_the_overlay(cloud: Cloud) -> None:
    host = cloud.where("n0")
    assert host is not None
    disk = cloud.disk("n0").stat()
    agent = cloud.agents[host]
    for op in (Op.DESTROY, Op.UNDEFINE):
        await agent.execute(HostCommand(op, 3, "c1-n0"))
    assert cloud.where("n0") is None and not cloud.seed("n0").exists()
    await cloud.converge()
    assert cloud.where("n0") is not None and "n0" in cloud.running()
    assert cloud.seed("n0").is_file()
    after = cloud.disk("n0").stat()
    assert (after.st_ino, after.st_mtime_ns) == (disk.st_ino, disk.st_mtime_ns)
    assert not any("removeimage" in e.reason for e in cloud.events.query(limit=1000))


async def test_a_node_dropped_from_the_manifest_leaves_nothing_on_its_host(cloud: Cloud) -> None:
    host = cloud.where("n1")
    assert host is not None
    kept = cloud.disk("n0").stat().st_ino
    cloud.nodes[:] = [n for n in cloud.nodes if n.name != "n1"]
    await cloud.converge()
    assert cloud.where("n1") is None
    assert not cloud.seed("n1").exists() and not cloud.disk("n1").exists()
    assert cloud.running() == {"n0", "n2"}
    assert cloud.disk("n0").stat().st_ino == kept and cloud.base.is_file()
    removed = [e for e in cloud.events.query(limit=1000)
               if e.subject == "n1" and e.reason.startswith("removeimage")]
    assert [(e.kind, e.reason) for e in removed] == [
        (LogKind.ACTION, f"removeimage on {host}: node is no longer in the manifest; "
                         "its domain is gone")]
    for agent in cloud.agents.values():
        assert agent.overlays.owner(str(cloud.disk("n1"))) is None


async def test_a_stopped_cloud_leaves_nothing_but_its_base_image(cloud: Cloud) -> None:
    cloud.ensure[0] = Ensure.STOPPED
    await cloud.converge()
    assert all(b.domains == {} for b in cloud.backends.values())
    assert sorted(p.name for p in cloud.images.iterdir()) == ["base.qcow2"]
    # and once running again, each node starts from a fresh overlay of the base image
    cloud.ensure[0] = Ensure.RUNNING
    await cloud.converge()
    assert cloud.running() == {"n0", "n1", "n2"}
    assert all(cloud.disk(n).is_file() for n in ("n0", "n1", "n2"))


async def test_a_node_whose_image_moved_loses_only_its_old_disk(cloud: Cloud) -> None:
    host = cloud.where("n2")
    assert host is not None
    cloud.nodes[2] = replace(cloud.nodes[2], image=str(cloud.images / "c1-n2-v2.qcow2"))
    # the old domain still uses the old disk: it stays while the domain is defined
    await cloud.converge()
    assert cloud.disk("n2").is_file()
    for op in (Op.DESTROY, Op.UNDEFINE):
        await cloud.agents[host].execute(HostCommand(op, 3, "c1-n2"))
    await cloud.converge()
    assert "n2" in cloud.running()
    assert (cloud.images / "c1-n2-v2.qcow2").is_file() and not cloud.disk("n2").exists()


def test_the_overlays_a_host_reports_reach_the_leader_over_the_wire() -> None:
    codec = register_all(Codec())
    result = HostResult(HostCommand(Op.INVENTORY, 3), CommandOutcome.DONE, 3, inventory=Inventory(
        1024, 2048, 2, frozenset({"/img/base.qcow2", "/img/c1-n1.qcow2"}),
        overlays=(("/img/c1-n1.qcow2", "c1-n1"),)))
    assert codec.decode_payload(codec.encode(result, reply=True)[4:]).msg == result
