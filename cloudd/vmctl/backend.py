"""What a host's hypervisor can do for cloudd: the Backend protocol, its data, and a fake.

The host agent and the benchmarks see only this Protocol. `cloudd.vmctl.libvirt_backend` is
the real implementation (the only module importing libvirt); `FakeBackend` here is an
in-memory one for unit tests of the logic above it (it enforces the same rules: a domain
without cloudd metadata is never touched; start of a running domain and destroy or reset of a
stopped one are no-ops that return False).

Events: `subscribe()` hands out an asyncio.Queue that receives every DomainEvent from then on.
After a reconnect to the hypervisor a RESYNC event carries the full list, since events may have
been missed while disconnected.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol
from xml.etree import ElementTree as ET

from cloudd.errors import PermanentError, TemporaryError
from cloudd.vmctl.metadata import CloudMeta, from_domain_xml, stamp_host


class PowerState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"
    STOPPED = "stopped"
    CRASHED = "crashed"
    OTHER = "other"


class DomainEventKind(enum.Enum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    OTHER = "other"
    #: the connection to the hypervisor was lost; nothing is known until RESYNC
    DISCONNECTED = "disconnected"
    #: (re)connected: `domains` is the whole current list
    RESYNC = "resync"


class NotOurDomain(PermanentError):
    """The domain exists but carries no cloudd metadata: cloudd must not touch it."""


class NoSuchDomain(PermanentError):
    """No domain of that name is defined on this host."""


class InvalidDomain(PermanentError):
    """The hypervisor refused the domain XML (schema or semantic validation)."""


class BackendUnavailable(TemporaryError):
    """The hypervisor cannot be reached right now (down, restarting, call timed out)."""


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    meta: CloudMeta
    state: PowerState
    #: a live migration of it runs, in or out: it is on two hosts until the move ends
    migrating: bool = False


@dataclass(frozen=True)
class Inventory:
    """What a host can still offer."""

    free_memory_kib: int
    total_memory_kib: int
    vcpus: int
    images: frozenset[str]
    overlays: tuple[tuple[str, str], ...] = ()
    """(path, domain) of each per-node overlay this host made for its cloud and still has
    (the host agent's record, not the hypervisor's): the leader removes those no node needs."""


@dataclass(frozen=True)
class DomainEvent:
    kind: DomainEventKind
    domain: str
    meta: CloudMeta | None
    #: the hypervisor's own detail, e.g. "crashed", "destroyed", "shutdown", "failed"
    detail: str
    #: monotonic seconds, from the backend's clock, when the event was received
    at: float
    domains: tuple[DomainInfo, ...] = ()


class Backend(Protocol):
    async def define(self, xml: str) -> bool:
        """Define a domain from XML carrying cloudd metadata; False when it already exists."""
        ...

    async def start(self, name: str) -> bool:
        """Start a defined domain; False when it already runs."""
        ...

    async def shutdown(self, name: str) -> bool:
        """Ask the guest to shut down (ACPI); False when it is not running."""
        ...

    async def reset(self, name: str) -> bool:
        """Reset a running domain as its reset button would: the guest reboots at once, its
        domain keeps running (unless its `on_reboot` says destroy). False when it is not
        running. A hypervisor that does not carry the reset out within its bound (a qemu
        stopped with SIGSTOP, or wedged, never answers its monitor) has the domain destroyed
        and started again instead; the reset still returns True."""
        ...

    async def destroy(self, name: str) -> bool:
        """Stop the domain at once; False when it is not running."""
        ...

    async def undefine(self, name: str) -> bool:
        """Forget a stopped domain; False when it is not defined."""
        ...

    async def migrate(self, name: str, *, uri: str, address: str, host: str,
                      limit: float, unsafe: bool = False, tls: bool = False) -> bool:
        """Move the running domain `name` live to the hypervisor at `uri` (peer to peer: this
        host's hypervisor connects to that one), its memory streamed to `address` there;
        defined there, with `host` stamped into its metadata as the host it now runs on, and
        undefined here once it runs there. A move not done within `limit` seconds is aborted
        (the guest runs on here) and raises TemporaryError. False when it does not run, or is
        not here (moved already: a MIGRATE sent again after its answer was lost). A move of
        it under way (started before this agent restarted) is followed, not started again.
        `unsafe`: without the hypervisor's check that the disks are on shared storage; `tls`:
        the memory stream encrypted."""
        ...

    async def list(self) -> tuple[DomainInfo, ...]:
        """Every cloudd-owned domain on this host, with metadata and state."""
        ...

    async def inventory(self) -> Inventory: ...

    async def disks(self) -> frozenset[str]:
        """Every file a domain defined here (cloudd's or not, running or not) names as a disk,
        its backing files included where the hypervisor reports them."""
        ...

    def subscribe(self) -> asyncio.Queue[DomainEvent]: ...

    def unsubscribe(self, queue: asyncio.Queue[DomainEvent]) -> None: ...

    async def close(self) -> None: ...


class EventHub:
    """Fan-out of events to subscriber queues (shared by the fake and the real backend)."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[DomainEvent]] = []

    def subscribe(self) -> asyncio.Queue[DomainEvent]:
        queue: asyncio.Queue[DomainEvent] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[DomainEvent]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    def publish(self, event: DomainEvent) -> None:
        for queue in self._queues:
            queue.put_nowait(event)


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2,
          "mib": 1024**2, "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def _memory_kib(root: ET.Element) -> int:
    """A domain's `<memory>` in KiB (libvirt's default unit), 0 when absent or unreadable."""
    elem = root.find("memory")
    if elem is None or not (elem.text or "").strip().isdigit():
        return 0
    factor = _UNITS.get(elem.get("unit", "KiB").lower(), 1024)
    return int(elem.text or "0") * factor // 1024


def disk_files(xml: str) -> frozenset[str]:
    """The files a domain's XML names as disks (cdroms and backing stores included)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return frozenset()
    return frozenset(s.get("file", "") for s in root.iterfind("devices/disk//source")
                     if s.get("file"))


@dataclass
class _FakeDomain:
    xml: str
    meta: CloudMeta | None
    uuid: str
    state: PowerState = PowerState.STOPPED
    memory_kib: int = 0
    migrating: bool = False


@dataclass
class FakeBackend:
    """An in-memory hypervisor for unit tests. `add_foreign` defines a domain without metadata;
    `crash` makes a running domain die as if its qemu were killed; `stall` makes its qemu
    stop answering, as after SIGSTOP (a reset then destroys and starts it)."""

    clock: Callable[[], float]
    total_memory_kib: int = 8 * 1024 * 1024
    vcpus: int = 4
    images: frozenset[str] = frozenset()
    domains: dict[str, _FakeDomain] = field(default_factory=dict)
    hub: EventHub = field(default_factory=EventHub)
    calls: list[tuple[str, str]] = field(default_factory=list)
    stalled: set[str] = field(default_factory=set)
    #: the other fake hypervisors a domain may migrate to, by their URI
    peers: dict[str, FakeBackend] = field(default_factory=dict)

    def add_foreign(self, name: str, *, running: bool = False) -> None:
        state = PowerState.RUNNING if running else PowerState.STOPPED
        self.domains[name] = _FakeDomain(xml=f"<domain><name>{name}</name></domain>",
                                         meta=None, uuid=f"uuid-{name}", state=state)

    def crash(self, name: str) -> None:
        dom = self._ours(name)
        dom.state = PowerState.STOPPED
        self._emit(DomainEventKind.STOPPED, name, dom.meta, "crashed")

    def stall(self, name: str) -> None:
        self._ours(name)
        self.stalled.add(name)

    def _emit(self, kind: DomainEventKind, name: str, meta: CloudMeta | None, detail: str) -> None:
        self.hub.publish(DomainEvent(kind=kind, domain=name, meta=meta, detail=detail,
                                     at=self.clock()))

    def _ours(self, name: str) -> _FakeDomain:
        dom = self.domains.get(name)
        if dom is None:
            raise NoSuchDomain(f"no domain {name!r} on this host")
        if dom.meta is None:
            raise NotOurDomain(f"domain {name!r} has no cloudd metadata; not touching it")
        return dom

    async def define(self, xml: str) -> bool:
        meta = from_domain_xml(xml)
        if meta is None:
            raise InvalidDomain("domain XML carries no cloudd metadata")
        root = ET.fromstring(xml)
        name = root.findtext("name") or ""
        self.calls.append(("define", name))
        if name in self.domains:
            self._ours(name)
            return False
        self.domains[name] = _FakeDomain(xml=xml, meta=meta, uuid=f"uuid-{name}",
                                         memory_kib=_memory_kib(root))
        self._emit(DomainEventKind.DEFINED, name, meta, "added")
        return True

    async def start(self, name: str) -> bool:
        self.calls.append(("start", name))
        dom = self._ours(name)
        if dom.state is PowerState.RUNNING:
            return False
        dom.state = PowerState.RUNNING
        self._emit(DomainEventKind.STARTED, name, dom.meta, "booted")
        return True

    async def shutdown(self, name: str) -> bool:
        self.calls.append(("shutdown", name))
        dom = self._ours(name)
        if dom.state is not PowerState.RUNNING:
            return False
        dom.state = PowerState.STOPPED
        self._emit(DomainEventKind.STOPPED, name, dom.meta, "shutdown")
        return True

    async def reset(self, name: str) -> bool:
        self.calls.append(("reset", name))
        dom = self._ours(name)
        if dom.state is not PowerState.RUNNING:
            return False
        if name in self.stalled:  # the real backend's fallback: destroy, then start
            await self.destroy(name)
            await self.start(name)
        return True

    async def destroy(self, name: str) -> bool:
        self.calls.append(("destroy", name))
        dom = self._ours(name)
        if dom.state is PowerState.STOPPED:
            return False
        dom.state = PowerState.STOPPED
        self.stalled.discard(name)
        self._emit(DomainEventKind.STOPPED, name, dom.meta, "destroyed")
        return True

    async def undefine(self, name: str) -> bool:
        self.calls.append(("undefine", name))
        if name not in self.domains:
            return False
        dom = self._ours(name)
        if dom.state is not PowerState.STOPPED:
            raise PermanentError(f"domain {name!r} is running; destroy it before undefining")
        del self.domains[name]
        self._emit(DomainEventKind.UNDEFINED, name, dom.meta, "removed")
        return True

    async def migrate(self, name: str, *, uri: str, address: str, host: str,
                      limit: float, unsafe: bool = False, tls: bool = False) -> bool:
        self.calls.append(("migrate", name))
        if name not in self.domains:
            return False
        dom = self._ours(name)
        if dom.state is not PowerState.RUNNING:
            return False
        peer = self.peers.get(uri)
        if peer is None:
            raise TemporaryError(f"migrate {name}: no hypervisor answers at {uri}")
        if name in peer.domains:
            raise PermanentError(f"migrate {name}: {uri} has a domain of that name already")
        xml = stamp_host(dom.xml, host)
        peer.domains[name] = replace(dom, xml=xml, meta=from_domain_xml(xml))
        peer._emit(DomainEventKind.STARTED, name, peer.domains[name].meta, "migrated")
        del self.domains[name]
        self._emit(DomainEventKind.STOPPED, name, dom.meta, "migrated")
        self._emit(DomainEventKind.UNDEFINED, name, dom.meta, "removed")
        return True

    async def list(self) -> tuple[DomainInfo, ...]:
        return tuple(DomainInfo(name=n, uuid=d.uuid, meta=d.meta, state=d.state,
                                migrating=d.migrating)
                     for n, d in sorted(self.domains.items()) if d.meta is not None)

    async def inventory(self) -> Inventory:
        used = sum(d.memory_kib for d in self.domains.values()
                   if d.state is PowerState.RUNNING)
        return Inventory(free_memory_kib=self.total_memory_kib - used,
                         total_memory_kib=self.total_memory_kib, vcpus=self.vcpus,
                         images=self.images)

    async def disks(self) -> frozenset[str]:
        return frozenset(f for d in self.domains.values() for f in disk_files(d.xml))

    def subscribe(self) -> asyncio.Queue[DomainEvent]:
        return self.hub.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[DomainEvent]) -> None:
        self.hub.unsubscribe(queue)

    async def close(self) -> None:
        return None
