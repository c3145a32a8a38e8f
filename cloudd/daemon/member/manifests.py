"""The agent's manifest folder, as the member and the operator's commands write into it, and
where the manifests handed to this agent are checked.

A manifest that arrives from outside the folder (the leader's generation, a seed for a member
that has none, an operator's `apply` over the wire or through the local API) is validated
exactly as a file in the folder would be, then written into the folder atomically and
durably, over the file that declares that cloud now (one cloud never has two files), and the
folder's watcher is asked to rescan: the manifest then takes the same path as a file an
operator dropped there. An invalid manifest raises `ConfigError` with its problems and writes
nothing.

Checking a manifest is the costliest thing a peer can ask of an agent, and a flood of them
must not stall the loop that renews the leader's leases (every 100 ms, while SWIM wants a
probe answered within 40 ms). So, three bounds:
- size: a text over `MAX_MANIFEST_BYTES` is refused on the loop, before anything parses it;
- place: checks run in a worker process (`Checker`), not in a thread. The YAML reader is pure
  Python and holds the GIL, and the loop's thread waits for the GIL after every system call:
  while one thread parsed, a loop round trip went from 0.2 ms to 5 ms (60 ms at worst; a
  worker process left it as it was; measured here, 2 cores). The worker runs at a lower
  priority, starts with the first check and stops after `IDLE` seconds without one, or
  when the agent stops (`Checker.close`);
- number: at most `MAX_CHECKS` checks are admitted at once (running or waiting their turn);
  one more is turned away at once as busy (a TemporaryError: try again later), so that a
  flood queues nothing that grows.
The leader's own generation (`trusted`: one per generation, from the leader of the term in
force, and one at a time per connection) is checked in a thread instead, never turned away:
a member that turned it away would not be offered it again, and a node's agent inside a slow
VM should not start a second Python for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cloudd import log
from cloudd.config import sources
from cloudd.config.manifest import RECEIVED, load_cloud_text
from cloudd.config.model import Cloud
from cloudd.config.sources import Origin
from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES, received_too_large
from cloudd.durable import write_durable
from cloudd.errors import ConfigError, Problem, TemporaryError
from cloudd.providers.catalog import catalog

__all__ = ["MAX_MANIFEST_BYTES", "Checker", "ManifestFolder", "check_manifest"]

#: Private: a manifest received for a pool host holds its cloud's secrets.
MODE = 0o600
#: Checks admitted at once, running or waiting for the worker. A maximal manifest takes about
#: a second; four is a few seconds' backlog, and room for the odd legitimate burst (an
#: operator's apply while another host hands over a generation).
MAX_CHECKS = 4
#: Seconds without a check after which the worker process stops (it holds ~40 MB;
#: multiprocessing's resource tracker, ~12 MB, stays from the first check on).
IDLE = 60.0
#: How much nicer than the agent the worker runs: on a busy host the agent's own loop, which
#: renews leases, comes first.
NICE = 10

T = TypeVar("T")
_log = log.get("manifests")


def check_manifest(text: str, *, with_template: bool = True) -> Cloud:
    """Validate a manifest's text received from outside this agent's folder: it must be
    self-contained, and nothing in it makes this agent read a file (ConfigError if not)."""
    return load_cloud_text(text, catalog(), origin=Origin.WIRE, with_template=with_template)


# -- what crosses to the worker and back -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Checked:
    """A check's outcome as the worker hands it back: the cloud (`plain`), or its problems."""

    cloud: Cloud | None = None
    problems: tuple[Problem, ...] = ()


def plain(cloud: Cloud) -> Cloud:
    """`cloud` with its read-only mappings made dicts, so that it can be pickled."""
    return dataclasses.replace(cloud, secrets=dict(cloud.secrets),
                               role_secrets=dict(cloud.role_secrets),
                               template_values=dict(cloud.template_values))


def frozen(cloud: Cloud) -> Cloud:
    """`plain`'s inverse: the mappings read-only again."""
    return dataclasses.replace(cloud, secrets=MappingProxyType(dict(cloud.secrets)),
                               role_secrets=MappingProxyType(dict(cloud.role_secrets)),
                               template_values=MappingProxyType(dict(cloud.template_values)))


def check_job(text: str, with_template: bool) -> Checked:
    """The check, as the worker runs it."""
    try:
        return Checked(plain(check_manifest(text, with_template=with_template)))
    except ConfigError as e:
        return Checked(problems=tuple(e.problems))


