"""LibvirtBackend and HostAgent against real libvirtd and real QEMU guests (marker `libvirt`).

The guests are the project's minimal test guest (the host's cloud kernel, a busybox initramfs
that sleeps) under TCG. Domains are named `cloudd-h4-...` and removed by the fixtures.

The libvirtd-restart case runs its own libvirtd (session mode, as `nobody`, in a temporary
directory), so that killing and restarting it disturbs nobody else on this host.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cloudd_lab.testguest import GuestImage, build_minimal_guest

from cloudd.backoff import Backoff
from cloudd.vmctl.backend import (
    BackendUnavailable,
    DomainEvent,
    DomainEventKind,
    NotOurDomain,
    PowerState,
)
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.identity import NodeIdentity, Pki, build_seed, cmdline_words, from_cmdline
from cloudd.vmctl.images import ensure_overlay
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, node_mac, render_domain

pytestmark = pytest.mark.libvirt

SYSTEM = "qemu:///system"
PREFIX = "cloudd-h4-"
GUEST_CACHE = Path("/var/tmp/cloudd-h4-guest")
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
    <cmdline>${cmdline}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='file'><source path='${console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def guest() -> GuestImage:
    GUEST_CACHE.mkdir(parents=True, exist_ok=True)
    GUEST_CACHE.chmod(0o755)
    return build_minimal_guest(GUEST_CACHE)


def domain_xml(cloud: str, node: str, *, term: int = 1, console_dir: Path) -> str:
    image = guest()
    spec = NodeDomain(
        meta=CloudMeta(cloud=cloud, node=node, role="compute", term=term),
        memory_mib=128, vcpus=1, image="",
        cmdline="console=ttyS0 panic=-1 cloudd.node=" + node,
        extra={"kernel": str(image.kernel), "initrd": str(image.initrd),
               "console": str(console_dir / f"{cloud}-{node}.log")})
    return render_domain(TEMPLATE, spec)


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def cleanup(uri: str) -> None:
    names = virsh(uri, "list", "--all", "--name").stdout.split()
    for name in names:
        if name.startswith(PREFIX):
            virsh(uri, "destroy", name)
            virsh(uri, "undefine", name)


async def next_event(queue: asyncio.Queue[DomainEvent], kind: DomainEventKind, *,
                     domain: str = "", within: float = 60) -> DomainEvent:
    async with asyncio.timeout(within):
        while True:
            event = await queue.get()
            if event.kind is kind and (not domain or event.domain == domain):
                return event


async def start_with_retries(backend: LibvirtBackend, name: str) -> None:
    # Restarting right after a kill has been seen to fail now and then ("qemu unexpectedly
    # closed the monitor"): retry a few times, as respawn does.
    for attempt in range(5):
        try:
            await backend.start(name)
            return
        except Exception:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))


async def wait_for(predicate: Callable[[], object], *, within: float, what: str) -> None:
    """Poll `predicate` until true, or fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[str]:
    tmp_path.chmod(0o755)
    yield f"{PREFIX}{uuid.uuid4().hex[:6]}"
    cleanup(SYSTEM)


@pytest.fixture
async def system(cloud: str) -> AsyncIterator[LibvirtBackend]:
    backend = await LibvirtBackend.open(SYSTEM, call_timeout=60)
    yield backend
    await backend.close()


async def test_define_from_template_start_and_kill9(system: LibvirtBackend, cloud: str,
                                                    tmp_path: Path) -> None:
    events = system.subscribe()
    forwarded: list[DomainEvent] = []
    agent = HostAgent(system, state_dir=tmp_path / "state")
    forwarding = asyncio.create_task(agent.run_events(forwarded.append))
    name = f"{cloud}-n1"
    assert await system.define(domain_xml(cloud, "n1", console_dir=tmp_path))
    await start_with_retries(system, name)
    await next_event(events, DomainEventKind.STARTED, domain=name)
    [info] = [d for d in await system.list() if d.name == name]
    assert info.state is PowerState.RUNNING and info.meta.cloud == cloud

    killed_at = time.monotonic()
    os.kill(qemu_pid(name), signal.SIGKILL)
    stopped = await next_event(events, DomainEventKind.STOPPED, domain=name)
    print(f"\nkill -9 of qemu -> STOPPED/{stopped.detail} event after "
          f"{stopped.at - killed_at:.2f} s")
    assert stopped.detail in ("failed", "crashed", "destroyed")
    [info] = [d for d in await system.list() if d.name == name]
    assert info.state is PowerState.STOPPED
    # the host agent forwarded the same event to its consumer
    await wait_for(lambda: any(e.kind is DomainEventKind.STOPPED and e.domain == name
                               for e in forwarded), within=10, what="the forwarded event")
    forwarding.cancel()


