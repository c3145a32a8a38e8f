"""A two-host pool's fence of the peer (`PeerFencer`), the controller's fence of a host the
election has already proven off (`CloudFencer`'s `proven`), and of a host that has just joined
the pool (`joined`), with real commands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from cloudd.config.model import Cloud, PoolHost
from cloudd.daemon.base.clock import FakeClock
from cloudd.daemon.leader.fencing import JOIN_GRACE, CloudFencer, PeerFencer, grace_left
from cloudd.errors import TemporaryError


def cloud_with(fences: dict[str, list[str]]) -> Cloud:
    pool = tuple(PoolHost(h, f"192.0.2.{i}", None, tuple(argv))
                 for i, (h, argv) in enumerate(fences.items(), start=70))
    return Cloud(name="pair", type="web", ensure=None, source=Path("x"),  # type: ignore[arg-type]
                 digest="d", domain_template=None, pool=pool, roles=(), nodes=(),
                 settings=None, secrets={})  # type: ignore[arg-type]


class Spawner:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.names: list[str] = []

    def __call__(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.names.append(name)
        self.tasks.append(asyncio.get_running_loop().create_task(factory()))

    async def done(self) -> None:
        await asyncio.gather(*self.tasks)


async def test_peer_fence_reports_success_and_failure(tmp_path: Path) -> None:
    marker = tmp_path / "pm2-off"
    cloud = cloud_with({"pm1": ["sh", "-c", "echo no power >&2; exit 3"],
                        "pm2": ["touch", str(marker)]})
    reports: list[tuple[str, bool, str]] = []
    spawn = Spawner()
    fence = PeerFencer(CloudFencer(lambda: cloud), cloud="pair", me="pm1", spawn=spawn,
                       report=lambda *r: reports.append(r))
    fence("pm2")
    fence("pm2")  # one fence at a time
    await spawn.done()
    assert spawn.names == ["fence-peer-pm2"]
    assert marker.exists()
    assert reports == [("pm2", True, "its fence command succeeded")]
    fence("pm1")
    await spawn.done()
    assert reports[-1] == ("pm1", False, "fence command for pm1 exited 3: no power")


async def test_a_host_proven_off_is_not_fenced_again(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cloud = cloud_with({"pm1": ["true"], "pm2": ["touch", str(marker)]})
    proven: set[str] = {"pm2"}
    fencer = CloudFencer(lambda: cloud, proven=lambda host: host in proven)
    await fencer.fence("pm2")
    assert not marker.exists()
    proven.clear()  # seen again since: a new death needs a new fence
    await fencer.fence("pm2")
    assert marker.exists()


@pytest.mark.parametrize(("joined_at", "now", "left"), [
    (None, 5000.0, 0.0),  # in the pool since the agent started
    (1000.0, 1000.0, JOIN_GRACE),
    (1000.0, 1010.0, JOIN_GRACE - 10),
    (1000.0, 1000.0 + JOIN_GRACE, 0.0),
    (1000.0, 9000.0, 0.0),
])
def test_a_host_that_has_just_joined_has_a_grace(joined_at: float | None, now: float,
                                                 left: float) -> None:
    assert grace_left(joined_at, now=now) == left


async def test_a_host_that_has_just_joined_is_not_fenced_yet(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cloud = cloud_with({"pm1": ["true"], "pm2": ["touch", str(marker)]})
    clock = FakeClock()
    joined = {"pm2": clock.monotonic()}
    fencer = CloudFencer(lambda: cloud, joined=joined.get, now=clock.monotonic)
    clock.advance(10)
    with pytest.raises(TemporaryError, match=(
            r"^pm2 has just joined the pool, and its agent may not have the manifest yet: it "
            r"is fenced only if it is still dead 20 s from now$")) as refused:
        await fencer.fence("pm2")
    assert refused.value.delay == JOIN_GRACE - 10 and not marker.exists()
    clock.advance(JOIN_GRACE - 10)
    await fencer.fence("pm2")
    assert marker.exists()
