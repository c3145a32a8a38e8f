"""The node side of an agent: turns the leader's `RoleAssignment` into supervised services.

Theory of operation. The leader tells a node its role and peers (`assign`); the node keeps the
newest assignment (by term), converges the role in a background task (packages, files,
one-time preparation) and runs the role's services under a `Supervisor` whose state lives in
the node root. When only files changed (peers came or went), the services those files name
are reloaded, not restarted. A failed converge is reported ("failed") and retried with
exponential backoff, or after a `TemporaryError`'s own delay; nothing is retried inline.

The loop reports a `NodeReport` whenever the phase or a service changes, and at least every
`heartbeat` seconds: "converging" until every service has been RUNNING and ready once, then
"ready" or "degraded". The accepted assignment is kept in the node root, so an agent that
restarts converges at once and its Supervisor re-adopts the running processes (never a
second copy), without waiting for the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.config.agent import AgentSettings
from cloudd.config.model import Cloud
from cloudd.daemon.network.catalogue import (
    NodePhase,
    NodeReport,
    PeerInfo,
    RoleAssignment,
    ServiceReport,
)
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.base import Assignment, Peer, converge
from cloudd.providers.policy import PolicyConfig, State
from cloudd.providers.registry import Registry, default_registry
from cloudd.providers.service import ServiceSpec
from cloudd.providers.supervisor import Supervisor

ASSIGNMENT_FILE = "assignment.json"
#: How long stop_services waits for each service beyond its own stop grace, in seconds.
STOP_WITHIN = 60.0


def node_root(settings: AgentSettings, me: str) -> Path:
    """Where one node keeps everything: rendered files, secrets, services.json, assignment."""
    return Path(settings.state_dir) / "nodes" / me


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, mode)  # before the content: a secret is never readable by others
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def copy_secrets(cloud: Cloud, secrets_dir: Path) -> None:
    """Copy each of the cloud's secret files to `secrets_dir/<name>`, mode 0600."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    for name, source in sorted(cloud.secrets.items()):
        if not name or "/" in name or name.startswith("."):
            raise PermanentError(f"secret name {name!r} is not a plain file name")
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise PermanentError(f"secret {name!r}: cannot read {source}: {exc.strerror}") from None
        dest = secrets_dir / name
        with contextlib.suppress(FileNotFoundError):
            if dest.read_bytes() == data and dest.stat().st_mode & 0o777 == 0o600:
                continue
        _write_atomic(dest, data, 0o600)
    for left in secrets_dir.iterdir():  # a secret the manifest no longer names goes away
        if left.name not in cloud.secrets and left.is_file():
            left.unlink()


def _load_assignment(path: Path) -> RoleAssignment | None:
    try:
        raw = json.loads(path.read_text())
        peers = tuple(PeerInfo(**p) for p in raw.pop("peers"))
        return RoleAssignment(**raw, peers=peers)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.get("nodeside").error("node.assignment_unreadable", path=str(path), error=str(exc))
        return None


