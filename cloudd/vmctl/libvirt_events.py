"""libvirt's event implementation for the whole process: libvirtaio on a loop of its own.

libvirt accepts one event implementation per process, for the life of the process, while
asyncio loops come and go (a loop per test; a daemon restarting its loop). So libvirtaio runs
on its own long-lived loop in a daemon thread (`event_loop`), and each backend hops callbacks
to its caller's loop with call_soon_threadsafe (tens of microseconds).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirtaio


class _EventImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    """libvirtaio, woken up when libvirt touches it from another thread.

    libvirt calls the add/update hooks from whichever thread is inside the library: our worker
    thread too, when it reads an event off the socket during a call. libvirtaio then schedules
    on the loop without waking it, so the event could wait for the loop's next wake-up; a
    thread-safe no-op callback wakes it at once.
    """

    def _wake(self) -> None:
        if threading.get_ident() != _events_thread_id:
            self.loop.call_soon_threadsafe(lambda: None)

    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        watch: int = super()._add_handle(fd, event, cb, opaque)
        self._wake()
        return watch

    def _update_handle(self, watch: int, event: int) -> None:
        super()._update_handle(watch, event)
        self._wake()

    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        timer: int = super()._add_timeout(timeout, cb, opaque)
        self._wake()
        return timer

    def _update_timeout(self, timer: int, timeout: int) -> None:
        super()._update_timeout(timer, timeout)
        self._wake()


_events_lock = threading.Lock()
_events_loop: asyncio.AbstractEventLoop | None = None
_events_thread_id = -1


def event_loop() -> asyncio.AbstractEventLoop:
    """The process-wide loop that runs libvirt's event implementation (libvirtaio).

    libvirt accepts one event implementation per process, for the life of the process, while
    asyncio loops come and go (a loop per test; a daemon restarting its loop). So libvirtaio
    runs on its own long-lived loop in a daemon thread, and each backend hops callbacks to its
    caller's loop with call_soon_threadsafe (tens of microseconds).
    """
    global _events_loop, _events_thread_id
    with _events_lock:
        if _events_loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                global _events_thread_id
                asyncio.set_event_loop(loop)
                _events_thread_id = threading.get_ident()
                _EventImpl(loop=loop).register()
                ready.set()
                loop.run_forever()

            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            ready.wait()
            _events_loop = loop
        return _events_loop
