"""A booting node asking its seeds for the manifest: the pace of its rounds and the file it
writes, with a fake `ask` and a `sleep` that only records."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
import structlog

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
#: A node's view of its cloud, as a host answers it: self-contained, no secrets, no template.
TEXT = """\
apiVersion: cloudd/v1
kind: Cloud
name: lab
type: torque
pool: [{name: pm1, address: 10.1.2.1}, {name: pm2, address: 10.1.2.2}]
roles:
  head: [{name: lab-head-1, address: 10.1.2.10, managed: false}]
  compute: [{name: lab-server-1, address: 10.1.2.3, managed: false}]
self_contained: true
"""


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
    assert stat.S_IMODE(path.stat().st_mode) == MANIFEST_MODE == 0o600
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


@pytest.mark.parametrize(("text", "reason"), [
    (TEXT.replace("  compute: [{name: lab-server-1, address: 10.1.2.3, managed: false}]",
                  "  compute: {addresses_file: /root/.ssh/id_ed25519, images_file: /etc/shadow}"),
     "a manifest received over the network must be self-contained: 'addresses_file' names "
     "a file of the receiving machine"),
    (TEXT.replace("self_contained: true", "domain_template: /etc/cloudd/pki/ca.key\n"
                  "self_contained: true"), "'domain_template' names a file"),
    (TEXT.replace("name: lab\n", "name: other\n"), "it declares cloud other, not lab"),
])
async def test_an_answer_that_is_not_a_self_contained_view_is_refused(
        tmp_path: Path, text: str, reason: str) -> None:
    """A seed's answer is a text received over the network: nothing in it is read, nothing
    of a refused one is written, and the next seed is asked."""
    have = asyncio.Event()
    asked: list[str] = []

    async def ask(peer: str, msg: Any) -> Any:
        asked.append(peer)
        if peer == "pm1":
            return ManifestOffer(cloud="lab", digest="d", text=text, origin=OfferOrigin.SEED)
        asyncio.get_running_loop().call_soon(have.set)
        return ManifestOffer(cloud="lab", digest="d", text=TEXT, origin=OfferOrigin.SEED)

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(fetch_manifest(from_cmdline(LINE), SEEDS, ask=ask,
                                              folder=tmp_path, have=have), timeout=10)
    assert asked == ["pm1", "pm2"]
    [refused] = [e for e in logs if e["event"] == "message_refused"]
    assert refused["peer"] == "pm1" and reason in refused["reason"]
    assert (tmp_path / "lab.yaml").read_text() == TEXT
