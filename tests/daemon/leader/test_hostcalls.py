"""How the leader reaches hosts, and fencing with the generation in force."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloudd.config.manifest import load_cloud
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.leader.fencing import CloudFencer
from cloudd.daemon.leader.hostcalls import KEPT_TIMINGS, CallTiming, HostCalls
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import FakeBackend
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, HostResult, Op

from .test_assignment import MANIFEST


async def test_own_host_in_process_others_by_request_all_timed(tmp_path: Path) -> None:
    clock = FakeClock()
    agent = HostAgent(FakeBackend(clock=clock.monotonic), state_dir=tmp_path, host="pm1")
    asked: list[tuple[str, Any]] = []

    async def request(peer: str, msg: Any) -> Any:
        asked.append((peer, msg))
        clock.advance(0.25)
        return HostResult(msg, CommandOutcome.DONE, msg.term) if peer == "pm2" else "nonsense"

    class OwnHost:  # the host duty, which gets this agent's name as the sender
        async def execute(self, sender: str, command: HostCommand) -> HostResult:
            assert sender == "pm1"
            return await agent.execute(command)

    own = OwnHost()
    calls = HostCalls(me="pm1", local=lambda: own, request=request, clock=clock)
    local = await calls.call("pm1", HostCommand(Op.LIST, 1))
    assert local.outcome is CommandOutcome.DONE and asked == []
    remote = await calls.call("pm2", HostCommand(Op.INVENTORY, 1))
    assert remote.outcome is CommandOutcome.DONE and [p for p, _ in asked] == ["pm2"]
    with pytest.raises(TemporaryError, match="host pm3 answered str, not a result"):
        await calls.call("pm3", HostCommand(Op.LIST, 1))
    assert calls.timings() == (CallTiming(1, "list", 0.0), CallTiming(2, "inventory", 0.25),
                               CallTiming(3, "list", 0.25))


async def test_without_its_host_agent_the_leader_asks_itself_by_request(
        tmp_path: Path) -> None:
    asked: list[str] = []

    async def request(peer: str, msg: Any) -> Any:
        asked.append(peer)
        return HostResult(msg, CommandOutcome.DONE, msg.term)

    calls = HostCalls(me="pm1", local=lambda: None, request=request, clock=FakeClock())
    await calls.call("pm1", HostCommand(Op.LIST, 1))
    assert asked == ["pm1"]


async def test_timings_are_bounded() -> None:
    async def request(peer: str, msg: Any) -> Any:
        return HostResult(msg, CommandOutcome.DONE, msg.term)

    calls = HostCalls(me="pm1", local=lambda: None, request=request, clock=FakeClock())
    for _ in range(KEPT_TIMINGS + 5):
        await calls.call("pm2", HostCommand(Op.LIST, 1))
    kept = calls.timings()
    assert len(kept) == KEPT_TIMINGS and kept[-1].seq == KEPT_TIMINGS + 5


async def test_fencing_uses_the_commands_of_the_generation_in_force(tmp_path: Path) -> None:
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = [load_cloud(tmp_path / "shop.yaml", CATALOG)]
    fencer = CloudFencer(lambda: cloud[0])
    with pytest.raises(PermanentError, match="no fence command configured for host pm1"):
        await fencer.fence("pm1")
    marker = tmp_path / "fenced"
    cloud[0] = replace(cloud[0], pool=(replace(cloud[0].pool[0],
                                               fence=("touch", str(marker))),))
    await fencer.fence("pm1")
    assert marker.exists()