class NodeSide:
    """The part of an agent that runs on a node. All methods run on the agent's event loop."""

    def __init__(self, *, me: str, cloud: Cloud, settings: AgentSettings,
                 report: Callable[[NodeReport], None], registry: Registry | None = None,
                 clock: Callable[[], float] = time.time, heartbeat: float = 2.0,
                 exec_prefix: tuple[str, ...] = (), rng: random.Random | None = None) -> None:
        self.me, self.cloud, self.settings = me, cloud, settings
        self.root = node_root(settings, me)
        self._report, self._clock, self.heartbeat = report, clock, heartbeat
        self._registry = registry if registry is not None else default_registry()
        self._exec_prefix, self._rng = exec_prefix, rng or random.Random()
        s = settings.supervisor
        self._policy = PolicyConfig(start_grace=s.start_grace, stop_grace=s.stop_grace,
                                    fatal_cooldown=s.fatal_cooldown)
        self.log = log.get("nodeside", cloud=cloud.name, node=me)
        self._wake = asyncio.Event()
        self._sup: Supervisor | None = None
        self._specs: tuple[ServiceSpec, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._applied: tuple[Any, ...] | None = None  # the converge key last done
        self._pending_reload: set[str] = set()
        self._error = ""
        self._failures = 0
        self._retry_at = 0.0
        self._failed_key: tuple[Any, ...] | None = None
        self._was_ready = False
        self._stopped = self._halted = self._resume = self._detached = False
        self._last: tuple[Any, ...] | None = None
        self._last_sent = float("-inf")
        self._phase, self._since = "", clock()
        saved = _load_assignment(self.root / ASSIGNMENT_FILE)
        ok = saved is not None and saved.node == me and saved.cloud == cloud.name
        self._current: RoleAssignment | None = saved if ok else None
        self._saved = self._current
        self._term = self._current.term if self._current else 0

    # ---- inputs -------------------------------------------------------------------------
    def update_cloud(self, cloud: Cloud) -> None:
        """A new manifest generation: converge again with its settings and secrets."""
        if cloud.name != self.cloud.name:
            self.log.error("node.cloud_refused", other=cloud.name)
            return
        if cloud.digest != self.cloud.digest:
            self.log.info("node.cloud_updated", generation=cloud.digest)
        self.cloud = cloud
        self._wake.set()

    def assign(self, a: RoleAssignment) -> None:
        """Take an assignment from the leader; returns at once (the loop does the work)."""
        if a.node != self.me or a.cloud != self.cloud.name:
            self.log.warning("node.assignment_refused", peer_node=a.node, peer_cloud=a.cloud,
                             term=a.term, why="meant for another node or cloud")
            return
        if a.term < self._term:
            self.log.info("node.assignment_stale", term=a.term, highest=self._term)
            return
        self._term = a.term
        if a == self._current:
            return
        # Told to run again after stop_services: the loop starts afresh once the stop is done.
        self._resume = self._stopped
        self.log.info("node.assignment", term=a.term, role=a.role, generation=a.generation,
                      peers=[p.node for p in a.peers if p.healthy])
        self._current = a
        self._wake.set()

    # ---- the root task ------------------------------------------------------------------
    async def run(self) -> None:
        """Converge, supervise and report until cancelled; then detach (services keep running)."""
        try:
            await self._loop()
        finally:
            if not self._detached:
                self.detach()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            if self._detached or self._current is None:
                await self._wait(self.heartbeat)
                continue
            self._persist()
            a = self._current
            if self._resume and self._halted:
                self.log.info("node.resumed", term=a.term, role=a.role)
                self._stopped = self._halted = self._resume = False
                self._sup, self._applied = None, None
            converge_at = self._converge_at(a)
            if converge_at is not None and now >= converge_at:
                self._task = asyncio.create_task(self._converge(a, self.cloud),
                                                 name=f"cloudd:converge:{self.me}")
                converge_at = None
            self._maybe_report(now)
            due = self._last_sent + self.heartbeat
            if converge_at is not None:
                due = min(due, converge_at)
            await self._wait(max(due - now, 0.01))

    def _key(self, a: RoleAssignment) -> tuple[Any, ...]:
        return (a.role, a.address, a.generation, a.peers, self.cloud.digest)

    def _converge_at(self, a: RoleAssignment) -> float | None:
        """When to converge `a` next (loop time), or None when there is nothing to do."""
        key = self._key(a)
        if self._stopped or self._task is not None or key == self._applied:
            return None
        # A new assignment or manifest is tried at once; the same one again after backoff.
        return self._retry_at if key == self._failed_key else 0.0

    async def _wait(self, within: float) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        sup = self._sup
        if sup is not None and sup.units and not self._detached and self._last is not None:
            # Any service change wakes us: wait_for re-checks on every change of any unit.
            first, last = next(iter(sup.units)), self._last[2]
            waits.append(asyncio.ensure_future(sup.wait_for(
                first, lambda _: self._services() != last, within=within)))
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    # ---- converge -----------------------------------------------------------------------
    def _assignment(self, a: RoleAssignment, cloud: Cloud) -> Assignment:
        return Assignment(cloud=cloud.name, node=self.me, role=a.role, address=a.address,
                          root=self.root, secrets_dir=self.root / "secrets",
                          settings=cloud.settings.model_dump(),
                          peers=tuple(Peer(p.node, p.role, p.address, p.healthy)
                                      for p in a.peers),
                          exec_prefix=self._exec_prefix)

    async def _converge(self, a: RoleAssignment, cloud: Cloud) -> None:
        key = self._key(a)
        try:
            assignment = self._assignment(a, cloud)
            provider = self._registry.get(cloud.type)
            await asyncio.to_thread(copy_secrets, cloud, assignment.secrets_dir)
            done = await converge(provider, assignment)
            self._pending_reload |= set(done.changes.reload)
            await self._supervise(done.services)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider's bug must not end supervision
            self._failures += 1
            delay = exc.delay if isinstance(exc, TemporaryError) else self._backoff()
            self._retry_at = asyncio.get_running_loop().time() + delay
            self._failed_key = key
            self._error = (str(exc) if isinstance(exc, ClouddError)
                           else f"{type(exc).__name__}: {exc}")
            self.log.warning("node.converge_failed", role=a.role, term=a.term, error=self._error,
                             failures=self._failures, retry_in=round(delay, 3),
                             exc_info=not isinstance(exc, ClouddError))
        else:
            if self._error:
                self.log.info("node.converge_recovered", role=a.role, failures=self._failures)
            self._applied, self._error, self._failures = key, "", 0
        finally:
            self._task = None
            self._wake.set()

    def _backoff(self) -> float:
        r = self.settings.reconcile
        delay = min(r.backoff_max, r.backoff_base * 2.0 ** (self._failures - 1))
        return delay * (1 - 0.2 * self._rng.random())

    async def _supervise(self, specs: tuple[ServiceSpec, ...]) -> None:
        """Start the services, or restart them when their specs changed, or reload them."""
        if self._sup is not None and specs != self._specs:
            self.log.info("node.services_replaced", services=[s.name for s in specs])
            await self._sup.stop(within=STOP_WITHIN)
            self._sup.detach()
            self._sup = None
        if self._sup is None:
            sup = Supervisor(specs, state_dir=self.root, defaults=self._policy, node=self.me)
            self._sup, self._specs, self._was_ready = sup, specs, False
            await sup.start()
            # Spawned now: they read the new files. Adopted: they run with what they read.
            self._pending_reload &= {n for n, st in sup.status().items() if st.adopted}
        for name in sorted(self._pending_reload):
            st = self._sup.status().get(name)
            # Without a process it reads its files when it next starts.
            if st is not None and st.pid is not None and st.state in (State.RUNNING,
                                                                     State.STARTING):
                await self._sup.reload(name)
            self._pending_reload.discard(name)

    def _persist(self) -> None:
        a = self._current
        if a is None or a == self._saved:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.root / ASSIGNMENT_FILE, json.dumps(asdict(a)).encode(), 0o600)
        except OSError as exc:  # only a restart's head start is lost: keep supervising
            self.log.error("node.assignment_unsaved", path=str(self.root), error=str(exc))
        self._saved = a

    # ---- reports ------------------------------------------------------------------------
    def _services(self) -> tuple[ServiceReport, ...]:
        if self._sup is None:
            return ()
        # A service without a readiness probe is ready once RUNNING (start grace passed).
        probed = {s.name for s in self._specs if s.readiness is not None}
        return tuple(ServiceReport(s.name, s.state.value, s.pid,
                                   s.ready or (s.state is State.RUNNING and s.name not in probed),
                                   s.starts, s.fatal_count, s.last_error)
                     for s in self._sup.status().values())

    def _phase_now(self, services: tuple[ServiceReport, ...]) -> tuple[str, str]:
        if self._stopped:
            return ("stopped" if self._halted else "stopping"), ""
        if self._error:
            return "failed", self._error
        if self._sup is None:
            return "converging", ""
        if all(s.state == State.RUNNING and s.ready for s in services):
            self._was_ready = True
            return "ready", ""
        waiting = "; ".join(f"{s.name} {s.state}" + (f" ({s.last_error})" if s.last_error
                                                      else "")
                            for s in services if not (s.state == State.RUNNING and s.ready))
        return ("degraded" if self._was_ready else "converging"), waiting

    def view(self) -> NodeReport:
        """The node's phase and services now (what the next report would say)."""
        a = self._current
        services = self._services()
        phase, message = self._phase_now(services) if a is not None else ("unassigned", "")
        if phase != self._phase:
            if self._phase:
                self.log.info("node.phase", phase=phase, was=self._phase, why=message)
            self._phase, self._since = phase, self._clock()
        return NodeReport(node=self.me, term=a.term if a else self._term,
                          generation=a.generation if a else "", phase=NodePhase(phase),
                          message=message, services=services, since=self._since)

    def _maybe_report(self, now: float) -> None:
        if self._current is None:
            return
        r = self.view()
        sig = (r.phase, r.message, r.services, r.term, r.generation)
        if sig == self._last and now < self._last_sent + self.heartbeat:
            return
        self._last, self._last_sent = sig, now
        try:
            self._report(r)
        except Exception:  # the transport's problem; the next heartbeat tries again
            self.log.exception("node.report_failed")

    # ---- shutdown -----------------------------------------------------------------------
    async def cleanup(self, service: str) -> None:
        """The operator's `cleanup NODE/SERVICE`: forget the service's failures and start it
        again now (a FATAL service is retried at once instead of after its cool-down)."""
        if self._sup is None or service not in self._sup.status():
            known = ", ".join(sorted(self._sup.status())) if self._sup else "none"
            raise PermanentError(f"{self.me} runs no service {service!r} (services: {known})")
        await self._sup.restart(service)

    async def stop_services(self) -> None:
        """`ensure: stopped`: stop every service of the node, in reverse dependency order."""
        self._stopped, self._resume = True, False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sup, a = self._sup, self._current
        if sup is None and a is not None:
            # Nothing converged yet in this agent: adopt what an earlier one left, to stop it.
            try:
                role = self._registry.get(self.cloud.type).role(a.role)
                specs = role.services(self._assignment(a, self.cloud))
            except ClouddError as exc:
                self.log.error("node.stop_failed", error=str(exc))
                specs = ()
            if specs:
                sup = Supervisor(specs, state_dir=self.root, defaults=self._policy, node=self.me)
                await sup.start(names=[])
                self._sup, self._specs = sup, specs
        if sup is not None:
            await sup.stop(within=STOP_WITHIN)
        self._halted = True
        self.log.info("node.services_stopped", services=[s.name for s in self._specs])
        self._wake.set()

    def detach(self) -> None:
        """Agent shutdown: stop supervising and reporting, leave every service running."""
        self._detached = True
        if self._task is not None:
            self._task.cancel()
        if self._sup is not None:
            # Forgotten, not only detached: a later stop_services adopts the processes afresh.
            self._sup.detach()
            self._sup = None
        self.log.info("node.detached")