async def test_virsh_destroy_gives_an_event(system: LibvirtBackend, cloud: str,
                                            tmp_path: Path) -> None:
    events = system.subscribe()
    name = f"{cloud}-n2"
    await system.define(domain_xml(cloud, "n2", console_dir=tmp_path))
    await start_with_retries(system, name)
    await next_event(events, DomainEventKind.STARTED, domain=name)
    result = await asyncio.to_thread(virsh, SYSTEM, "destroy", name)
    assert result.returncode == 0, result.stderr
    stopped = await next_event(events, DomainEventKind.STOPPED, domain=name)
    assert stopped.detail == "destroyed"
    # destroy of what is stopped is a no-op, not an error
    assert not await system.destroy(name)


async def test_stale_term_refused_on_a_real_domain(system: LibvirtBackend, cloud: str,
                                                   tmp_path: Path) -> None:
    agent = HostAgent(system, state_dir=tmp_path / "state")
    name = f"{cloud}-n3"
    xml = domain_xml(cloud, "n3", term=4, console_dir=tmp_path)
    define = HostCommand(Op.DEFINE, 4, name, xml)
    assert (await agent.execute(define)).outcome is CommandOutcome.DONE
    assert (await agent.execute(define)).outcome is CommandOutcome.NOOP
    for _ in range(5):
        started = await agent.execute(HostCommand(Op.START, 4, name))
        if started.outcome is not CommandOutcome.FAILED:
            break
        await asyncio.sleep(1)
    assert started.outcome is CommandOutcome.DONE, started.message
    stale = await agent.execute(HostCommand(Op.DESTROY, 3, name))
    assert stale.outcome is CommandOutcome.STALE_TERM
    [info] = [d for d in await system.list() if d.name == name]
    assert info.state is PowerState.RUNNING
    assert (await agent.execute(HostCommand(Op.DESTROY, 5, name))).outcome is CommandOutcome.DONE
    assert (await agent.execute(HostCommand(Op.DESTROY, 5, name))).outcome is CommandOutcome.NOOP
    assert (await agent.execute(HostCommand(Op.UNDEFINE, 5, name))).outcome is CommandOutcome.DONE


async def test_handmade_domain_is_untouched(system: LibvirtBackend, cloud: str,
                                            tmp_path: Path) -> None:
    name = f"{cloud}-handmade"
    image = guest()
    xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><kernel>{image.kernel}</kernel>
