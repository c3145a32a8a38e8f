"""The asyncio runner of a node's services: feeds `policy.step` and performs what it returns.

Each service runs in its own session and process group (its pid is its group id), as its user,
so that it survives the agent and can be signalled as a whole. Exits are noticed through a
pidfd watched by the event loop, the same way for our own children and for processes adopted
after an agent restart (no polling, no SIGCHLD handler). Services start in dependency order,
each once all its dependencies are RUNNING (which includes readiness), and stop in reverse.

State and counters go to `<state_dir>/services.json` after every change; a new agent adopts a
process whose pid AND start time match the record, and otherwise cleans up what is left of it
before starting it afresh, so there is never a second copy.

A service's output goes to its `log_path`, opened by root: only in a folder nobody but the
agent can write and never through a link (`rolefiles.open_log`). A refused log is logged
(`service_log_refused`) and the service runs with its output in the agent's own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import signal
import subprocess
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cloudd import log
from cloudd.errors import ConfigError, Problem, TemporaryError
from cloudd.providers import policy, procstate, rolefiles
from cloudd.providers.policy import PolicyConfig, State
from cloudd.providers.probes import ProbeOutcome, probe_loop
from cloudd.providers.service import ServiceSpec

_SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ServiceStatus:
    """What `inspect` shows about one service."""

    name: str
    state: State
    pid: int | None
    ready: bool
    starts: int
    fatal_count: int
    last_error: str
    adopted: bool


def policy_for(spec: ServiceSpec, defaults: PolicyConfig) -> PolicyConfig:
    """The policy of one service: the spec's own times and probes over the node's defaults."""
    return replace(defaults, start_grace=spec.start_grace, stop_grace=spec.stop_grace,
                   has_readiness=spec.readiness is not None,
                   liveness_threshold=(spec.liveness.failure_threshold if spec.liveness
                                       else defaults.liveness_threshold))


def dependency_order(specs: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Specs with every dependency before its dependents; bad names and cycles refused."""
    by_name = {s.name: s for s in specs}
    problems = [Problem("<services>", None, None, f"{s.name}.depends_on",
                        f"unknown service {d!r}")
                for s in specs for d in s.depends_on if d not in by_name]
    if len(by_name) != len(specs):
        problems.append(Problem("<services>", None, None, "name", "service names repeat"))
    if problems:
        raise ConfigError(problems)
    done: dict[str, ServiceSpec] = {}
    visiting: list[str] = []

    def visit(spec: ServiceSpec) -> None:
        if spec.name in done:
            return
        if spec.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(spec.name):], spec.name])
            raise ConfigError([Problem("<services>", None, None, f"{spec.name}.depends_on",
                                       f"dependency cycle: {cycle}")])
        visiting.append(spec.name)
        for dep in spec.depends_on:
            visit(by_name[dep])
        visiting.pop()
        done[spec.name] = spec

    for spec in specs:
        visit(spec)
    return list(done.values())


