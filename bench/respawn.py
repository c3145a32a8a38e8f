"""Respawn latency on this host: kill -9 a guest's qemu, start it again from the STOPPED event.

Two figures, median and max over RUNS runs, printed as a table:

- cloudd's share: from libvirt's STOPPED event reaching cloudd (the libvirt callback) to the
  replacement's start call issued (the event hopping to the loop, the host agent's fencing
  check, the backend call). Target: < 50 ms.
- kill -9 of qemu to the STOPPED event (libvirt's share), and to the replacement running
  (its STARTED event): mostly libvirt noticing the
  death (slow in this sandbox, whose init reaps orphans late) and QEMU starting.

The respawner here is in-process (event -> HostAgent START command): the leader's network
round trip is not part of it. Run as root with libvirtd up: `.venv/bin/python bench/respawn.py`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cloudd_lab.testguest import build_minimal_guest

from cloudd.vmctl.backend import DomainEvent, DomainEventKind
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

RUNS = int(os.environ.get("RUNS", "10"))
URI = "qemu:///system"
TEMPLATE = """<domain type='qemu'><name>${name}</name><uuid>${uuid}</uuid>
<memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>${metadata}
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>${kernel}</kernel>
<initrd>${initrd}</initrd><cmdline>${cmdline}</cmdline></os><on_reboot>destroy</on_reboot>
<devices><memballoon model='none'/></devices></domain>"""


class Timed:
    """Wraps the backend to note when the host agent issues start()."""

    def __init__(self, inner: LibvirtBackend) -> None:
        self.inner = inner
        self.start_called: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def start(self, name: str) -> bool:
        self.start_called.append(time.monotonic())
        return await self.inner.start(name)


async def next_event(queue: asyncio.Queue[DomainEvent], kind: DomainEventKind, name: str,
                     within: float = 120) -> DomainEvent:
    async with asyncio.timeout(within):
        while True:
            event = await queue.get()
            if event.kind is kind and event.domain == name:
                return event


async def measure(work: Path) -> None:
    image = build_minimal_guest(Path("/var/tmp/cloudd-h4-guest"))
    cloud = f"cloudd-h4-bench{uuid.uuid4().hex[:4]}"
    spec = NodeDomain(meta=CloudMeta(cloud=cloud, node="n1", role="compute", term=1),
                      memory_mib=128, vcpus=1, image="", cmdline="console=ttyS0 panic=-1",
                      extra={"kernel": str(image.kernel), "initrd": str(image.initrd)})
    name = spec.name
    backend = await LibvirtBackend.open(URI, call_timeout=60)
    timed = Timed(backend)
    agent = HostAgent(timed, state_dir=work / "state")  # type: ignore[arg-type]
    events = backend.subscribe()
    shares: list[float] = []
    totals: list[float] = []
    detections: list[float] = []
    retries = 0
    try:
        await agent.execute(HostCommand(Op.DEFINE, 1, name, render_domain(TEMPLATE, spec)))
        await agent.execute(HostCommand(Op.START, 1, name))
        await next_event(events, DomainEventKind.STARTED, name)
        for run in range(RUNS):
            await asyncio.sleep(1.0)  # let the guest get past its first instants
            pidfile = Path(f"/run/libvirt/qemu/{name}.pid")
            pid = int(await asyncio.to_thread(pidfile.read_text))
            timed.start_called.clear()
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            stopped = await next_event(events, DomainEventKind.STOPPED, name)
            # the respawner: the STOPPED event becomes a START command to the host agent
            while True:
                result = await agent.execute(HostCommand(Op.START, 1, name))
                if result.outcome is not CommandOutcome.FAILED:
                    break
                retries += 1
                await asyncio.sleep(result.retry_after or 0.5)
            started = await next_event(events, DomainEventKind.STARTED, name)
            shares.append(timed.start_called[0] - stopped.at)
            totals.append(started.at - killed)
            detections.append(stopped.at - killed)
            print(f"run {run + 1:2d}: share {shares[-1] * 1000:6.2f} ms, "
                  f"kill->running {totals[-1]:5.2f} s", file=sys.stderr)
    finally:
        await agent.execute(HostCommand(Op.DESTROY, 1, name))
        await agent.execute(HostCommand(Op.UNDEFINE, 1, name))
        await backend.close()
    print(f"\nrespawn on this host, {RUNS} runs ({retries} start retries)")
    print(f"{'measure':<44} {'median':>10} {'max':>10}")
    print(f"{'STOPPED event -> start call (cloudd share)':<44} "
          f"{statistics.median(shares) * 1000:>7.2f} ms {max(shares) * 1000:>7.2f} ms")
    print(f"{'kill -9 qemu -> STOPPED event (libvirt)':<44} "
          f"{statistics.median(detections):>8.2f} s {max(detections):>8.2f} s")
    print(f"{'kill -9 qemu -> replacement running':<44} "
          f"{statistics.median(totals):>8.2f} s {max(totals):>8.2f} s")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cloudd-h4-bench-"))
    try:
        asyncio.run(measure(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
