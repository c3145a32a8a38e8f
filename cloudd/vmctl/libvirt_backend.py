"""The Backend protocol over libvirt.

The connection is `libvirt_wire`, libvirt's RPC protocol in pure Python with the binding's
API, to the local libvirtd (`qemu:///system`, the default). What it does not speak goes
through the binding instead (`libvirt_binding`, loaded only then), seen through the same API
and errors: a `test:///` URI (libvirt's in-process test driver: the labs' and tests' hosts
without VMs) and a remote transport (`qemu+ssh://...`, `qemu+tls://...`). A host on its local
libvirtd never loads the binding (~12 MiB of shared libraries: tests/daemon/test_footprint.py).

Calls block, so every call runs in one dedicated worker thread per connection (a
single thread keeps the calls on one connection ordered and makes the object safe to share)
and every call has a timeout: a hung libvirtd makes a call fail with BackendUnavailable
instead of freezing the agent. Lifecycle events arrive without polling, on the connection's
reader thread (libvirtaio's loop for the binding), and hop to the backend's loop.

Ownership: an operation on a domain first reads its cloudd metadata (virDomainGetMetadata in
cloudd's namespace) in the same worker-thread call; a domain without it raises NotOurDomain
and is left as it was. Event callbacks run on the loop and must not block, so they read the
owner from a cache that list/define/resync keep up to date.

Reset: virDomainReset is a command on the guest's qemu monitor, and a qemu that does not
answer it (stopped with SIGSTOP, or wedged: a hung guest's usual cause besides its own kernel)
never replies; libvirtd then holds the domain's job until qemu dies. So a reset runs in a
thread of its own, not the connection's worker, and is waited for `reset_timeout` seconds:
unanswered by then, the domain is destroyed (libvirt's destroy kills qemu first and takes the
job after, so it does not wait for the hung reset: SIGTERM, then SIGKILL after 10 s, which a
stopped process obeys) and started again. The hung reset's thread returns when qemu dies.
A reset also depends on the domain's `on_reboot`: `restart` (the shipped templates) reboots
the guest in the same qemu; `destroy` (the lab's test guests) makes qemu exit, as if the guest
had powered off.

Live migration: `cloudd.vmctl.libvirt_migration`, on threads of their own as resets are.

Reconnection: a close callback (and keepalive, which detects a silent peer) tells us when
libvirtd goes away. We publish DISCONNECTED, retry opening with backoff, re-register the
event callbacks, re-read every domain and publish RESYNC with the full list: events missed
while disconnected are made up for by the level-triggered reconcile that follows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree as ET

from cloudd import log
from cloudd.backoff import Backoff
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.vmctl import libvirt_migration as moves
from cloudd.vmctl import libvirt_wire as libvirt
from cloudd.vmctl.backend import (
    BackendUnavailable,
    DomainEvent,
    DomainEventKind,
    DomainInfo,
    EventHub,
    InvalidDomain,
    Inventory,
    NoSuchDomain,
    NotOurDomain,
    PowerState,
    disk_files,
)
from cloudd.vmctl.metadata import (
    NAMESPACE,
    CloudMeta,
    MetadataError,
    from_domain_xml,
    parse_element,
    stamp_host,
)

T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
}
_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: DomainEventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: DomainEventKind.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: DomainEventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: DomainEventKind.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: DomainEventKind.RESUMED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: DomainEventKind.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: DomainEventKind.SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: DomainEventKind.CRASHED,
}
_STOPPED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
}
_STARTED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
    libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
    libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from-snapshot",
    libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "wakeup",
}
_DETAILS = {DomainEventKind.STOPPED: _STOPPED_DETAILS, DomainEventKind.STARTED: _STARTED_DETAILS}
_CONNECTION_ERRORS = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                      libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN,
                      libvirt.VIR_ERR_AUTH_FAILED}
_XML_ERRORS = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL,
               libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
               libvirt.VIR_ERR_XML_INVALID_SCHEMA}
_IMAGE_SUFFIXES = (".qcow2", ".img", ".raw")


def _opener(uri: str) -> Callable[[str], libvirt.virConnect]:
    """How `uri` is opened: the local libvirtd by its protocol (`libvirt_wire`); what only
    the binding speaks (in-process drivers, remote transports) through the binding."""
    if libvirt.speaks(uri):
        return libvirt.open
    from cloudd.vmctl import libvirt_binding

    return libvirt_binding.open


def _translate(e: libvirt.libvirtError, what: str) -> ClouddError:
    code = e.get_error_code()
    msg = f"libvirt {what}: {e.get_error_message() or e}"
    if code in _CONNECTION_ERRORS and (
            code != libvirt.VIR_ERR_SYSTEM_ERROR
            or e.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)):
        return BackendUnavailable(msg, delay=1.0)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NoSuchDomain(msg)
    if what == "define" and code in _XML_ERRORS:
        return InvalidDomain(msg)
    # Start failures such as "qemu unexpectedly closed the monitor" go away on a later try.
    return TemporaryError(msg, delay=1.0)


def _owner(dom: libvirt.virDomain) -> CloudMeta | None:
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    try:
        return parse_element(xml)
    except MetadataError:
        return None


def _info(dom: libvirt.virDomain, meta: CloudMeta) -> DomainInfo:
    state = dom.state()[0]
    moving = state in moves.ACTIVE and moves.job(dom) in moves.MIGRATIONS
    return DomainInfo(name=dom.name(), uuid=dom.UUIDString(), meta=meta,
                      state=_STATES.get(state, PowerState.OTHER), migrating=moving)


#: Seconds a reset may take before the guest's qemu counts as not answering (then it is
#: destroyed and started again): a qemu that answers resets in milliseconds.
RESET_TIMEOUT = 5.0
#: Resets that may hang at once (each holds a thread until its qemu dies).
RESET_THREADS = 4

#: Waits between two tries to reopen a lost connection: a restarted libvirtd is back within
#: a second or two, so the first tries come fast; past that, one try every two seconds.
RECONNECT = Backoff(base=0.1, cap=2.0)


class LibvirtBackend:
    """A libvirt connection as a cloudd Backend. Create with `await LibvirtBackend.open(uri)`."""

    def __init__(self, uri: str, *, clock: Callable[[], float] = time.monotonic,
                 call_timeout: float = 30.0, image_dirs: tuple[Path, ...] = (),
                 reconnect: Backoff = RECONNECT, rng: random.Random | None = None,
                 reset_timeout: float = RESET_TIMEOUT) -> None:
        self.uri = uri
        self.clock = clock
        self.call_timeout = call_timeout
        self.reset_timeout = reset_timeout
        self.image_dirs = image_dirs
        self.reconnect = reconnect
        self._rng = rng or random.Random()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="libvirt")
        # resets wait on the guest's qemu, which may never answer: not on the worker above
        self._resets = concurrent.futures.ThreadPoolExecutor(
            max_workers=RESET_THREADS, thread_name_prefix="libvirt-reset")
        # so do live migrations, for as long as the guest's memory takes to cross
        self._moves = concurrent.futures.ThreadPoolExecutor(
            max_workers=moves.MIGRATE_THREADS, thread_name_prefix="libvirt-migrate")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._owners: dict[str, CloudMeta] = {}
        self._hub = EventHub()
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False
        self._log = log.get("vmctl.libvirt", host=os.uname().nodename)

    @classmethod
    async def open(cls, uri: str, **kwargs: Any) -> LibvirtBackend:
        backend = cls(uri, **kwargs)
        backend._loop = asyncio.get_running_loop()
        await backend._connect()
        return backend

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], T], *, need_conn: bool = True) -> T:
        if self._closed:
            raise PermanentError(f"libvirt {what}: backend is closed")
        if need_conn and self._conn is None:
            raise BackendUnavailable(f"libvirt {what}: not connected to {self.uri}", delay=1.0)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, fn),
                                          self.call_timeout)
        except TimeoutError:
            raise BackendUnavailable(
                f"libvirt {what}: no answer from {self.uri} within {self.call_timeout}s",
                delay=1.0) from None
        except libvirt.libvirtError as e:
            raise _translate(e, what) from None

    def _conn_or_raise(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is None:
            raise libvirt.libvirtError("not connected")
        return conn

    async def _connect(self) -> None:
        # set when the wait is given up (its timeout, or close()): a connection the worker
        # opens after that is closed there, not left to run its reader and callbacks
        abandoned = threading.Event()

        def work() -> tuple[libvirt.virConnect, int, tuple[DomainInfo, ...]]:
            conn = _opener(self.uri)(self.uri)
            try:
                if not self.uri.startswith("test:"):
                    conn.setKeepAlive(5, 3)
                conn.registerCloseCallback(self._on_close, None)
                cb = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
                listing = self._list_on(conn)
                if abandoned.is_set():
                    raise libvirt.libvirtError(f"connection to {self.uri} given up meanwhile")
                return conn, cb, listing
            except BaseException:
                conn.close()
                raise

        try:
            conn, cb, domains = await self._call("connect", work, need_conn=False)
        except BaseException:
            abandoned.set()
            raise
        self._conn, self._callback_id = conn, cb
        self._owners = {d.name: d.meta for d in domains}
        self._log.info("libvirt connected", uri=self.uri, domains=len(domains))
        self._hub.publish(DomainEvent(kind=DomainEventKind.RESYNC, domain="", meta=None,
                                      detail="connected", at=self.clock(), domains=domains))

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Called on the connection's reader thread (the binding's: libvirt's event thread):
        # hop to the backend's loop.
        loop = self._loop
        if loop is not None and not self._closed:
            self._hop(loop, self._lost, conn, reason)

    def _lost(self, conn: libvirt.virConnect, reason: int) -> None:
        # only the connection in use: one dropped before (a reconnect's) ends without effect
        if self._conn is None or self._closed or conn is not self._conn:
            return
        dead, self._conn, self._callback_id = self._conn, None, None
        self._log.warning("libvirt connection lost", uri=self.uri, reason=reason)
        self._hub.publish(DomainEvent(kind=DomainEventKind.DISCONNECTED, domain="", meta=None,
                                      detail=f"close reason {reason}", at=self.clock()))
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(dead))

    async def _reconnect_loop(self, dead: libvirt.virConnect) -> None:
        def drop() -> None:
            with contextlib.suppress(libvirt.libvirtError):
                dead.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                dead.close()

        await self._call("close", drop, need_conn=False)
        attempt = 0
        while not self._closed:
            await asyncio.sleep(self.reconnect.delay(attempt + 1, self._rng.random()))
            try:
                await self._connect()
                return
            except ClouddError as e:
                attempt += 1
                # One line for the first failure and then one every 20 tries, not a flood.
                if attempt % 20 == 1:
                    self._log.info("libvirt reconnect failed", uri=self.uri, attempt=attempt,
                                   error=str(e))

    def _on_lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                      detail: int, _opaque: object) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        name, at = dom.name(), self.clock()
        self._hop(loop, self._lifecycle, name, event, detail, at)

    @staticmethod
    def _hop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
        # The owner's loop may already be closed (a backend never closed, its loop gone):
        # the event has nobody to go to, and must not break libvirt's event thread.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _lifecycle(self, name: str, event: int, detail: int, at: float) -> None:
        kind = _EVENTS.get(event, DomainEventKind.OTHER)
        meta = self._owners.get(name)
        if kind is DomainEventKind.UNDEFINED:
            self._owners.pop(name, None)
        if meta is None:
            if kind is DomainEventKind.DEFINED:
                # A domain defined by someone else (or by us, racing define's return): look
                # at its metadata off the loop, then publish if it is ours.
                asyncio.get_running_loop().create_task(self._learn(name, detail, at))
            return
        text = _DETAILS.get(kind, {}).get(detail, str(detail))
        self._hub.publish(DomainEvent(kind=kind, domain=name, meta=meta, detail=text, at=at))

    async def _learn(self, name: str, detail: int, at: float) -> None:
        def work() -> CloudMeta | None:
            return _owner(self._conn_or_raise().lookupByName(name))

        try:
            meta = await self._call("lookup", work)
        except ClouddError:
            return
        if meta is not None:
            self._owners[name] = meta
            self._hub.publish(DomainEvent(kind=DomainEventKind.DEFINED, domain=name, meta=meta,
                                          detail=str(detail), at=at))

    def _ours(self, name: str) -> tuple[libvirt.virDomain, CloudMeta]:
        """In the worker thread: the domain and its owner, or NotOurDomain/NoSuchDomain."""
        dom = self._conn_or_raise().lookupByName(name)
        meta = _owner(dom)
        if meta is None:
            raise NotOurDomain(f"domain {name!r} has no cloudd metadata; not touching it")
        return dom, meta

    @staticmethod
    def _list_on(conn: libvirt.virConnect) -> tuple[DomainInfo, ...]:
        out = []
        for dom in conn.listAllDomains(0):
            # A domain undefined between the listing and these reads is no longer there: left
            # out (its event follows), not an error that fails a connect (seen in the chaos
            # soak: a host agent started while the leader re-placed a node exited).
            try:
                meta = _owner(dom)
                if meta is not None:
                    out.append(_info(dom, meta))
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return tuple(sorted(out, key=lambda d: d.name))

    # -- the Backend protocol ---------------------------------------------------------------

    async def define(self, xml: str) -> bool:
        meta = from_domain_xml(xml)
        if meta is None:
            raise InvalidDomain("domain XML carries no cloudd metadata; refusing to define it")

        def work() -> tuple[bool, str]:
            conn = self._conn_or_raise()
            name = ET.fromstring(xml).findtext("name") or ""
            try:
                conn.lookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            else:
                self._ours(name)
                return False, name
            dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            return True, dom.name()

        changed, name = await self._call("define", work)
        if changed:
            self._owners[name] = meta
        return changed

    async def start(self, name: str) -> bool:
        def work() -> bool:
            dom, _ = self._ours(name)
            if dom.isActive():
                return False
            try:
                dom.create()
            except libvirt.libvirtError as e:
                # Started by someone else between isActive and create: what we wanted.
                if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and dom.isActive():
                    return False
                raise
            return True

        return await self._call("start", work)

    async def shutdown(self, name: str) -> bool:
        def work() -> bool:
            dom, _ = self._ours(name)
            if not dom.isActive():
                return False
            dom.shutdown()
            return True

        return await self._call("shutdown", work)

    async def reset(self, name: str) -> bool:
        def find() -> libvirt.virDomain | None:
            dom, _ = self._ours(name)
            return dom if dom.isActive() else None

        dom = await self._call("reset", find)
        if dom is None:
            return False
        pending = asyncio.get_running_loop().run_in_executor(self._resets, dom.reset, 0)
        # retrieved, so that a reset that fails once its qemu is destroyed does not warn
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(pending), self.reset_timeout)
        except libvirt.libvirtError as e:
            # It stopped between the look and the reset: nothing to reset.
            if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID \
                    and not await self._call("reset", dom.isActive):
                return False
            raise _translate(e, "reset") from None
        except TimeoutError:
            # A reset still queued behind hung ones must not run later on the started guest.
            pending.cancel()
            self._log.warning("reset_unanswered", domain=name,
                              reason=f"qemu did not carry out the reset within "
                                     f"{self.reset_timeout:g}s; destroying and starting it")
            await self.destroy(name)
            await self.start(name)
        return True

    async def migrate(self, name: str, *, uri: str, address: str, host: str,
                      limit: float, unsafe: bool = False, tls: bool = False) -> bool:
        def prepare() -> tuple[libvirt.virDomain, str, bool] | None:
            try:
                dom, _ = self._ours(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None  # moved already (an answer that did not arrive), or gone
                raise
            if not dom.isActive():
                return None
            under_way = moves.job(dom) == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT
            # the definition it takes there: this one, naming the host it will run on
            xml = stamp_host(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), host)
            return dom, xml, under_way

        found = await self._call("migrate", prepare)
        if found is None:
            return False
        dom, xml, under_way = found
        # on its own thread: the worker must answer lists and events while the memory streams;
        # a move started before this agent restarted is followed, not started again
        moving = asyncio.get_running_loop().run_in_executor(
            self._moves, (lambda: moves.follow(dom)) if under_way else (lambda: moves.start(
                dom, uri=uri, address=address, xml=xml, unsafe=unsafe, tls=tls)))
        moving.add_done_callback(lambda f: f.cancelled() or f.exception())
        await moves.across(moving, name=name, host=host, limit=limit, log=self._log,
                           abort=lambda: self._call("migrate", dom.abortJob))
        return True

    async def destroy(self, name: str) -> bool:
        def work() -> bool:
            dom, _ = self._ours(name)
            if not dom.isActive():
                return False
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                # It died between isActive and destroy: what we wanted.
                if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID \
                        and not dom.isActive():
                    return False
                raise
            return True

        return await self._call("destroy", work)

    async def undefine(self, name: str) -> bool:
        def work() -> bool:
            try:
                dom, _ = self._ours(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            if dom.isActive():
                raise PermanentError(f"domain {name!r} is running; destroy it before undefining")
            dom.undefine()
            return True

        return await self._call("undefine", work)

    async def list(self) -> tuple[DomainInfo, ...]:
        domains = await self._call("list", lambda: self._list_on(self._conn_or_raise()))
        self._owners = {d.name: d.meta for d in domains}
        return domains

    async def inventory(self) -> Inventory:
        def work() -> Inventory:
            conn = self._conn_or_raise()
            info = conn.getInfo()
            images: set[str] = set()
            for d in self.image_dirs:
                if d.is_dir():
                    images.update(str(p) for p in d.iterdir()
                                  if p.is_file() and p.suffix in _IMAGE_SUFFIXES)
            return Inventory(free_memory_kib=conn.getFreeMemory() // 1024,
                             total_memory_kib=info[1] * 1024, vcpus=info[2],
                             images=frozenset(images))

        return await self._call("inventory", work)

    async def disks(self) -> frozenset[str]:
        def work() -> frozenset[str]:
            found: set[str] = set()
            for dom in self._conn_or_raise().listAllDomains(0):
                try:
                    found |= disk_files(dom.XMLDesc(0))
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise  # not merely undefined between the listing and this read
            return frozenset(found)

        return await self._call("disks", work)

    def subscribe(self) -> asyncio.Queue[DomainEvent]:
        return self._hub.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[DomainEvent]) -> None:
        self._hub.unsubscribe(queue)

    async def close(self) -> None:
        """Deregister and close; safe to call twice."""
        if self._closed:
            return
        if self._reconnect is not None:
            self._reconnect.cancel()
        conn, cb = self._conn, self._callback_id
        self._conn = None

        def work() -> None:
            if conn is None:
                return
            for step in (lambda: cb is not None and conn.domainEventDeregisterAny(cb),
                         conn.unregisterCloseCallback, conn.close):
                with contextlib.suppress(libvirt.libvirtError):
                    step()

        try:
            await self._call("close", work, need_conn=False)
        finally:
            self._closed = True
            self._pool.shutdown(wait=False)
            self._resets.shutdown(wait=False)
            self._moves.shutdown(wait=False)