def _popen(spec: ServiceSpec) -> tuple[subprocess.Popen[bytes], str | None]:
    """Start the process (blocking: run in a worker thread). Raises on a bad user or binary.

    Also returns why its log was refused, if it was: the service then runs with its output in
    the agent's own log rather than not at all (`rolefiles.open_log`)."""
    try:
        pw = pwd.getpwnam(spec.user)
    except KeyError:
        raise OSError(f"no such user {spec.user!r}") from None
    ids: dict[str, object] = {}
    if pw.pw_uid != os.geteuid():
        if os.geteuid() != 0:
            raise OSError(f"cannot run as {spec.user!r}: the agent is not root")
        ids = {"user": pw.pw_uid, "group": pw.pw_gid,
               "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}
    env = {"PATH": _DEFAULT_PATH, "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    env.update(dict(spec.env))
    out, refused = None, None
    if spec.log_path:
        try:
            out = rolefiles.open_log(Path(spec.log_path))
        except (rolefiles.RoleFileRefused, OSError) as exc:
            refused = str(exc)
    try:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            spec.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=spec.cwd, env=env,
            start_new_session=True, close_fds=True, **ids)
        return proc, refused
    finally:
        if out is not None:
            os.close(out)


def _signal_session(sid: int, sig: int) -> None:
    """Signal the service's group and anything else left in its session, each process once.

    A second TERM would run a service's handler twice (it may be on its way out already).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, sig)
    for pid in procstate.session_members(sid, outside_group=True):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _wait_pidfd(pidfd: int) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)


async def _wait_session_empty(sid: int, within: float) -> bool:
    """Wait (on pidfds) until no process is left in session `sid`; False on timeout."""
    fds = []
    for pid in procstate.session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    if not fds:
        return True
    try:
        if fds:
            waits = [asyncio.ensure_future(_wait_pidfd(fd)) for fd in fds]
            _done, pending = await asyncio.wait(waits, timeout=within)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                return False
    finally:
        for fd in fds:
            os.close(fd)
    return not procstate.session_members(sid)


class _Unit:
    """One service: its policy state, its process, its timer and its probes."""

    def __init__(self, spec: ServiceSpec, cfg: PolicyConfig, sup: Supervisor) -> None:
        self.spec, self.cfg, self.sup = spec, cfg, sup
        self.st = policy.ServiceState()
        self.start_time: int | None = None
        self.adopted = False
        self.log = log.get("supervisor", node=sup.node, service=spec.name)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probes: list[asyncio.Task[None]] = []

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.spec.name, self.st.state, self.st.pid, self.st.ready,
                             self.st.starts, self.st.fatal_count, self.st.last_error,
                             self.adopted)

    def record(self) -> procstate.ProcRecord:
        return procstate.ProcRecord(self.spec.name, self.st.state.value, self.st.pid,
                                    self.start_time if self.st.pid else None, self.st.starts,
                                    self.st.fatal_count, self.st.last_error)

    def feed(self, event: policy.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            new, actions = policy.step(self.st, event, now=loop.time(), cfg=self.cfg,
                                       rng=self.sup.rng)
        except policy.IllegalTransition as exc:  # a bug here; keep supervising the rest
            self.log.error("service.illegal_event", error=str(exc))
            return
        changed, self.st = new != self.st, new
        for action in actions:
            if isinstance(action, policy.Report):
                self.log.info("service.state", state=action.state.value, pid=new.pid,
                              why=action.message, starts=new.starts,
                              fatal_count=new.fatal_count)
            elif isinstance(action, policy.Spawn):
                self._spawn_task(self._spawn())
            elif isinstance(action, policy.KillGroup) and new.pid is not None:
                _signal_session(new.pid, _SIGNALS[action.signal])
            elif isinstance(action, policy.WakeAt):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(action.at, self.feed, policy.Tick())
        if changed:
            self.sup.changed()

    def _spawn_task(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        try:
            proc, refused = await asyncio.to_thread(_popen, self.spec)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.feed(policy.SpawnFailed(str(exc)))
            return
        if refused is not None:
            self.log_refused(refused)
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError as exc:  # cannot watch it: do not leave an unwatched copy behind
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            self.feed(policy.SpawnFailed(f"cannot watch pid {proc.pid}: {exc}"))
            return
        self.start_time, self.adopted = procstate.proc_start_time(proc.pid), False
        self.feed(policy.Spawned(proc.pid))
        self._watch(proc.pid, pidfd, proc)

    def log_refused(self, reason: str) -> None:
        self.log.warning("service_log_refused", path=self.spec.log_path, reason=reason,
                         output="the agent's log")

    def adopt(self, rec: procstate.ProcRecord) -> bool:
        """Take over a process of this service left by an earlier agent; False if it is gone."""
        assert rec.pid is not None and rec.start_time is not None
        try:
            pidfd = os.pidfd_open(rec.pid)
        except ProcessLookupError:
            return False
        # Checked after opening the pidfd: the fd now pins this very process.
        if not procstate.is_same_process(rec.pid, rec.start_time):
            os.close(pidfd)
            return False
        self.st = replace(self.st, starts=rec.starts, fatal_count=rec.fatal_count)
        self.start_time, self.adopted = rec.start_time, True
        self.feed(policy.Adopted(rec.pid))
        self._watch(rec.pid, pidfd, None)
        return True

    def _watch(self, pid: int, pidfd: int, proc: subprocess.Popen[bytes] | None) -> None:
        for spec, liveness in ((self.spec.liveness, True), (self.spec.readiness, False)):
            if spec is not None:
                self._probes.append(asyncio.ensure_future(probe_loop(
                    spec, self._prober(pid, liveness=liveness))))
        self._spawn_task(self._await_exit(pid, pidfd, proc))

    def _prober(self, pid: int, *, liveness: bool) -> Callable[[ProbeOutcome], None]:
        def report(outcome: ProbeOutcome) -> None:
            if self.st.pid == pid:
                self.feed(policy.ProbeResult(liveness, outcome.ok, outcome.detail))
        return report

    async def _await_exit(self, pid: int, pidfd: int,
                          proc: subprocess.Popen[bytes] | None) -> None:
        try:
            await _wait_pidfd(pidfd)
        finally:
            os.close(pidfd)
        code: int | None = None
        if proc is not None:  # our child: reap it (it has exited, this does not block)
            with contextlib.suppress(ChildProcessError):
                reaped, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222
                code = os.waitstatus_to_exitcode(status) if reaped else None
            proc.returncode = code if code is not None else -1
        for task in self._probes:
            task.cancel()
        self._probes.clear()
        # Leftovers of the group: when stopping they get the rest of the grace, otherwise
        # (a crash) they are killed now, so a restart never meets a half-dead old copy.
        if self.st.state is State.STOPPING:
            due = self.st.due if self.st.due is not None else 0.0
            grace = max(0.0, due - asyncio.get_running_loop().time())
            if not await _wait_session_empty(pid, grace):
                _signal_session(pid, signal.SIGKILL)
                await _wait_session_empty(pid, 10.0)
        else:
            try:  # one syscall in the usual case of a lone process, no /proc scan
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            else:
                _signal_session(pid, signal.SIGKILL)
                await _wait_session_empty(pid, 10.0)
        self.feed(policy.Exited(code))

    def detach(self) -> None:
        """Stop watching; the process (if any) keeps running."""
        if self._timer is not None:
            self._timer.cancel()
        for task in [*self._probes, *self._tasks]:
            task.cancel()


class Supervisor:
    """Runs the services of one node. All methods run on the agent's event loop."""

    def __init__(self, specs: Sequence[ServiceSpec], *, state_dir: Path,
                 defaults: PolicyConfig | None = None, rng: random.Random | None = None,
                 node: str | None = None) -> None:
        self.order = dependency_order(specs)
        self.state_dir, self.node = Path(state_dir), node
        self.rng = rng if rng is not None else random.Random()
        base = defaults if defaults is not None else PolicyConfig()
        self.units = {s.name: _Unit(s, policy_for(s, base), self) for s in self.order}
        self.log = log.get("supervisor", node=node)
        self._wanted: set[str] = set()
        self._event = asyncio.Event()
        self._kicking = False
        self._save_pending = False

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self, names: Iterable[str] | None = None) -> None:
        """Adopt what an earlier agent left running, then start the rest in dependency order."""
        try:
            records = procstate.load(self.state_dir)
        except procstate.StateFileError as exc:
            self.log.error("supervisor.state_unreadable", error=str(exc))
            records = {}
        for unit in self.units.values():
            rec = records.get(unit.spec.name)
            if unit.st.pid is not None or rec is None or rec.pid is None:
                continue
            if rec.start_time is not None and unit.adopt(rec):
                continue
            unit.st = replace(unit.st, starts=rec.starts, fatal_count=rec.fatal_count)
            if procstate.proc_start_time(rec.pid) is None:  # leader gone: clear leftovers
                _signal_session(rec.pid, signal.SIGKILL)
                await _wait_session_empty(rec.pid, 10.0)
        self._wanted |= set(self.units if names is None else self._known(names))
        self.changed()

    async def stop(self, names: Iterable[str] | None = None, *, within: float = 60.0) -> None:
        """Stop services (all by default) in reverse dependency order, each fully."""
        chosen = set(self.units if names is None else self._known(names))
        self._wanted -= chosen
        for spec in reversed(self.order):
            if spec.name in chosen:
                unit = self.units[spec.name]
                unit.feed(policy.StopRequested())
                await self.wait_for(spec.name, lambda s: s.state is State.STOPPED,
                                    within=within + unit.cfg.stop_grace)

    async def restart(self, name: str) -> None:
        unit = self.units[self._known([name])[0]]
        self._wanted.add(name)
        unit.feed(policy.StopRequested())
        unit.feed(policy.StartRequested())

    async def reload(self, name: str, *, within: float = 30.0) -> None:
        """Make the service re-read its configuration: reload_argv, SIGHUP, or a restart."""
        unit = self.units[self._known([name])[0]]
        spec, pid = unit.spec, unit.st.pid
        if spec.reload_argv is None or pid is None:
            await self.restart(name)
        elif not spec.reload_argv:
            os.kill(pid, signal.SIGHUP)
        else:
            cmd = replace(spec, argv=spec.reload_argv)
            proc, refused = await asyncio.to_thread(_popen, cmd)
            if refused is not None:
                unit.log_refused(refused)
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), within)
            if code != 0:
                raise TemporaryError(f"reload of {name}: {spec.reload_argv[0]} exited with "
                                     f"{code}", delay=5.0)
        unit.log.info("service.reloaded", pid=pid)

    def detach(self) -> None:
        """Stop supervising and leave every service running (agent shutdown or upgrade)."""
        for unit in self.units.values():
            unit.detach()
        self._save()

    # ---- observation --------------------------------------------------------------------
    def status(self) -> dict[str, ServiceStatus]:
        return {name: unit.status() for name, unit in self.units.items()}

    async def wait_for(self, name: str, predicate: Callable[[ServiceStatus], bool], *,
                       within: float) -> ServiceStatus:
        """Wait until `predicate(status)` holds; TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while not predicate(status := self.units[name].status()):
                await self._event.wait()
        return status

    def changed(self) -> None:
        """A unit changed: persist, start services whose dependencies are now up, wake waiters."""
        if not self._save_pending:
            # Saved from the next loop turn, once for a burst of changes, so that a spawn
            # already queued is not held up by the fsync.
            self._save_pending = True
            asyncio.get_running_loop().call_soon(self._save)
        if not self._kicking:  # starting a service changes it again: no re-entry
            self._kicking = True
            try:
                for spec in self.order:
                    unit = self.units[spec.name]
                    if (spec.name in self._wanted and unit.st.state is State.STOPPED
                            and all(self.units[d].st.state is State.RUNNING
                                    for d in spec.depends_on)):
                        unit.feed(policy.StartRequested())
            finally:
                self._kicking = False
        self._event.set()
        self._event = asyncio.Event()

    def _save(self) -> None:
        self._save_pending = False
        procstate.save(self.state_dir, {n: u.record() for n, u in self.units.items()})

    def _known(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in self.units]
        if unknown:
            raise KeyError(f"no such service: {', '.join(unknown)}")
        return names
