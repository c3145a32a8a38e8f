"""The agent's root tasks: named, guarded, and with one way to shut down.

After kopf's reactor: every long-lived activity of the agent (watchdog pings, the manifest
watcher, and later election, transport, host and node controllers) is a root task added by
name. Root tasks are meant to run until the agent stops; so a root task that raises, or that
returns early, is logged by name and triggers the same shutdown as SIGTERM. Shutdown cancels
every task and waits for them within `stop_timeout`; a task that ignores cancellation is
reported by name rather than waited on forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudd import log

TaskFactory = Callable[[], Awaitable[None]]

_log = log.get("runner")


@dataclass(frozen=True)
class RunOutcome:
    """Why the runner stopped."""

    #: What asked for the stop: a signal name, "request", or "task <name> failed".
    reason: str
    #: Root tasks that raised or returned early, by name, with their error.
    failed: tuple[tuple[str, str], ...] = ()
    #: Root tasks still running after stop_timeout (abandoned).
    stuck: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed and not self.stuck


class Runner:
    """Runs named root tasks until stop() or until one of them fails."""

    def __init__(self, *, stop_timeout: float = 10.0) -> None:
        self.stop_timeout = stop_timeout
        self._factories: dict[str, TaskFactory] = {}
        self._stop: asyncio.Event | None = None
        self._reason = ""
        self._running = False

    def add(self, name: str, factory: TaskFactory) -> None:
        """Register a root task; `factory()` returns the coroutine to run. Before run() only."""
        if self._running:
            raise RuntimeError(f"root task {name!r} added after the runner started")
        if name in self._factories:
            raise ValueError(f"root task {name!r} is already registered")
        self._factories[name] = factory

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def stop(self, reason: str = "request") -> None:
        """Ask for shutdown (idempotent; the first reason is kept). Call from the loop."""
        if not self._reason:
            self._reason = reason
        if self._stop is not None:
            self._stop.set()

    async def run(self, *, on_started: Callable[[], None] | None = None,
                  on_stopping: Callable[[], None] | None = None) -> RunOutcome:
        """Start every root task, wait for a stop or a failure, then stop them all."""
        self._running = True
        self._stop = asyncio.Event()
        if self._reason:
            self._stop.set()
        tasks: dict[asyncio.Task[Any], str] = {
            asyncio.create_task(self._guard(name, f), name=f"cloudd:{name}"): name
            for name, f in self._factories.items()}
        failed: list[tuple[str, str]] = []
        _log.info("runner_started", tasks=list(self._factories))
        if on_started is not None:
            on_started()
        stopper: asyncio.Task[Any] = asyncio.create_task(self._stop.wait(), name="cloudd:stop")
        pending: set[asyncio.Task[Any]] = set(tasks)
        while not self._stop.is_set():
            done, pending = await asyncio.wait(pending | {stopper},
                                               return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopper)
            for task in done - {stopper}:
                name = tasks[task]
                error = task.exception()
                why = f"{type(error).__name__}: {error}" if error else "returned early"
                failed.append((name, why))
                self.stop(f"task {name} failed")
        stopper.cancel()
        _log.info("runner_stopping", reason=self._reason, tasks=[tasks[t] for t in pending])
        if on_stopping is not None:
            on_stopping()
        for task in pending:
            task.cancel()
        stuck: tuple[str, ...] = ()
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.stop_timeout)
            stuck = tuple(sorted(tasks[t] for t in still))
            for task in pending - still:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    failed.append((tasks[task], f"{type(exc).__name__}: {exc}"))
            if stuck:
                _log.error("runner_tasks_stuck", tasks=list(stuck), timeout=self.stop_timeout)
        outcome = RunOutcome(self._reason, tuple(failed), stuck)
        _log.info("runner_stopped", reason=outcome.reason, ok=outcome.ok)
        return outcome

    async def _guard(self, name: str, factory: TaskFactory) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("root_task_failed", task=name)
            raise
        _log.error("root_task_returned", task=name)
