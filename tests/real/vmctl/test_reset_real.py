"""`LibvirtBackend.reset` against real libvirtd and real QEMU guests (marker `libvirt`).

The guest is the project's minimal test guest under TCG, with `on_reboot` restart and the
shipped templates' i6300esb watchdog (so libvirt and QEMU are seen to take it). Its console
file is appended to, so every boot adds its "minimal guest up" line:
- a guest whose qemu answers is reset in place: the same qemu boots the guest again;
- a guest whose qemu is stopped (SIGSTOP) never answers the reset: the backend destroys the
  domain and starts it again, in a new qemu;
- a domain that does not run is not reset.
Domains are named `cloudd-h13h-...` and removed by the fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cloudd_lab.testguest import GuestImage, build_minimal_guest

from cloudd.vmctl import libvirt_migration as moves
from cloudd.vmctl import libvirt_wire
from cloudd.vmctl.backend import PowerState
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

pytestmark = pytest.mark.libvirt

SYSTEM = "qemu:///system"
PREFIX = "cloudd-h13h-"
GUEST_CACHE = Path("/var/tmp/cloudd-h4-guest")  # shared with test_libvirt_real.py
#: generous: the machine is shared and the guest runs under TCG
BOUND = 120.0
UP = "minimal guest up"
TEMPLATE = """<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory>
  <vcpu>${vcpus}</vcpu>
  ${metadata}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel>
    <initrd>${initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <on_reboot>restart</on_reboot>
  <devices>
    <serial type='file'><source path='${console}' append='on'/><target port='0'/></serial>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", SYSTEM, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


async def wait_for(what: str, predicate: Callable[[], object], *,
                   within: float = BOUND) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def boots(console: Path) -> int:
    return console.read_text(errors="replace").count(UP) if console.exists() else 0


@pytest.fixture
def name(tmp_path: Path) -> Iterator[str]:
    tmp_path.chmod(0o755)  # qemu writes the console here
    domain = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    yield domain
    for listed in virsh("list", "--all", "--name").stdout.split():
        if listed.startswith(PREFIX):
            virsh("destroy", listed)
            virsh("undefine", listed)


@pytest.fixture
async def backend() -> AsyncIterator[LibvirtBackend]:
    b = await LibvirtBackend.open(SYSTEM, call_timeout=60)
    yield b
    await b.close()


def guest() -> GuestImage:
    GUEST_CACHE.mkdir(parents=True, exist_ok=True)
    GUEST_CACHE.chmod(0o755)
    return build_minimal_guest(GUEST_CACHE)


async def running_guest(backend: LibvirtBackend, name: str, console: Path) -> None:
    image = guest()
    node = name.removeprefix(PREFIX)
    xml = render_domain(TEMPLATE, NodeDomain(
        meta=CloudMeta(cloud=PREFIX.rstrip("-"), node=node, role="compute", term=1),
        memory_mib=128, vcpus=1, image="",
        extra={"kernel": str(image.kernel), "initrd": str(image.initrd),
               "console": str(console)}))
    assert await backend.define(xml)
    for attempt in range(5):  # a start right after another guest's kill may fail once
        try:
            await backend.start(name)
            break
        except Exception:
            if attempt == 4:
                raise
            await asyncio.sleep(1.0 + attempt)
    await wait_for("the guest's first boot", lambda: boots(console) >= 1)


async def test_a_guest_whose_qemu_answers_is_reset_in_place(backend: LibvirtBackend, name: str,
                                                            tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    await running_guest(backend, name, console)
    pid = qemu_pid(name)
    t0 = time.monotonic()
    assert await backend.reset(name)
    await wait_for("the guest's second boot", lambda: boots(console) >= 2)
    print(f"\nreset of a running guest: booted again {time.monotonic() - t0:.1f} s later, "
          "in the same qemu")
    assert qemu_pid(name) == pid
    [info] = [d for d in await backend.list() if d.name == name]
    assert info.state is PowerState.RUNNING


async def test_a_stopped_qemu_is_destroyed_and_started(backend: LibvirtBackend, name: str,
                                                       tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    await running_guest(backend, name, console)
    pid = qemu_pid(name)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert await backend.reset(name)
        took = time.monotonic() - t0
    finally:
        # gone if the fallback ran; if not, let it go on, for the fixture to destroy
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    print(f"\nreset of a SIGSTOPped qemu: destroyed and started in {took:.1f} s")
    assert qemu_pid(name) != pid
    await wait_for("the guest's boot in a new qemu", lambda: boots(console) >= 2)
    [info] = [d for d in await backend.list() if d.name == name]
    assert info.state is PowerState.RUNNING


async def test_the_listing_answers_while_a_reset_hangs_on_a_stopped_qemu(
        name: str, tmp_path: Path) -> None:
    """The reset holds the domain's job until its qemu dies; the host's listing, which every
    report of the host needs, must not wait for it (libvirt would make it wait 30 s, past
    this backend's call timeout: the host would look unreachable while its reset waits). The
    call timeout stays above the destroy's own ~10 s (SIGTERM, then SIGKILL to a stopped qemu)."""
    backend = await LibvirtBackend.open(SYSTEM, call_timeout=20, reset_timeout=25)
    try:
        console = tmp_path / "console.log"
        await running_guest(backend, name, console)
        pid = qemu_pid(name)
        os.kill(pid, signal.SIGSTOP)
        try:
            resetting = asyncio.create_task(backend.reset(name))
            await wait_for("the reset holding the domain",
                           lambda: "occupied" in virsh("domcontrol", name).stdout)
            for _ in range(3):
                [info] = [d for d in await backend.list() if d.name == name]
                assert info.state is PowerState.RUNNING and not info.migrating
            assert not resetting.done()
            assert await resetting  # then destroyed and started, past reset_timeout
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert qemu_pid(name) != pid
    finally:
        await backend.close()


async def test_a_background_job_is_seen_between_its_monitor_commands(
        backend: LibvirtBackend, name: str, tmp_path: Path) -> None:
    """A live memory dump is a background job as a migration is (no second host needed): its
    operation is read while it runs, though libvirt says the domain's control state is OK
    between the dump's own monitor commands (asking only in state JOB missed it)."""
    await running_guest(backend, name, tmp_path / "console.log")
    conn = libvirt_wire.open(SYSTEM)
    try:
        dom = conn.lookupByName(name)
        dumping = await asyncio.create_subprocess_exec(
            "virsh", "-c", SYSTEM, "dump", "--live", "--memory-only", name,
            str(tmp_path / "memory.dump"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen: list[int | None] = []
        deadline = time.monotonic() + BOUND
        while dumping.returncode is None and time.monotonic() < deadline:
            seen.append(moves.job(dom))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dumping.wait(), 0.01)
        _, err = await asyncio.wait_for(dumping.communicate(), BOUND)
        assert dumping.returncode == 0, err.decode()
        dumps = seen.count(libvirt_wire.VIR_DOMAIN_JOB_OPERATION_DUMP)
        print(f"\nlooks while the dump ran: {len(seen)}, the dump seen in {dumps}")
        # all but the looks before the job began and after it ended (a third: generous)
        assert dumps > len(seen) / 3, f"the dump seen in {dumps} of {len(seen)} looks"
        assert moves.job(dom) is None  # and none once it ended
    finally:
        conn.close()


async def test_a_domain_that_does_not_run_is_not_reset(backend: LibvirtBackend, name: str,
                                                       tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    await running_guest(backend, name, console)
    assert await backend.destroy(name)
    assert not await backend.reset(name)