def _worker_started(key: bytes) -> None:
    """In the worker: digest secrets as the agent does, yield the CPU to it, and leave Ctrl-C
    to the agent (which stops the worker itself)."""
    sources.use_digest_key(key)
    os.nice(NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- the checker -----------------------------------------------------------------------------

class Checker:
    """Runs manifest work off the event loop: bounded work in one worker process (a thread
    when not `isolate`d), trusted work in a thread of its own."""

    def __init__(self, *, limit: int = MAX_CHECKS, idle: float = IDLE,
                 isolate: bool = True) -> None:
        self.limit, self.idle, self.isolate = limit, idle, isolate
        #: bounded jobs admitted now (running or waiting for the worker)
        self.admitted = 0
        #: jobs turned away busy since the checker was last idle
        self.turned_away = 0
        self._worker: Executor | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="manifest-check")
        self._retire: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """Whether the worker is up (it starts with a check, and stops when idle)."""
        return self._worker is not None

    def _pool(self) -> Executor:
        if self._worker is None:
            self._worker = (ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started, initargs=(sources.digest_key(),))
                if self.isolate else ThreadPoolExecutor(1, thread_name_prefix="manifest-worker"))
        return self._worker

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the worker (both picklable, `fn` at a module's top level), or
        TemporaryError at once when `limit` jobs are admitted already."""
        if self.admitted >= self.limit:
            self.turned_away += 1
            if self.turned_away == 1:
                _log.warning("manifest_check_refused", reason=(
                    f"busy: {self.admitted} manifests are being checked; more are turned "
                    "away until one is done"))
            raise TemporaryError(f"busy: {self.admitted} manifests are being checked here; "
                                 "try again in a moment")
        self.admitted += 1
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        loop = asyncio.get_running_loop()
        pool = self._pool()
        try:
            return await loop.run_in_executor(pool, functools.partial(fn, *args))
        except BrokenProcessPool:
            # The worker died (killed, out of memory): the next check starts another (and a
            # job of the same dead worker must not stop that one).
            if self._worker is pool:
                self._stop_worker()
            raise TemporaryError("the worker checking manifests stopped; try again") from None
        finally:
            # A cancelled caller gives its place back at once; its job, if the worker had
            # taken it already, still runs to its end: at most the worker's one job and its
            # one queued call beyond `limit`.
            self.admitted -= 1
            if self.admitted == 0:
                self._idle(loop)

    async def run_trusted(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in this checker's thread, never turned away (the caller bounds it)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(fn, *args))

    def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.turned_away:
            _log.info("manifest_checks_turned_away", count=self.turned_away,
                      reason="busy while earlier checks ran")
            self.turned_away = 0
        if self._worker is not None:
            self._retire = loop.call_later(self.idle, self._stop_worker)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker and the thread (safe to call twice)."""
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        self._stop_worker()
        self._thread.shutdown(wait=False, cancel_futures=True)


_SHARED: Checker | None = None


def shared_checker() -> Checker:
    """The checker of a folder made without one (the agent makes and closes its own)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Checker()
    return _SHARED


# -- the folder ------------------------------------------------------------------------------

class ManifestFolder:
    """Where this agent's manifests live (`folder`), and how to have them read again."""

    def __init__(self, folder: Path, *, locate: Callable[[str], Path | None],
                 rescan: Callable[[], None], checker: Checker | None = None) -> None:
        self.folder = folder
        self._locate, self._rescan = locate, rescan
        self.checker = checker if checker is not None else shared_checker()

    async def check(self, text: str, *, with_template: bool = True,
                    trusted: bool = False) -> Cloud:
        """The cloud `text` declares, or ConfigError; TemporaryError when busy (not for a
        `trusted` text: the leader's own generation)."""
        # surrogatepass: a lone surrogate must be measured here, and refused by the loader
        too_large = received_too_large(len(text.encode("utf-8", errors="surrogatepass")),
                                       RECEIVED)
        if too_large is not None:
            raise too_large
        checked = await (self.checker.run_trusted if trusted else self.checker.run)(
            check_job, text, with_template)
        if checked.cloud is None:
            raise ConfigError(list(checked.problems))
        return frozen(checked.cloud)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Other manifest work (YAML in and out), bounded as a check is."""
        return await self.checker.run(fn, *args)

    def _write(self, text: str, cloud: str) -> Path:
        path = self._locate(cloud) or self.folder / f"{cloud}.yaml"
        write_durable(path, text, mode=MODE)
        return path

    async def install(self, text: str, cloud: str) -> Path:
        """Write a validated manifest for `cloud`; the watcher picks it up at once."""
        path = await asyncio.to_thread(self._write, text, cloud)
        self._rescan()
        return path
