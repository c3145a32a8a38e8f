"""The host agent's FETCH command against a real sshd on 127.0.0.1.

The source sshd serves SFTP chrooted into a folder of its own, so that it is a different
filesystem from the copying host's point of view while the image path is the same on both, as
on a real pool."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_images import free_port, keygen, make_base, run_sshd

from cloudd.config.agent import load_agent
from cloudd.daemon.base.eventlog import EventLog, LogKind
from cloudd.daemon.leader.controller import Controller, LocalHosts
from cloudd.daemon.leader.imagecopy import copy_to_host
from cloudd.daemon.network.catalogue import register_all
from cloudd.daemon.network.codec import Codec, FrameDecoder
from cloudd.errors import ConfigError
from cloudd.vmctl.backend import FakeBackend
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op
from cloudd.vmctl.images import CopySettings
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.plan import (
    CopyImage,
    Define,
    Desired,
    Ensure,
    ImageSource,
    Liveness,
    NodeSpec,
    Start,
)
from cloudd.vmctl.template import NodeDomain, render_domain

TEMPLATE = """<domain type='qemu'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type></os>
  ${metadata}
</domain>"""


@dataclass
class Source:
    """A source host: its sshd, and the root its SFTP clients see."""

    port: int
    root: Path
    client_key: Path
    known_hosts: Path

    def put(self, path: Path) -> Path:
        """Create an image at `path` as the source host sees it; return its real path."""
        real = self.root / path.relative_to("/")
        real.parent.mkdir(parents=True, exist_ok=True)
        return make_base(real)


@pytest.fixture
def source(tmp_path: Path, have) -> Iterator[Source]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("needs root: sshd runs with its privilege separation directory")
    d = tmp_path / "sshd"
    d.mkdir()
    # sshd wants every component of a chroot root-owned and not writable by others: not /tmp
    root = Path(tempfile.mkdtemp(prefix="cloudd-h15-sftp-", dir="/run"))
    try:
        with run_sshd(d, have("sshd"), chroot=root) as running:
            yield Source(port=running.port, root=root, client_key=running.client_key,
                         known_hosts=running.known_hosts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def agent(tmp_path: Path, source: Source) -> AsyncIterator[HostAgent]:
    (tmp_path / "images").mkdir()
    copy = CopySettings(username="root", key=source.client_key, known_hosts=source.known_hosts,
                        port=source.port, limit=60.0)
    host = HostAgent(FakeBackend(clock=lambda: 0.0), state_dir=tmp_path / "state", host="pm2",
                     image_dirs=(tmp_path / "images",), copy=copy, fetch_wait=30.0)
    yield host
    await host.close()


def fetch(image: Path, term: int = 1, source: str = "127.0.0.1") -> HostCommand:
    return HostCommand(Op.FETCH, term, image=str(image), source=source)


async def test_fetch_copies_a_missing_image_once(agent: HostAgent, source: Source,
                                                 tmp_path: Path) -> None:
    image = tmp_path / "images" / "base.qcow2"
    original = source.put(image)
    assert not image.exists()
    first = await agent.execute(fetch(image))
    assert first.outcome is CommandOutcome.DONE, first.message
    assert image.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in image.parent.iterdir()) == ["base.qcow2"]
    again = await agent.execute(fetch(image))
    assert again.outcome is CommandOutcome.NOOP
    inventory = (await agent.execute(HostCommand(Op.INVENTORY, 1))).inventory
    assert inventory is not None and str(image) in inventory.images


async def test_a_slow_copy_answers_pending_and_is_joined_not_repeated(
        agent: HostAgent, source: Source, tmp_path: Path) -> None:
    image = tmp_path / "images" / "base.qcow2"
    original = source.put(image)
    agent.fetch_wait = 0.0  # answer before the copy can have finished
    pending = await agent.execute(fetch(image))
    assert pending.outcome is CommandOutcome.PENDING
    assert pending.message == f"copying {image} from 127.0.0.1"
    copy = agent._copies[image]
    agent.fetch_wait = 30.0
    # two leaders' (or two nodes') FETCHes of the same image wait for the one copy
    both = await asyncio.gather(agent.execute(fetch(image)), agent.execute(fetch(image)))
    assert agent._copies == {} and copy.done()
    assert {r.outcome for r in both} == {CommandOutcome.DONE}, [r.message for r in both]
    assert image.read_bytes() == original.read_bytes()


async def test_an_unknown_host_key_refuses_the_copy(agent: HostAgent, source: Source,
                                                    tmp_path: Path) -> None:
    image = tmp_path / "images" / "base.qcow2"
    source.put(image)
    keygen(tmp_path / "impostor")
    kind, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    source.known_hosts.write_text(f"[127.0.0.1]:{source.port} {kind} {key}\n")
    result = await agent.execute(fetch(image))
    assert result.outcome is CommandOutcome.FAILED
    assert result.message.startswith(f"host key of 127.0.0.1:{source.port} is not in "
                                     f"{source.known_hosts}")
    assert result.retry_after is None  # permanent: a changed key needs the operator
    assert list(image.parent.iterdir()) == []


async def test_a_source_without_the_image(agent: HostAgent, tmp_path: Path) -> None:
    image = tmp_path / "images" / "base.qcow2"
    result = await agent.execute(fetch(image))
    assert (result.outcome, result.message) == (CommandOutcome.FAILED,
                                                f"127.0.0.1 has no image {image}")
    assert list(image.parent.iterdir()) == []


async def test_an_unreachable_source_is_temporary(agent: HostAgent, tmp_path: Path) -> None:
    agent.copy = CopySettings(key=agent.copy.key, known_hosts=agent.copy.known_hosts,
                              port=free_port(), limit=30.0)
    result = await agent.execute(fetch(tmp_path / "images" / "base.qcow2"))
    assert result.outcome is CommandOutcome.FAILED
    assert result.message.startswith("copying ") and "failed" in result.message
    assert result.retry_after is not None


async def test_a_stale_term_copies_nothing(agent: HostAgent, source: Source,
                                           tmp_path: Path) -> None:
    image = tmp_path / "images" / "base.qcow2"
    source.put(image)
    await agent.execute(HostCommand(Op.LIST, 5))
    result = await agent.execute(fetch(image, term=4))
    assert result.outcome is CommandOutcome.STALE_TERM
    assert agent._copies == {} and not image.exists()


@pytest.mark.parametrize(("command", "message"), [
    (HostCommand(Op.FETCH, 1, image="images/x.qcow2", source="127.0.0.1"),
     "fetch needs an absolute image path"),
    (HostCommand(Op.FETCH, 1, image="/IMAGES/x.qcow2"), "fetch without a source address"),
])
async def test_bad_fetch_commands(tmp_path: Path, command: HostCommand, message: str) -> None:
    (tmp_path / "images").mkdir()
    agent = HostAgent(FakeBackend(clock=lambda: 0.0), state_dir=tmp_path / "state",
                      image_dirs=(tmp_path / "images",))
    cmd = HostCommand(command.op, 1, image=command.image.replace("/IMAGES", str(tmp_path)),
                      source=command.source)
    result = await agent.execute(cmd)
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, message)
    assert agent._copies == {}


async def test_fetch_outside_the_image_folders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    agent = HostAgent(FakeBackend(clock=lambda: 0.0), state_dir=tmp_path / "state",
                      image_dirs=(tmp_path / "images",))
    result = await agent.execute(fetch(tmp_path / "etc" / "passwd.qcow2"))
    assert result.outcome is CommandOutcome.FAILED
    assert result.message == (f"fetch {tmp_path}/etc/passwd.qcow2 is outside this host's "
                              f"image folders ({tmp_path}/images)")
    assert not (tmp_path / "etc").exists()


def test_copy_settings_come_from_the_agent_images_group(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("name: pm1\n")
    assert CopySettings.of(load_agent(path).images) == CopySettings()
    path.write_text("name: pm1\nimages: {ssh_user: cloudd, ssh_key: /k/id, known_hosts: /k/kh,"
                    " ssh_port: 2222, copy_limit: 90}\n")
    assert CopySettings.of(load_agent(path).images) == CopySettings(
        username="cloudd", key=Path("/k/id"), known_hosts=Path("/k/kh"), port=2222, limit=90.0)
    path.write_text("name: pm1\nimages: {ssh_port: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_agent(path)
    assert [p.message for p in info.value.problems] == [
        "should be greater than or equal to 1, not 0"]


def test_fetch_and_pending_cross_the_wire() -> None:
    codec = register_all(Codec())
    cmd = HostCommand(Op.FETCH, 3, image="/var/lib/cloudd/images/base.qcow2",
                      source="192.0.2.70")
    result = HostResult(cmd, CommandOutcome.PENDING, 3, "copying")
    assert FrameDecoder(codec).feed(codec.encode(cmd) + codec.encode(result)) == [cmd, result]


async def test_the_leader_copies_then_defines_through_real_host_agents(
        agent: HostAgent, source: Source, tmp_path: Path) -> None:
    """Controller -> HostAgent FETCH -> asyncssh -> sshd: the copy lands in h1's image folder,
    h1's inventory reports it, and the node is defined and started there."""
    image = tmp_path / "images" / "base.qcow2"
    original = source.put(image)
    h0 = HostAgent(FakeBackend(clock=lambda: 0.0, images=frozenset({str(image)})),
                   state_dir=tmp_path / "h0", host="h0", image_dirs=())
    hosts = LocalHosts({"h0": h0, "h1": agent})
    spec = NodeSpec("n1", "web", 256, 1, str(image), pin="h1",
                    source=ImageSource("h0", "127.0.0.1"))
    events = EventLog.in_state_dir(tmp_path)
    controller = Controller(
        desired=lambda: Desired("c1", Ensure.RUNNING, (spec,)), hosts=lambda: ["h0", "h1"],
        liveness=lambda _: Liveness.ALIVE, leader=lambda: 1, client=hosts, events=events,
        render=lambda s, term: render_domain(TEMPLATE, NodeDomain(
            meta=CloudMeta(cloud="c1", node=s.name, role=s.role, term=term),
            memory_mib=s.memory_mib, vcpus=1, image=s.image)),
        fetch=lambda host, s: copy_to_host(hosts, host, s, term=lambda: 1, pause=0.0))
    try:
        first = await controller.pass_once()
        assert first is not None and [type(a) for a in first.actions] == [
            CopyImage, Define, Start]
        await controller.idle()
        assert image.read_bytes() == original.read_bytes()
        assert [d.name for d in await agent.backend.list()] == ["c1-n1"]
        again = await controller.pass_once()
        assert again is not None and again.actions == ()
        assert [e.kind for e in events.query()] == [LogKind.ACTION] * 3
    finally:
        events.close()
