"""MIGRATE on a host: the running domain handed to the target's hypervisor with the target's
name in its metadata, answered PENDING while it crosses, refused without a target, and only
of this cloud's domains."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudd.vmctl.backend import FakeBackend, PowerState
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.metadata import CloudMeta, metadata_xml, stamp_host

URI = "qemu+tls://pm2.example/system"


def domain_xml(name: str, *, cloud: str = "c") -> str:
    meta = CloudMeta(cloud=cloud, node=name.removeprefix(f"{cloud}-"), role="server", term=1)
    return stamp_host(f"<domain><name>{name}</name>{metadata_xml(meta)}</domain>", "pm1")


class SlowMove(FakeBackend):
    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.release = asyncio.Event()

    async def migrate(self, name: str, *, uri: str, address: str, host: str,
                      limit: float, unsafe: bool = False, tls: bool = False) -> bool:
        await self.release.wait()
        return await super().migrate(name, uri=uri, address=address, host=host, limit=limit,
                                     unsafe=unsafe, tls=tls)


def move(domain: str = "c-n1", **fields: str) -> HostCommand:
    return HostCommand(Op.MIGRATE, 1, domain, **{"target": "pm2", "target_uri": URI,
                                                 "target_address": "192.0.2.71", **fields})


@pytest.fixture
async def pair(tmp_path: Path) -> tuple[HostAgent, SlowMove, FakeBackend]:
    source, target = SlowMove(), FakeBackend(clock=lambda: 0.0)
    source.peers[URI] = target
    agent = HostAgent(source, state_dir=tmp_path, host="pm1", cloud="c", image_dirs=(),
                      reset_wait=0.01)
    for name, cloud in (("c-n1", "c"), ("d-n1", "d")):
        await source.define(domain_xml(name, cloud=cloud))
        await source.start(name)
    return agent, source, target


async def test_a_migration_answers_pending_then_the_domain_is_the_targets(
        pair: tuple[HostAgent, SlowMove, FakeBackend]) -> None:
    agent, source, target = pair
    first, again = await agent.execute(move()), await agent.execute(move())
    assert (first.outcome, again.outcome) == (CommandOutcome.PENDING, CommandOutcome.PENDING)
    assert first.message == "moving to pm2 c-n1"
    source.release.set()
    done = await agent.execute(move())
    assert done.outcome is CommandOutcome.DONE
    assert "c-n1" not in source.domains
    moved = target.domains["c-n1"]
    assert moved.state is PowerState.RUNNING and moved.meta is not None
    assert (moved.meta.host, moved.meta.node) == ("pm2", "n1")
    # sent again (its answer lost): nothing left to move here, nothing done
    again = await agent.execute(move())
    assert again.outcome is CommandOutcome.NOOP and "c-n1" in target.domains


async def test_a_migration_to_another_target_while_one_runs_is_refused(
        pair: tuple[HostAgent, SlowMove, FakeBackend]) -> None:
    agent, source, _ = pair
    assert (await agent.execute(move())).outcome is CommandOutcome.PENDING
    other = await agent.execute(move(target="pm3"))
    assert (other.outcome, other.message) == (CommandOutcome.FAILED,
                                              "migrate c-n1: it is moving to pm2 already")
    source.release.set()
    assert (await agent.execute(move())).outcome is CommandOutcome.DONE


@pytest.mark.parametrize(("command", "message"), [
    (move(target=""), "migrate needs the target host, its URI and its address"),
    (move(target_uri=""), "migrate needs the target host, its URI and its address"),
    (move(target="pm1"), "migrate c-n1: pm1 is this host"),
    (move("d-n1"), "domain 'd-n1' belongs to cloud d, not c; not touching it"),
])
async def test_a_migration_without_a_target_or_of_another_cloud_is_refused(
        pair: tuple[HostAgent, SlowMove, FakeBackend], command: HostCommand,
        message: str) -> None:
    agent, source, target = pair
    source.release.set()
    result = await agent.execute(command)
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, message)
    assert target.domains == {}
