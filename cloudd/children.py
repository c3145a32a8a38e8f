"""The one rule for a command cloudd runs from the event loop: it is ended on every way out.

asyncio closes a child's transport only once it has seen the child exit *and* read its pipes
to their end. A helper that leaves before that (its bound passed, its task cancelled, an
error) leaves the child running or unreaped and the transport open; the garbage collector
closes it later, perhaps once its event loop is closed ("Event loop is closed", ignored in
`BaseSubprocessTransport.__del__`). The common case is a second cancellation: a TaskGroup
cancels a sibling that is already killing its command after its own timeout, and the
`await` that would reap it is cut short.

So a helper starts its command in a session of its own (`start_new_session=True`), runs it
inside `ended(proc)`, and bounds it with `asyncio.timeout` in its own task: `wait_for` runs
the awaited call in a task of its own, and in Python 3.11 a second cancellation leaves that
task behind, still reading the pipes. Leaving the block, whatever the way, kills the session
if the command still runs, reads what is left of its pipes, and waits for its end; a
cancellation that comes meanwhile is held until then and raised after, so it is never lost
and never cuts the reaping short. The wait is bounded by the kill, SIGKILL to the whole
session, as long as nothing the command started left its session with the pipes open (a
daemon that does holds the reaping until it closes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator


async def reap(proc: asyncio.subprocess.Process, *, drain: bool = True) -> None:
    """Kill `proc`'s session (and `proc`) if it still runs, then wait until it exited and its
    pipes closed, through any cancellation (raised once it is reaped). `drain`: read what is
    left of its pipes here; False when a task of the caller's reads them to their end."""
    if proc.returncode is None:
        # Its session: what it started goes too and cannot hold the pipes open.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    end = asyncio.ensure_future(proc.communicate() if drain else proc.wait())
    cancelled = False
    while not end.done():
        try:
            await asyncio.shield(end)
        except asyncio.CancelledError:
            cancelled = True  # held: the child is reaped first
    end.result()
    if cancelled:
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def ended(proc: asyncio.subprocess.Process, *,
                drain: bool = True) -> AsyncIterator[asyncio.subprocess.Process]:
    """`proc`, reaped (see `reap`) however the block is left: returned, raised, cancelled."""
    try:
        yield proc
    finally:
        await reap(proc, drain=drain)
