"""The libvirt side of a live migration, against a stand-in domain (the real one runs in
tests/e2e/test_d_live_migration.py): the flags and parameters, a move followed rather than
started twice, and a move past its limit aborted with the guest left where it was."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cloudd import log
from cloudd.errors import TemporaryError
from cloudd.vmctl import libvirt_migration as moves
from cloudd.vmctl import libvirt_wire as libvirt


class Domain:
    """What `libvirt_migration` asks of a virDomain."""

    def __init__(self, *, job: int | None = None, hold: bool = False) -> None:
        self.job, self.calls = job, list[tuple[str, Any]]()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.active = True

    def controlInfo(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_CONTROL_OK if self.job is None
                else libvirt.VIR_DOMAIN_CONTROL_JOB, 0, 0]

    def jobStats(self, flags: int) -> dict[str, int]:
        if self.job is None:
            return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": self.job}

    def migrateToURI3(self, uri: str, params: dict[str, Any], flags: int) -> None:
        self.calls.append(("migrate", (uri, params, flags)))
        if not self.release.wait(30):
            raise AssertionError("never released")
        if self.job == -1:
            raise libvirt.libvirtError("operation aborted: job 'migration out' canceled by client")
        self.active = False

    def isActive(self) -> bool:
        return self.active


class Occupied(Domain):
    """A domain whose monitor is held by a command its stopped qemu never answers: asking for
    its job's figures would wait (libvirt: 30 s) for that command."""

    def controlInfo(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_CONTROL_OCCUPIED, 0, 1000]

    def jobStats(self, flags: int) -> dict[str, int]:
        raise AssertionError("jobStats waits for the command holding the domain")


class Between(Domain):
    """A domain whose migration runs between two of its monitor commands: libvirt 9.0 says
    its control state is OK then (JOB only while one of those commands runs)."""

    def controlInfo(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_CONTROL_OK, 0, 0]


def test_a_domain_held_by_a_stuck_command_is_not_asked_for_its_job() -> None:
    assert moves.job(Occupied()) is None  # type: ignore[arg-type]
    assert moves.job(Between(job=libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)) \
        == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT  # type: ignore[arg-type]
    assert moves.job(Domain(job=libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN)) \
        == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN  # type: ignore[arg-type]


@pytest.mark.parametrize(("address", "unsafe", "tls", "data", "extra"), [
    ("192.0.2.7", False, False, "tcp://192.0.2.7", 0),
    ("2001:db8::7", True, False, "tcp://[2001:db8::7]", libvirt.VIR_MIGRATE_UNSAFE),
    ("192.0.2.7", False, True, "tcp://192.0.2.7", libvirt.VIR_MIGRATE_TLS),
])
def test_a_move_is_live_peer_to_peer_with_the_stamped_definition(
        address: str, unsafe: bool, tls: bool, data: str, extra: int) -> None:
    dom = Domain()
    assert moves.start(dom, uri="qemu+tls://pm2/system", address=address, xml="<domain/>",  # type: ignore[arg-type]
                       unsafe=unsafe, tls=tls)
    [(_, (uri, params, flags))] = dom.calls
    assert uri == "qemu+tls://pm2/system" and flags == moves.MIGRATE_FLAGS | extra
    assert flags & libvirt.VIR_MIGRATE_LIVE and flags & libvirt.VIR_MIGRATE_PEER2PEER
    assert params == {libvirt.VIR_MIGRATE_PARAM_URI: data,
                      libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: address,
                      libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<domain/>",
                      libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<domain/>"}


def test_a_move_under_way_is_followed_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moves, "FOLLOW_EVERY", 0.01)
    dom = Domain(job=libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)

    def ends() -> None:
        dom.job, dom.active = None, False
    threading.Timer(0.1, ends).start()
    assert moves.follow(dom)  # type: ignore[arg-type]
    assert dom.calls == []  # never started a second time


async def test_a_move_past_its_limit_is_aborted_and_the_guest_stays() -> None:
    dom = Domain(hold=True)
    aborted: list[bool] = []

    async def abort() -> None:
        aborted.append(True)
        dom.job = -1  # libvirt ends the move with "operation aborted"
        dom.release.set()

    moving = asyncio.get_running_loop().run_in_executor(None, lambda: moves.start(
        dom, uri="qemu+tls://pm2/system", address="192.0.2.7", xml="<d/>",  # type: ignore[arg-type]
        unsafe=False, tls=False))
    with pytest.raises(TemporaryError) as refused:
        await moves.across(moving, name="c-n1", host="pm2", limit=0.2, abort=abort,
                           log=log.get("test"))
    assert aborted == [True] and dom.active
    assert str(refused.value) == ("libvirt migrate: c-n1 was not across to pm2 within 0.2s; "
                                  "aborted, it runs on here")


async def test_a_refused_move_is_a_temporary_failure_naming_the_target() -> None:
    dom = Domain()
    dom.job = -1
    moving = asyncio.get_running_loop().run_in_executor(None, lambda: moves.start(
        dom, uri="qemu+tls://pm2/system", address="192.0.2.7", xml="<d/>",  # type: ignore[arg-type]
        unsafe=False, tls=False))

    async def never() -> None:
        raise AssertionError("no abort for a move that ended")
    with pytest.raises(TemporaryError, match=r"^libvirt migrate of c-n1 to pm2: operation "
                                             r"aborted"):
        await moves.across(moving, name="c-n1", host="pm2", limit=5, abort=never,
                           log=log.get("test"))