<initrd>{image.initrd}</initrd><cmdline>console=ttyS0 panic=-1</cmdline></os>
<devices><memballoon model='none'/></devices></domain>"""
    xml_file = tmp_path / "handmade.xml"
    xml_file.write_text(xml)
    assert virsh(SYSTEM, "define", str(xml_file)).returncode == 0
    assert virsh(SYSTEM, "start", name).returncode == 0
    for op in (system.destroy, system.shutdown, system.undefine):
        with pytest.raises(NotOurDomain):
            await op(name)
    assert name not in [d.name for d in await system.list()]
    assert virsh(SYSTEM, "domstate", name).stdout.strip() == "running"


# -- libvirtd restart, on a libvirtd of our own ----------------------------------------------

@dataclass
class OwnLibvirtd:
    base: Path
    pid: int = 0

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.base}/run/libvirt/libvirt-sock"

    def start(self) -> None:
        env = {"HOME": str(self.base), "XDG_RUNTIME_DIR": f"{self.base}/run",
               "XDG_CONFIG_HOME": f"{self.base}/config", "XDG_CACHE_HOME": f"{self.base}/cache",
               "XDG_DATA_HOME": f"{self.base}/data", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        pidfile = self.base / "run/libvirt/libvirtd.pid"
        conf = self.base / "libvirtd.conf"
        conf.write_text(f'log_outputs="3:file:{self.base}/libvirtd.log"\n')
        pidfile.unlink(missing_ok=True)
        subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "libvirtd", "--timeout", "0", "-d", "-f", str(conf)],
                       env=env, check=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (pidfile.exists() and pidfile.read_text().strip()
                    and virsh(self.uri, "version").returncode == 0):
                self.pid = int(pidfile.read_text().strip())
                return
            time.sleep(0.1)
        pytest.fail("own libvirtd did not come up within 30 s")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        pytest.fail(f"libvirtd {self.pid} did not die")


@pytest.fixture
def own_libvirtd() -> Iterator[OwnLibvirtd]:
    base = Path(f"/tmp/{PREFIX}lvd-{uuid.uuid4().hex[:6]}")
    base.mkdir(mode=0o755)
    os.chown(base, 65534, 65534)
    daemon = OwnLibvirtd(base)
    daemon.start()
    try:
        yield daemon
    finally:
        cleanup(daemon.uri)
        daemon.kill()
        subprocess.run(["rm", "-rf", str(base)], check=False)


async def test_reconnects_after_libvirtd_restart(own_libvirtd: OwnLibvirtd) -> None:
    cloud = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    name = f"{cloud}-n1"
    backend = await LibvirtBackend.open(own_libvirtd.uri, call_timeout=60,
                                        reconnect=Backoff(base=0.05, cap=0.2))
    try:
        events = backend.subscribe()
        await backend.define(domain_xml(cloud, "n1", console_dir=own_libvirtd.base))
        await start_with_retries(backend, name)
        await next_event(events, DomainEventKind.STARTED, domain=name)
        # libvirtd killed in the first moments after a start kills that domain when it comes
        # back (qemu log: "shutting down, reason=daemon"): let the guest reach its init first.
        console = own_libvirtd.base / f"{name}.log"
        await wait_for(lambda: console.exists() and "minimal guest up" in console.read_text(
            errors="replace"), within=120, what="the guest's init")

        await asyncio.to_thread(own_libvirtd.kill)
        await next_event(events, DomainEventKind.DISCONNECTED)
        await asyncio.to_thread(own_libvirtd.start)
        resync = await next_event(events, DomainEventKind.RESYNC)
        assert [d.name for d in resync.domains] == [name]
        assert [d.name for d in await backend.list()] == [name]
        # The old domain usually survives; libvirtd sometimes kills it when it comes back
        # ("shutting down, reason=daemon" in its qemu log), which cloudd sees as STOPPED.
        print(f"\nafter the restart {name} is {resync.domains[0].state.value}")
        # events flow again on the new connection
        second = f"{cloud}-n2"
        assert await backend.define(domain_xml(cloud, "n2", console_dir=own_libvirtd.base))
        await start_with_retries(backend, second)
        await next_event(events, DomainEventKind.STARTED, domain=second)
        assert await backend.destroy(second)
        stopped = await next_event(events, DomainEventKind.STOPPED, domain=second)
        assert stopped.detail == "destroyed"
    finally:
        await backend.close()
        lvd_log = (own_libvirtd.base / "libvirtd.log").read_text()
        print("own libvirtd log (shown on failure):", lvd_log[-3000:])


async def test_a_hung_libvirtd_fails_calls_within_the_timeout(own_libvirtd: OwnLibvirtd) -> None:
    backend = await LibvirtBackend.open(own_libvirtd.uri, call_timeout=1.0)
    try:
        os.kill(own_libvirtd.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BackendUnavailable, match=r"no answer .* within 1\.0s"):
                await backend.list()
        finally:
            os.kill(own_libvirtd.pid, signal.SIGCONT)
        # the stuck call completes once libvirtd runs again; later calls work
        backend.call_timeout = 60
        assert await backend.list() == ()
    finally:
        await backend.close()


COMPOSED = """<domain type='qemu'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  ${metadata}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel><initrd>${initrd}</initrd><cmdline>${cmdline}</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='${image}'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='${seed}'/><target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='user'><mac address='${mac}'/><model type='virtio'/></interface>
    <serial type='file'><source path='${console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def shared_dir(cloud: str) -> Iterator[Path]:
    """A directory QEMU (running as libvirt-qemu) can traverse, unlike pytest's tmp_path."""
    path = Path("/var/tmp") / cloud
    path.mkdir(mode=0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


async def test_node_from_template_with_overlay_seed_and_identity(
        system: LibvirtBackend, cloud: str, shared_dir: Path) -> None:
    """Every piece together: base image -> overlay, identity on the command line and in a
    NoCloud seed, the template filled, libvirt validating and booting it."""
    tmp_path = shared_dir
    meta = CloudMeta(cloud=cloud, node="db-0", role="database", term=2)
    base = tmp_path / "base.qcow2"
    await asyncio.to_thread(subprocess.run, ["qemu-img", "create", "-q", "-f", "qcow2",
                            str(base), "32M"], check=True, timeout=30)
    overlay = tmp_path / "nodes" / "db-0.qcow2"
    assert await ensure_overlay(base, overlay)
    ident = NodeIdentity(cloud=cloud, node="db-0", role="database", address="10.77.0.5/24",
                         members=("10.77.0.1:7400",), term=2, pki=str(tmp_path / "pki"))
    mac = node_mac(cloud, "db-0")
    seed = await asyncio.to_thread(
        build_seed, ident, mac=mac, pki=Pki(ca="ca", cert="cert", key="key"),
        out=tmp_path / "db-0-seed.iso")
    image = guest()
    spec = NodeDomain(meta=meta, memory_mib=128, vcpus=1, image=str(overlay),
                      cmdline=" ".join(["console=ttyS0", "panic=-1", *cmdline_words(ident)]),
                      extra={"kernel": str(image.kernel), "initrd": str(image.initrd),
                             "seed": str(seed), "console": str(tmp_path / "db-0.log")})
    await asyncio.to_thread(overlay.parent.chmod, 0o755)
    events = system.subscribe()
    assert await system.define(render_domain(COMPOSED, spec, source="composed.xml"))
    await start_with_retries(system, spec.name)
    await next_event(events, DomainEventKind.STARTED, domain=spec.name)
    xml = virsh(SYSTEM, "dumpxml", spec.name).stdout
    assert from_cmdline(xml.split("<cmdline>")[1].split("</cmdline>")[0]) == ident
    assert f"<mac address='{mac}'/>" in xml
    console = tmp_path / "db-0.log"
    await wait_for(lambda: console.exists() and "minimal guest up" in console.read_text(
        errors="replace"), within=120, what="the guest's init")
    assert await system.destroy(spec.name)
    assert await system.undefine(spec.name)
