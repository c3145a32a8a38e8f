"""A booting node asking its seeds for the manifest: the pace of its rounds and the file it
writes, with a fake `ask` and a `sleep` that only records."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

from cloudd.backoff import hashed_unit
from cloudd.daemon.network.catalogue import ManifestOffer, ManifestWanted, OfferOrigin
from cloudd.daemon.node.boot import (
    ASK_BACKOFF,
    MANIFEST_MODE,
    Seed,
    fetch_manifest,
    write_manifest,
)
from cloudd.vmctl.identity import from_cmdline

LINE = ("cloudd.cloud=lab cloudd.node=lab-server-1 cloudd.role=server cloudd.ip=10.1.2.3/24 "
        "cloudd.members=pm1@10.1.2.1:7760,pm2@10.1.2.2:7760 cloudd.term=3 "
        "cloudd.pki=/etc/cloudd/pki")
SEEDS = (Seed("pm1", "10.1.2.1", 7760), Seed("pm2", "10.1.2.2", 7760))
TEXT = "apiVersion: cloudd/v1\nkind: Cloud\nname: lab\n"


async def test_rounds_back_off_with_the_nodes_own_jitter_until_installed(
        tmp_path: Path) -> None:
    ident = from_cmdline(LINE)
    have = asyncio.Event()
    asked: list[tuple[str, Any]] = []
    slept: list[float] = []
    folder = tmp_path / "manifests"

    async def ask(peer: str, msg: Any) -> Any:
        asked.append((peer, msg))
        if peer == "pm1":
            raise TimeoutError
        if len(asked) < 8:
            return None  # a host without the cloud yet answers nothing useful
        # the manifest watcher takes the file a moment later
        asyncio.get_running_loop().call_soon(have.set)
        return ManifestOffer(cloud="lab", digest="d" * 64, text=TEXT, origin=OfferOrigin.SEED)

    async def sleep(delay: float) -> None:
        slept.append(delay)

    await asyncio.wait_for(fetch_manifest(ident, SEEDS, ask=ask, folder=folder, have=have,
                                          sleep=sleep), timeout=10)
    assert [p for p, _ in asked] == ["pm1", "pm2"] * 4
    assert {m for _, m in asked} == {ManifestWanted("lab")}
    assert slept == [ASK_BACKOFF.delay(n, hashed_unit("lab/lab-server-1", n))
                     for n in (1, 2, 3)]
    for n, delay in enumerate(slept, start=1):
        assert ASK_BACKOFF.nominal(n) * (1 - ASK_BACKOFF.jitter) <= delay <= \
            ASK_BACKOFF.nominal(n)
    path = folder / "lab.yaml"
    assert path.read_text() == TEXT
    assert stat.S_IMODE(path.stat().st_mode) == MANIFEST_MODE == 0o644
    assert [p.name for p in folder.iterdir()] == ["lab.yaml"]  # no temporary file left


async def test_nothing_is_asked_once_a_manifest_is_in_force(tmp_path: Path) -> None:
    have = asyncio.Event()
    have.set()

    async def ask(peer: str, msg: Any) -> Any:
        raise AssertionError("asked")

    await fetch_manifest(from_cmdline(LINE), SEEDS, ask=ask, folder=tmp_path, have=have)


def test_write_manifest_replaces_the_old_one(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m", "lab", "old\n")
    path = write_manifest(tmp_path / "m", "lab", TEXT)
    assert path == tmp_path / "m" / "lab.yaml" and path.read_text() == TEXT
