"""Live migration for `cloudd.vmctl.libvirt_backend` (through `libvirt_wire`, or the binding).

`migrateToURI3`, peer to peer: this host's libvirtd connects to the other's at the URI the
manifest gives for it, with its own credentials (the libvirtds trust each other, the agents are
not in the way); the guest's memory streams to the other host's address while the guest runs
(encrypted with `tls`, libvirt's VIR_MIGRATE_TLS, where both hosts' qemu.conf hold the
certificates); the disks stay where they are (the hosts share the storage they are on). The
definition sent along is this one with the other host's name stamped in, so that it is that
host's domain at once. It runs on a thread of its own, bounded by its caller's limit; a move
past it is aborted (`abortJob`: libvirt resumes the guest here).

Jobs. A migration is a job of the domain on both hosts (migration out here, in there; libvirt
gives its figures on the source only): `job` reads it, so that LIST can say a domain is moving
(`DomainInfo.migrating`: the leader leaves such a node alone, whichever leader it is), and a
MIGRATE that finds a move of its domain under way (started before this agent restarted)
follows it (`follow`) instead of starting a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cloudd.errors import ClouddError, TemporaryError
from cloudd.vmctl import libvirt_wire as libvirt

#: Live migrations that may run at once (each holds a thread while the memory streams).
MIGRATE_THREADS = 2
#: Seconds between two looks at a migration this agent follows but did not start.
FOLLOW_EVERY = 0.5
#: Seconds an aborted migration is given to end (libvirt ends it at once, or it was done).
ABORT_WAIT = 10.0
#: How a domain moves live: its memory streamed while it runs (the guest pauses for the last
#: round only), driven by this host's libvirtd, which connects to the other's itself (peer to
#: peer); defined there and undefined here once it runs there; its vCPUs slowed down if its
#: memory changes faster than it streams, so that the move ends.
MIGRATE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                 | libvirt.VIR_MIGRATE_AUTO_CONVERGE)
#: States of a domain whose qemu runs (a job may run on it).
ACTIVE = frozenset({libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                    libvirt.VIR_DOMAIN_BLOCKED})
MIGRATIONS = frozenset({libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
                        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT})


def job(dom: libvirt.virDomain) -> int | None:
    """The operation (`VIR_DOMAIN_JOB_OPERATION_*`) of the background job running on `dom`;
    None when none runs (or it stopped between the look and the question).

    The domain's control state is read first: it waits for nothing, while asking for a job's
    figures waits (up to libvirt's 30 s) for whatever holds the domain. OCCUPIED is a command
    in qemu's monitor with no background job behind it (a reset stuck on a stopped qemu
    stays so for as long as qemu is stopped), ERROR a monitor gone: neither is asked. A
    migration is a background job: between its own brief monitor commands the state is OK
    (libvirt 9.0 says JOB only while one of them runs), so OK and JOB are both asked."""
    try:
        if dom.controlInfo()[0] in (libvirt.VIR_DOMAIN_CONTROL_OCCUPIED,
                                    libvirt.VIR_DOMAIN_CONTROL_ERROR):
            return None
        stats = dom.jobStats(0)
    except libvirt.libvirtError:
        return None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    operation: int | None = stats.get("operation")
    return operation


def follow(dom: libvirt.virDomain) -> bool:
    """In a thread: wait for the migration leaving `dom` to end; whether the guest left."""
    while job(dom) == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
        time.sleep(FOLLOW_EVERY)
    try:
        return not dom.isActive()
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True  # undefined here once it ran there
        raise


def start(dom: libvirt.virDomain, *, uri: str, address: str, xml: str, unsafe: bool,
          tls: bool) -> bool:
    """In a thread: move `dom` to the hypervisor at `uri`, its memory to `address` there, as
    `xml`; True once it runs there (libvirtError otherwise)."""
    host = f"[{address}]" if ":" in address else address
    params = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{host}",
              libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: address,
              libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
              libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml}
    flags = (MIGRATE_FLAGS | (libvirt.VIR_MIGRATE_UNSAFE if unsafe else 0)
             | (libvirt.VIR_MIGRATE_TLS if tls else 0))
    dom.migrateToURI3(uri, params, flags)
    return True


async def across(moving: asyncio.Future[bool], *, name: str, host: str, limit: float,
                 abort: Callable[[], Awaitable[object]], log: Any) -> None:
    """Wait `limit` seconds for the move `moving` of domain `name` to host `host`; past it,
    `abort` it (libvirt resumes the guest here) unless it ends across just then.
    TemporaryError when the guest did not leave."""
    try:
        left = await asyncio.wait_for(asyncio.shield(moving), limit)
    except libvirt.libvirtError as e:  # the other host's errors too: not a dead libvirtd here
        raise TemporaryError(f"libvirt migrate of {name} to {host}: "
                             f"{e.get_error_message() or e}", delay=1.0) from None
    except TimeoutError:
        left = await _abort(moving, name=name, host=host, limit=limit, abort=abort, log=log)
    if not left:
        raise TemporaryError(f"the migration of {name} under way ended, and it runs on here")


async def _abort(moving: asyncio.Future[bool], *, name: str, host: str, limit: float,
                 abort: Callable[[], Awaitable[object]], log: Any) -> bool:
    moving.cancel()  # still queued behind other moves: it never starts
    log.warning("migration_aborted", domain=name, target=host,
                reason=f"not across within {limit:g}s; the guest runs on here")
    with contextlib.suppress(ClouddError):
        await abort()
    if not moving.cancelled():
        try:
            async with asyncio.timeout(ABORT_WAIT):
                if await asyncio.shield(moving):
                    return True  # it ended across just then
        except (libvirt.libvirtError, TimeoutError):
            pass
    raise TemporaryError(f"libvirt migrate: {name} was not across to {host} within "
                         f"{limit:g}s; aborted, it runs on here", delay=1.0)
