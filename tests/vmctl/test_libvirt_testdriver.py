"""LibvirtBackend against libvirt's in-process `test:///default` driver (fast, no root).

That driver starts with one domain, `test`, running and without cloudd metadata: it stands
for an operator's hand-made domain that cloudd must leave alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from typing import Any

import libvirt
import pytest

from cloudd.errors import PermanentError
from cloudd.vmctl import libvirt_binding
from cloudd.vmctl.backend import (
    DomainEvent,
    DomainEventKind,
    InvalidDomain,
    NoSuchDomain,
    NotOurDomain,
    PowerState,
)
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

TEMPLATE = """<domain type='test'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type></os>
  ${metadata}
</domain>"""


def xml_for(node: str, *, term: int = 1) -> str:
    meta = CloudMeta(cloud="tc", node=node, role="compute", term=term)
    return render_domain(TEMPLATE, NodeDomain(meta=meta, memory_mib=64, vcpus=1, image="/i"))


@pytest.fixture
async def backend() -> AsyncIterator[LibvirtBackend]:
    b = await LibvirtBackend.open("test:///default", call_timeout=10.0)
    yield b
    await b.close()


async def next_event(queue: asyncio.Queue[DomainEvent], kind: DomainEventKind) -> DomainEvent:
    async with asyncio.timeout(10):
        while True:
            event = await queue.get()
            if event.kind is kind:
                return event


async def test_define_start_destroy_undefine_with_events(backend: LibvirtBackend) -> None:
    events = backend.subscribe()
    assert await backend.define(xml_for("n1"))
    defined = await next_event(events, DomainEventKind.DEFINED)
    assert defined.domain == "tc-n1" and defined.meta is not None
    assert defined.meta.node == "n1"
    assert await backend.start("tc-n1")
    started = await next_event(events, DomainEventKind.STARTED)
    assert (started.domain, started.detail) == ("tc-n1", "booted")
    [info] = await backend.list()
    assert (info.name, info.state, info.meta.term) == ("tc-n1", PowerState.RUNNING, 1)
    assert await backend.destroy("tc-n1")
    stopped = await next_event(events, DomainEventKind.STOPPED)
    assert stopped.detail == "destroyed"
    assert await backend.undefine("tc-n1")
    assert (await next_event(events, DomainEventKind.UNDEFINED)).domain == "tc-n1"
    assert await backend.list() == ()


async def test_operations_are_idempotent(backend: LibvirtBackend) -> None:
    assert await backend.define(xml_for("n1"))
    assert not await backend.define(xml_for("n1", term=2))
    assert (await backend.list())[0].meta.term == 1
    assert not await backend.destroy("tc-n1")
    assert not await backend.shutdown("tc-n1")
    assert await backend.start("tc-n1")
    assert not await backend.start("tc-n1")
    with pytest.raises(PermanentError, match="destroy it before undefining"):
        await backend.undefine("tc-n1")
    assert await backend.destroy("tc-n1")
    assert await backend.undefine("tc-n1")
    assert not await backend.undefine("tc-n1")


async def test_reset_of_a_running_domain_and_of_a_stopped_one(backend: LibvirtBackend) -> None:
    assert await backend.define(xml_for("r1"))
    assert not await backend.reset("tc-r1")
    events = backend.subscribe()
    assert await backend.start("tc-r1")
    await next_event(events, DomainEventKind.STARTED)
    assert await backend.reset("tc-r1")
    [info] = await backend.list()
    assert info.state is PowerState.RUNNING
    await asyncio.sleep(0.1)
    assert events.empty()  # the same domain runs on: no lifecycle event
    assert await backend.destroy("tc-r1") and await backend.undefine("tc-r1")


async def test_a_reset_qemu_does_not_answer_is_a_destroy_and_a_start(
        backend: LibvirtBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """virDomainReset waits on the guest's qemu monitor: a stopped qemu never answers it."""
    answer = threading.Event()

    def hung_reset(dom: libvirt.virDomain, flags: int = 0) -> int:
        answer.wait(30)
        return 0

    monkeypatch.setattr(libvirt.virDomain, "reset", hung_reset)
    backend.reset_timeout = 0.2
    assert await backend.define(xml_for("r2"))
    events = backend.subscribe()
    assert await backend.start("tc-r2")
    await next_event(events, DomainEventKind.STARTED)
    try:
        assert await backend.reset("tc-r2")
        assert (await next_event(events, DomainEventKind.STOPPED)).detail == "destroyed"
        assert (await next_event(events, DomainEventKind.STARTED)).detail == "booted"
        [info] = await backend.list()
        assert info.state is PowerState.RUNNING
    finally:
        answer.set()
    assert await backend.destroy("tc-r2") and await backend.undefine("tc-r2")


