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
and never cuts the reaping short. The wait is bounded: the kill, SIGKILL to the whole session,
ends the command at once, and a process it started that left its session with the pipes
open (a daemon that did not close them) is given `PIPES_WITHIN` seconds before the pipes are
closed on this side, so that it can never hold a cancellation for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from typing import Any

from cloudd import log

#: Seconds a killed command's pipes may stay open (held by something it started that left its
#: session) before they are closed on this side.
PIPES_WITHIN = 10.0

_log = log.get("children")


async def reap(proc: asyncio.subprocess.Process, *,
               reading: asyncio.Future[Any] | None = None) -> None:
    """Kill `proc`'s session (and `proc`) if it still runs, then wait until it exited and its
    pipes closed, through any cancellation (raised once it is reaped). What is left of its
    pipes is read here, unless `reading`, a task of the caller's, reads them to their end:
    pipes closed on this side end it with what it read."""
    if proc.returncode is None:
        # Its session: what it started goes too and cannot hold the pipes open. `proc` is
        # in its group (a session's leader cannot leave it): `proc.kill()` besides would poll
        # it, reaping it before asyncio's child watcher does ("Unknown child process").
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # not a session of its own, or gone already
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    end = asyncio.ensure_future(proc.communicate() if reading is None
                                else asyncio.gather(reading, proc.wait()))
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PIPES_WITHIN
    cancelled = await _held(end, until=give_up)
    if not end.done():
        # The command is dead (SIGKILL to its session); what holds its pipes left the session.
        # Closing the transport ends the reading with what was read; the process is reaped.
        _log.warning("child_pipes_held", pid=proc.pid, program=_program(proc),
                     within=PIPES_WITHIN)
        proc._transport.close()  # type: ignore[attr-defined]  # no public way to stop reading
        cancelled |= await _held(end, until=None)  # the pipes are closed: it ends now
    if cancelled:  # before any error of the reading: a cancellation is never lost
        raise asyncio.CancelledError
    end.result()


def _program(proc: asyncio.subprocess.Process) -> str:
    """The command's program, for the log."""
    popen = proc._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
    return str(popen.args[0]) if popen is not None else "?"


async def _held(end: asyncio.Future[Any], *, until: float | None) -> bool:
    """Wait for `end` (up to the loop's time `until`), holding any cancellation: whether one
    came."""
    loop = asyncio.get_running_loop()
    cancelled = False
    while not end.done():
        left = None if until is None else until - loop.time()
        if left is not None and left <= 0:
            break
        try:
            await asyncio.wait({end}, timeout=left)
        except asyncio.CancelledError:
            cancelled = True  # held: the child is reaped first
    return cancelled


@contextlib.asynccontextmanager
async def ended(proc: asyncio.subprocess.Process, *, reading: asyncio.Future[Any] | None = None
                ) -> AsyncIterator[asyncio.subprocess.Process]:
    """`proc`, reaped (see `reap`) however the block is left: returned, raised, cancelled."""
    try:
        yield proc
    finally:
        await reap(proc, reading=reading)


async def run(argv: tuple[str, ...], *, within: float | None = None,
              env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run `argv` (stdin /dev/null, in a session of its own) to its end: (exit status, its
    output and errors). Past `within` seconds, or cancelled, its whole session is killed;
    past `within`: (-1, a sentence)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=None if env is None else dict(env),
        start_new_session=True)
    async with ended(proc):
        try:
            async with asyncio.timeout(within):
                out, _ = await proc.communicate()
        except TimeoutError:
            return -1, f"{argv[0]} ran past {within:g}s"
    return proc.returncode or 0, out.decode(errors="replace")
