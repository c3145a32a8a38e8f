"""Manifests handed to an agent: refused by size before anything parses them, checked in a
worker process (so that the YAML reader never holds the loop's GIL), at most a few at once
(one more is turned away busy), the leader's own generation never turned away."""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from structlog.testing import capture_logs

from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES
from cloudd.daemon.member.manifests import (
    Checker,
    ManifestFolder,
    check_manifest,
    frozen,
    plain,
)
from cloudd.errors import ConfigError, TemporaryError

WIRE = f"""\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
pool:
  - {{name: pm1, address: 192.0.2.70}}
roles:
  balancer: [{{address: 192.0.2.175, image: /img/lb.qcow2}}]
  server: [{{address: 192.0.2.176, image: /img/web1.qcow2}}]
  database: [{{address: 192.0.2.177, image: /img/db.qcow2}}]
settings: {{app_port: 8080, database_password_ref: db}}
secrets: {{db: {{value_b64: {base64.b64encode(b"hunter2").decode()}}}}}
template_values: {{kernel: /boot/vmlinuz}}
self_contained: true
"""
#: Seconds any wait here may take at most (a worker process starts in about a second).
BOUND = 60.0


class NoChecks(Checker):
    """A checker that fails the test if anything reaches it."""

    async def run(self, fn: Any, *args: Any) -> Any:
        raise AssertionError("the text reached the checker")

    async def run_trusted(self, fn: Any, *args: Any) -> Any:
        raise AssertionError("the text reached the checker")


def folder(tmp_path: Path, checker: Checker) -> ManifestFolder:
    return ManifestFolder(tmp_path / "manifests", locate=lambda cloud: None,
                          rescan=lambda: None, checker=checker)


async def until(what: str, check: Any) -> None:
    for _ in range(int(BOUND / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {BOUND} s: {what}")


@pytest.fixture
def worker() -> Any:
    checker = Checker()
    yield checker
    checker.close()


async def test_a_manifest_is_checked_in_a_worker_process_with_the_agents_digest(
        tmp_path: Path, worker: Checker) -> None:
    assert await worker.run(os.getpid) != os.getpid()
    cloud = await folder(tmp_path, worker).check(WIRE)
    here = check_manifest(WIRE)
    assert cloud == here  # the digest too: the worker keys secrets as this process does
    assert cloud.secrets["db"].value == b"hunter2"
    assert isinstance(cloud.secrets, MappingProxyType)
    assert isinstance(cloud.template_values, MappingProxyType)


async def test_a_refused_manifest_comes_back_with_its_problems(tmp_path: Path,
                                                               worker: Checker) -> None:
    with pytest.raises(ConfigError) as info:
        await folder(tmp_path, worker).check(WIRE.replace("192.0.2.177", "192.0.2.176"))
    assert [p.message for p in info.value.problems] == [
        "address 192.0.2.176 is the node declared at roles.database[0] (role database); a "
        "further role's entry names it by address (and name) only, this one also gives image"]


async def test_an_oversize_manifest_is_refused_before_anything_parses_it(
        tmp_path: Path) -> None:
    text = WIRE + "#" * (MAX_MANIFEST_BYTES - len(WIRE.encode()) + 1) + "\n"
    size = len(text.encode())
    with pytest.raises(ConfigError) as info:
        await folder(tmp_path, NoChecks()).check(text)
    assert str(info.value) == (
        f"<received manifest>: (document): the manifest is {size} bytes; a manifest received "
        f"from outside this agent's folder may hold at most {MAX_MANIFEST_BYTES} bytes "
        "(256 KiB)")
    with pytest.raises(ConfigError, match="may hold at most"):
        await folder(tmp_path, NoChecks()).check(text, trusted=True)
    # counted in bytes, not characters
    wide = WIRE + "#" + "é" * ((MAX_MANIFEST_BYTES - len(WIRE.encode())) // 2) + "\n"
    assert len(wide) <= MAX_MANIFEST_BYTES < len(wide.encode())
    with pytest.raises(ConfigError, match="may hold at most"):
        await folder(tmp_path, NoChecks()).check(wide)


async def test_checks_beyond_the_bound_are_turned_away_busy_and_trusted_ones_never(
        tmp_path: Path) -> None:
    checker = Checker(limit=2, isolate=False)
    gate = threading.Event()
    try:
        with capture_logs() as logs:
            held = [asyncio.create_task(checker.run(gate.wait, BOUND)) for _ in range(2)]
            await until("two checks admitted", lambda: checker.admitted == 2)
            for _ in range(3):
                with pytest.raises(TemporaryError, match="busy: 2 manifests are being checked"):
                    await checker.run(len, "refused")
            # the leader's generation waits its turn on a thread of its own
            cloud = await folder(tmp_path, checker).check(WIRE, trusted=True)
            assert cloud.name == "shop"
            gate.set()
            assert await asyncio.gather(*held) == [True, True]
        assert checker.admitted == 0
        assert await checker.run(len, "taken") == 5
        events = [(e["event"], e.get("count")) for e in logs]
        assert events == [("manifest_check_refused", None), ("manifest_checks_turned_away", 3)]
    finally:
        gate.set()
        checker.close()


async def test_a_cancelled_check_gives_its_place_back() -> None:
    checker = Checker(limit=1, isolate=False)
    gate = threading.Event()
    try:
        task = asyncio.create_task(checker.run(gate.wait, BOUND))
        await until("admitted", lambda: checker.admitted == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert checker.admitted == 0
    finally:
        gate.set()
        checker.close()


async def test_a_worker_that_dies_is_replaced_by_the_next_check(worker: Checker) -> None:
    with pytest.raises(TemporaryError, match="the worker checking manifests stopped"):
        await worker.run(os._exit, 3)
    assert worker.admitted == 0
    assert await worker.run(os.getpid) != os.getpid()


async def test_the_worker_stops_when_idle() -> None:
    checker = Checker(idle=0.01)
    try:
        pid = await checker.run(os.getpid)
        assert checker.running
        await until("the idle worker stopped", lambda: not checker.running)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        await until("the worker process gone", gone)
        assert await checker.run(os.getpid) not in (pid, os.getpid())
    finally:
        checker.close()


def test_a_cloud_crosses_to_the_worker_and_back_unchanged() -> None:
    cloud = check_manifest(WIRE)
    with pytest.raises(TypeError):
        pickle.dumps(cloud)  # read-only mappings do not pickle: `plain` is needed
    back = frozen(pickle.loads(pickle.dumps(plain(cloud))))
    assert back == cloud and isinstance(back.role_secrets, MappingProxyType)


def test_close_is_safe_twice() -> None:
    checker = Checker()
    checker.close()
    checker.close()