async def test_a_reset_queued_behind_hung_ones_never_runs_after_the_restart(
        backend: LibvirtBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reset thread held by a qemu that does not answer: the reset that waited for a
    thread is dropped with its timeout, not run later on the domain started again."""
    held = threading.Event()
    resets: list[int] = []
    monkeypatch.setattr(libvirt.virDomain, "reset",
                        lambda dom, flags=0: resets.append(flags) or 0)
    monkeypatch.setattr(backend, "_resets", concurrent.futures.ThreadPoolExecutor(max_workers=1))
    backend.reset_timeout = 0.2
    assert await backend.define(xml_for("r3"))
    events = backend.subscribe()
    assert await backend.start("tc-r3")
    await next_event(events, DomainEventKind.STARTED)
    backend._resets.submit(held.wait, 30)
    try:
        assert await backend.reset("tc-r3")
        assert (await next_event(events, DomainEventKind.STOPPED)).detail == "destroyed"
        assert (await next_event(events, DomainEventKind.STARTED)).detail == "booted"
    finally:
        held.set()
    await asyncio.wrap_future(backend._resets.submit(lambda: None))  # the queue has drained
    assert resets == []
    assert await backend.destroy("tc-r3") and await backend.undefine("tc-r3")


async def test_foreign_domain_is_never_touched(backend: LibvirtBackend) -> None:
    for op in (backend.destroy, backend.shutdown, backend.undefine, backend.start,
               backend.reset):
        with pytest.raises(NotOurDomain, match="'test' has no cloudd metadata"):
            await op("test")
    foreign = xml_for("x").replace("<name>tc-x</name>", "<name>test</name>")
    with pytest.raises(NotOurDomain):
        await backend.define(foreign)
    assert await backend.list() == ()
    # still there and still running
    conn_state = await backend._call("peek", lambda: backend._conn_or_raise()
                                     .lookupByName("test").state()[0])
    assert conn_state == 1


async def test_define_refuses_xml_without_metadata_or_invalid(backend: LibvirtBackend) -> None:
    with pytest.raises(InvalidDomain, match="no cloudd metadata"):
        await backend.define("<domain type='test'><name>a</name></domain>")
    bad = xml_for("n2").replace("<os>", "<bogus/><os>")
    with pytest.raises(InvalidDomain, match="libvirt define"):
        await backend.define(bad)
    assert await backend.list() == ()


async def test_missing_domain(backend: LibvirtBackend) -> None:
    with pytest.raises(NoSuchDomain):
        await backend.start("tc-nope")


async def test_inventory(backend: LibvirtBackend, tmp_path) -> None:
    (tmp_path / "a.qcow2").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    backend.image_dirs = (tmp_path,)
    inv = await backend.inventory()
    assert inv.vcpus > 0 and 0 < inv.free_memory_kib <= inv.total_memory_kib
    assert inv.images == frozenset({str(tmp_path / "a.qcow2")})


async def test_close_twice_and_calls_after_close(backend: LibvirtBackend) -> None:
    await backend.close()
    await backend.close()
    with pytest.raises(PermanentError, match="closed"):
        await backend.list()


def test_a_domain_undefined_between_the_listing_and_its_reads_is_left_out() -> None:
    """The listing a connect makes: a domain gone by the time its metadata is read is not
    there any more, not an error (the chaos soak saw a host agent exit on it, started while
    the leader re-placed a node)."""
    conn = libvirt_binding.open("test:///default")  # as the backend opens it
    try:
        gone = conn.defineXML(xml_for("gone"))
        kept = conn.defineXML(xml_for("kept"))
        listed = conn.listAllDomains(0)
        gone.undefine()

        class Listed:  # the listing as it was, the domains as they are now
            def listAllDomains(self, _flags: int) -> list[Any]:
                return listed

        assert [d.name for d in LibvirtBackend._list_on(Listed())] == ["tc-kept"]
        kept.undefine()
    finally:
        conn.close()


@pytest.mark.parametrize(("uri", "wire"), [
    ("qemu:///system", True),
    ("qemu+unix:///system?socket=/run/lab/libvirt-sock", True),
    ("test:///default", False),           # the binding's in-process driver
    ("qemu+ssh://pm2/system", False),     # a remote transport: the binding's remote driver
    ("qemu+tls://192.0.2.71/system", False),
])
def test_the_local_libvirtd_is_spoken_to_by_protocol_and_the_rest_through_the_binding(
        uri: str, wire: bool) -> None:
    from cloudd.vmctl import libvirt_wire
    from cloudd.vmctl.libvirt_backend import _opener

    assert libvirt_wire.speaks(uri) is wire
    assert (_opener(uri) is libvirt_wire.open) is wire
    assert (_opener(uri) is libvirt_binding.open) is not wire


def test_what_the_binding_gives_is_seen_as_the_wire_client_s() -> None:
    """Every domain the wrapped binding returns raises the wire client's errors, whichever
    call gave it (not only the three the backend uses)."""
    from cloudd.vmctl import libvirt_wire

    conn = libvirt_binding.open("test:///default")
    try:
        dom = conn.defineXML(xml_for("wrapped"))
        again = conn.lookupByUUIDString(dom.UUIDString())
        assert again.connect().getURI() == "test:///default"
        again.undefine()
        with pytest.raises(libvirt_wire.libvirtError) as gone:
            dom.create()
        assert gone.value.get_error_code() == libvirt_wire.VIR_ERR_NO_DOMAIN
    finally:
        conn.close()


async def test_a_close_from_a_connection_no_longer_in_use_is_ignored(
        backend: LibvirtBackend) -> None:
    """A connection given up (an earlier one, or a connect that timed out) may still report its
    end: only the close of the connection in use makes the backend reconnect."""
    current = backend._conn
    assert current is not None
    other = libvirt_binding.open("test:///default")
    try:
        backend._on_close(other, 1, None)
        await asyncio.sleep(0.1)
        assert backend._conn is current
    finally:
        other.close()
    backend._on_close(current, 1, None)
    for _ in range(200):
        if backend._conn is not None and backend._conn is not current:
            break
        await asyncio.sleep(0.05)
    assert backend._conn is not None and backend._conn is not current
