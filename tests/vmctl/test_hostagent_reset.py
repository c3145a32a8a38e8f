"""RESET on a host: fenced by term, idempotent, only this cloud's domains, and a reset that takes
long (a qemu that does not answer, destroyed and started again) answered PENDING and joined."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudd.vmctl.backend import DomainEventKind, FakeBackend
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.metadata import CloudMeta, metadata_xml


def domain_xml(name: str, *, cloud: str = "c") -> str:
    meta = CloudMeta(cloud=cloud, node=name.removeprefix(f"{cloud}-"), role="compute", term=1)
    return f"<domain><name>{name}</name>{metadata_xml(meta)}</domain>"


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(clock=lambda: 0.0)


async def running(fake: FakeBackend, name: str, *, cloud: str = "c") -> None:
    await fake.define(domain_xml(name, cloud=cloud))
    await fake.start(name)
    fake.calls.clear()


async def test_reset_runs_once_per_running_domain_and_is_fenced(fake: FakeBackend,
                                                                tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path, cloud="c", image_dirs=())
    await running(fake, "c-n1")
    events = fake.subscribe()
    assert (await agent.execute(HostCommand(Op.RESET, 2, "c-n1"))).outcome \
        is CommandOutcome.DONE
    assert fake.calls == [("reset", "c-n1")]
    assert events.empty()  # a reset is no lifecycle change: the domain runs on
    stale = await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))
    assert stale.outcome is CommandOutcome.STALE_TERM and fake.calls == [("reset", "c-n1")]
    await fake.destroy("c-n1")
    assert (await agent.execute(HostCommand(Op.RESET, 2, "c-n1"))).outcome \
        is CommandOutcome.NOOP
    nameless = await agent.execute(HostCommand(Op.RESET, 2))
    assert nameless.outcome is CommandOutcome.FAILED
    assert nameless.message == "reset without a domain name"


async def test_a_qemu_that_does_not_answer_is_destroyed_and_started(fake: FakeBackend,
                                                                     tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path, cloud="c", image_dirs=())
    await running(fake, "c-n1")
    fake.stall("c-n1")
    events = fake.subscribe()
    assert (await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))).outcome \
        is CommandOutcome.DONE
    assert fake.calls == [("reset", "c-n1"), ("destroy", "c-n1"), ("start", "c-n1")]
    kinds = [events.get_nowait() for _ in range(events.qsize())]
    assert [(e.kind, e.detail) for e in kinds] == [(DomainEventKind.STOPPED, "destroyed"),
                                                  (DomainEventKind.STARTED, "booted")]


async def test_another_clouds_domain_is_not_reset(fake: FakeBackend, tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path, cloud="c", image_dirs=())
    await running(fake, "c-n1", cloud="other")
    result = await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))
    assert result.outcome is CommandOutcome.FAILED
    assert "belongs to cloud other" in result.message
    assert fake.calls == []


class SlowReset(FakeBackend):
    """A reset that lasts until the test lets it end (a qemu being destroyed and started)."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.release = asyncio.Event()
        self.resets = 0

    async def reset(self, name: str) -> bool:
        self.resets += 1
        await self.release.wait()
        return await super().reset(name)


async def test_a_long_reset_answers_pending_and_the_same_reset_joins_it(tmp_path: Path) -> None:
    slow = SlowReset()
    agent = HostAgent(slow, state_dir=tmp_path, cloud="c", image_dirs=(), reset_wait=0.01)
    await running(slow, "c-n1")
    first = await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))
    again = await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))
    assert (first.outcome, again.outcome) == (CommandOutcome.PENDING, CommandOutcome.PENDING)
    assert first.message == "resetting c-n1" and slow.resets == 1
    slow.release.set()
    done = await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))
    assert done.outcome is CommandOutcome.DONE and slow.resets == 1
    # the next RESET is a new reset
    assert (await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))).outcome \
        is CommandOutcome.DONE
    assert slow.resets == 2


async def test_close_stops_a_reset_under_way(tmp_path: Path) -> None:
    slow = SlowReset()
    agent = HostAgent(slow, state_dir=tmp_path, cloud="c", image_dirs=(), reset_wait=0.01)
    await running(slow, "c-n1")
    assert (await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))).outcome \
        is CommandOutcome.PENDING
    await agent.close()
    await agent.close()
    slow.release.set()  # a reset still under way would go on now
    for _ in range(3):
        await asyncio.sleep(0)
    assert ("reset", "c-n1") not in slow.calls


async def test_a_finished_reset_answers_only_its_own_term(tmp_path: Path) -> None:
    """A leader deposed while its reset ran never asks again: the next term's RESET resets."""
    slow = SlowReset()
    agent = HostAgent(slow, state_dir=tmp_path, cloud="c", image_dirs=(), reset_wait=0.01)
    await running(slow, "c-n1")
    assert (await agent.execute(HostCommand(Op.RESET, 1, "c-n1"))).outcome \
        is CommandOutcome.PENDING
    slow.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert ("reset", "c-n1") in slow.calls  # finished, and nobody of term 1 asked again
    assert (await agent.execute(HostCommand(Op.RESET, 2, "c-n1"))).outcome \
        is CommandOutcome.DONE
    assert slow.resets == 2
