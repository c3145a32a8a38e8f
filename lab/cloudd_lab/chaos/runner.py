"""The soak: build the web cloud, write through its balancer, make the seed's faults, check the
invariants all along, then wait for the cloud to converge and read back every acknowledged
write.

Every fault, recovery, check and breach is a line of the soak's JSON lines log (`log`), with
its unix time and the seconds since the faults began. The run stops at the first breach:
`ChaosBreach` names the seed, the invariant and the last lines of the log, and the agents'
logs are copied beside the soak's log.

Two modes (`Mode`): `NAMESPACES`, every node a namespace with its own agent; `VMS`, the
servers and the balancer real VMs from the node image (`chaos.vms`), with the VM faults and
invariants too, and bounds for guests that boot under TCG.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudd.client.api import ApiClient, ApiError
from cloudd_lab.agentlab import remove_domains, virsh
from cloudd_lab.chaos import invariants as inv
from cloudd_lab.chaos.faults import ChaosLab, ChaosParts, Injector, agent_pids, service_pids
from cloudd_lab.chaos.schedule import SERVICES, Fault, Targets, counts, plan, role_of, steps
from cloudd_lab.chaos.vms import DATABASE, Domains, VmChaosLab, qemu_processes
from cloudd_lab.webclient import entries, write

PREFIX = "h25c"
SUBNET = "10.234.14.0/24"
HOSTS = ("pm1", "pm2", "pm3")
NODES = {"database": 1, "server": 2, "balancer": 1}
URI = "qemu:///system"
FOREIGN = f"{PREFIX}-foreign"
#: seconds for the first convergence (MariaDB initialises its data folder)
READY_BOUND = 300.0
#: seconds for the cloud to converge to the manifest once the last fault is undone
CONVERGE_BOUND = 240.0
#: seconds between two rounds of checks, and between two sampled reads of the ledger
CHECK_EVERY, SAMPLE_EVERY = 0.5, 5.0


@dataclass(frozen=True)
class Mode:
    """One kind of soak: its lab's prefix (also the cloud's name) and subnet, and its bounds."""

    prefix: str
    subnet: str
    #: seconds for the first convergence
    ready_bound: float
    #: seconds for the cloud to converge to the manifest once the last fault is undone
    converge_bound: float
    #: the servers and the balancer are VMs (`chaos.vms`)
    vms: bool = False

    @property
    def foreign(self) -> str:
        return f"{self.prefix}-foreign"


NAMESPACES = Mode(PREFIX, SUBNET, READY_BOUND, CONVERGE_BOUND)
#: Three TCG guests booting at once on two shared cores take 3-6 minutes at first; a killed
#: or fenced node's guest boots again in about 60-120 s, and a `stop_start` boots all three.
VMS = Mode("h26v", "10.239.50.0/24", ready_bound=1500.0, converge_bound=600.0, vms=True)


class ChaosBreach(AssertionError):
    """An invariant broke: the message names the seed, the breach and the last events."""


@dataclass
class Summary:
    seed: int
    duration: float
    planned: dict[str, int]
    done: int = 0
    writes: int = 0
    reads: int = 0
    #: seconds from the last fault undone until the cloud had converged
    converged_after: float = 0.0
    breaches: list[str] = field(default_factory=list)
    log: str = ""
    #: with VM nodes (the `VMS` mode)
    vms: bool = False
    #: seconds from the agents' start until the cloud first converged
    ready_after: float = 0.0


class Log:
    """The soak's JSON lines log, its last lines kept for a breach's message."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w")
        self.t0 = time.time()
        self.last: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        now = time.time()
        line = json.dumps({"at": round(now, 3), "elapsed": round(now - self.t0, 3),
                           "event": event, **fields})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            self.last.append(line)

    def close(self) -> None:
        self._file.close()


def targets(mode: Mode = NAMESPACES) -> Targets:
    nodes = tuple(f"lab-{r}-{j}" for r, n in NODES.items() for j in range(1, n + 1))
    if mode.vms:  # the database's state folder holds MariaDB's data: no 64 MiB tmpfs for it
        return Targets(hosts=HOSTS, nodes=(DATABASE,), disks=("pm1", "pm2"), clock=HOSTS[-1],
                       vms=tuple(n for n in nodes if n != DATABASE))
    return Targets(hosts=HOSTS, nodes=nodes, disks=("pm1", "pm2", "lab-server-1"),
                   clock=HOSTS[-1])


def make_lab(mode: Mode, t: Targets) -> ChaosParts:
    if mode.vms:
        return VmChaosLab(mode.prefix, subnet=mode.subnet, hosts=len(HOSTS), nodes=dict(NODES),
                          disks=t.disks, clock=t.clock)
    return ChaosLab(mode.prefix, subnet=mode.subnet, hosts=len(HOSTS), nodes=dict(NODES),
                    node_agents=True, libvirt_uri=URI, cloud_name=mode.prefix, disks=t.disks,
                    clock=t.clock)


class Watch(threading.Thread):
    """Checks the invariants every `CHECK_EVERY` seconds until stopped; `breaches` holds what
    it found (the soak stops at the first)."""

    def __init__(self, lab: Any, ledger: inv.Ledger, ledger_lock: threading.Lock,
                 agents_lock: threading.Lock, log: Log, foreign: inv.Untouched,
                 domains: Domains | None = None) -> None:
        super().__init__(daemon=True)
        self.lab, self.ledger, self.ledger_lock, self.agents_lock = (
            lab, ledger, ledger_lock, agents_lock)
        self.log, self.foreign, self.domains = log, foreign, domains
        #: node -> its running domains, as last seen (None: libvirt did not answer)
        self.running: dict[str, list[str]] | None = None
        self.leaders = inv.Leaders()
        self.exits = inv.Exits()
        self.breaches: list[inv.Breach] = []
        self.reads = 0
        self.statuses: dict[str, dict[str, Any] | None] = {}
        self._offsets: dict[str, int] = {}
        self._halt = threading.Event()
        self._last_sample = self._last_foreign = 0.0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        while not self._halt.is_set() and not self.breaches:
            try:
                self.round()
            except Exception as e:  # a checker's own failure ends the soak, said plainly
                self.breaches.append(inv.Breach("checker_failed", repr(e)))
            for b in self.breaches:
                self.log("breach", invariant=b.invariant, detail=b.detail)
            self._halt.wait(CHECK_EVERY)

    def round(self) -> None:
        lab = self.lab
        self.statuses = poll_statuses(lab, list(lab.agents))
        found = self.leaders.observe_status(self.statuses)
        for name in lab.agents:
            found += self.leaders.observe_log(name, self._new_events(name))
        counts = {f"{n}/cloudd": len(agent_pids(lab, n)) for n in lab.agents}
        for node in lab.agents:
            if (program := SERVICES.get(role_of(node))) is not None:
                counts[f"{node}/{program}"] = len(service_pids(program, lab.node_ns(node)))
        found += inv.observe_singles(counts)
        if self.domains is not None:
            self.running = self.domains.running()
            mine = {d: pids for d, pids in qemu_processes().items()
                    if d.startswith(f"{lab.cloud_name}-")}
            found += inv.observe_domains(self.running or {}, mine)
        with self.agents_lock:
            found += self.exits.observe({n: (a.proc.poll() if a.proc else None, a.signalled)
                                         for n, a in lab.agents.items()})
        now = time.time()
        if now - self._last_foreign >= SAMPLE_EVERY:
            self._last_foreign = now
            seen = foreign_view(self.foreign.name)
            if seen is not None:  # else virsh could not tell: the next round looks again
                found += self.foreign.observe(*seen)
        if now - self._last_sample >= SAMPLE_EVERY:
            self._last_sample = now
            found += self.sample()
        self.breaches += found

    def sample(self, *, timeout: float = 5.0) -> list[inv.Breach]:
        """Read every entry through the balancer; a failed read is no breach (the site may be
        down), a read missing an acknowledged write is."""
        started = time.time()
        try:
            stored = entries(url(self.lab), timeout=timeout)
        except (OSError, ValueError):
            return []
        self.reads += 1
        with self.ledger_lock:
            return self.ledger.observe_read(stored, started=started)

    def _new_events(self, name: str) -> list[dict[str, Any]]:
        path = self.lab.agents[name].log_path
        try:
            with path.open("rb") as f:
                f.seek(self._offsets.get(name, 0))
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offsets[name] = self._offsets.get(name, 0) + end
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out


def poll_statuses(lab: Any, names: list[str]) -> dict[str, dict[str, Any] | None]:
    """Every agent's `status`, asked at once (a stopped agent answers nothing within 2 s)."""
    async def one(name: str) -> tuple[str, dict[str, Any] | None]:
        try:
            answer = await asyncio.wait_for(
                ApiClient(lab.agents[name].socket, timeout=2).call("status"), 3)
        except (ApiError, OSError, TimeoutError):
            return name, None
        return name, answer if isinstance(answer, dict) else None

    async def every() -> dict[str, dict[str, Any] | None]:
        return dict(await asyncio.gather(*(one(n) for n in names)))
    return asyncio.run(every())


def url(lab: Any) -> str:
    return f"http://{lab.node_addresses['lab-balancer-1']}"


def define_foreign(name: str = FOREIGN) -> inv.Untouched:
    """A domain of no cloud (no cloudd metadata), defined and never started."""
    remove_domains(URI, name)
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(xml)
        f.flush()
        done = virsh(URI, "define", f.name)
    if done.returncode != 0:
        raise RuntimeError(f"cannot define {name} on {URI}: {done.stderr.strip()}")
    seen = foreign_view(name)
    if seen is None or seen[0] is None:
        raise RuntimeError(f"{name} defined but not found on {URI}")
    return inv.Untouched(name, seen[0], seen[1] or "")


def foreign_view(name: str = FOREIGN) -> tuple[str | None, str | None] | None:
    """The foreign domain's inactive definition and state; (None, None) when libvirt has no
    such domain, None when virsh could not tell (libvirtd slow or busy on a shared machine:
    not a breach)."""
    done = virsh(URI, "dumpxml", "--inactive", name)
    if done.returncode != 0:
        return (None, None) if "failed to get domain" in done.stderr else None
    state = virsh(URI, "domstate", name)
    if state.returncode != 0:
        return (None, None) if "failed to get domain" in state.stderr else None
    return done.stdout, state.stdout.strip()


class Writer(threading.Thread):
    """The site's user: writes an entry through the balancer every 0.2 s, keeping the ledger of
    those the site acknowledged (201)."""

    def __init__(self, lab: Any, seed: int, ledger: inv.Ledger,
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.lab, self.seed, self.ledger, self.lock = lab, seed, ledger, lock
        self._halt = threading.Event()
        self.sent = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sent += 1
            body = f"chaos-{self.seed}-{self.sent}"
            sent = time.time()
            if write(url(self.lab), body, timeout=3.0):
                with self.lock:
                    self.ledger.acknowledged(body, sent=sent, at=time.time())
            self._halt.wait(0.2)


def converged(lab: Any, statuses: dict[str, dict[str, Any] | None],
              domains: Domains | None = None) -> list[str]:
    """What still differs from the manifest (empty once the cloud has converged)."""
    acting = [n for n, s in statuses.items() if s and s.get("acting")]
    view = None
    if len(acting) == 1 and all(s and s.get("leader") == acting[0] for s in statuses.values()):
        view = statuses[acting[0]]
    running = lab.running()
    vms = [n for n in lab.node_addresses if n not in lab.agents]
    out = inv.reasons(view, nodes=list(lab.node_addresses),
                      agents={n: n in running for n in lab.agents},
                      domains=domains.running() if domains is not None else None, vms=vms)
    out += [f"{name} runs {n} agents" for name in running
            if (n := len(agent_pids(lab, name))) != 1]
    for node in lab.agents:
        if (program := SERVICES.get(role_of(node))) is not None:
            n = len(service_pids(program, lab.node_ns(node)))
            if n != 1:
                out.append(f"{node} runs {n} {program}")
    return out


def wait(what: str, check: Callable[[], Any], *, bound: float, watch: Watch | None,
         interval: float = 1.0) -> Any:
    end = time.monotonic() + bound
    while True:
        if watch is not None and watch.breaches:
            return None
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {bound:g} s: {what}")
        time.sleep(interval)


def run(seed: int, duration: float, *, vms: bool = False, log_path: Path | None = None,
        concurrency: int = 2, progress: Callable[[str], None] = print) -> Summary:
    """One soak (`vms`: in the `VMS` mode); ChaosBreach at the first breach (or when the cloud
    does not converge)."""
    mode = VMS if vms else NAMESPACES
    t = targets(mode)
    faults = plan(seed, duration, t, concurrency=concurrency)
    name = f"seed-{seed}{'-vms' if vms else ''}.jsonl"
    log_path = log_path or Path(tempfile.gettempdir()) / "cloudd-chaos" / name
    log = Log(log_path)
    summary = Summary(seed, duration, counts(faults), log=str(log_path), vms=vms)
    log("planned", seed=seed, duration=duration, vms=vms, faults=len(faults),
        kinds=summary.planned)
    for f in faults:
        log("fault_planned", fault=f.id, kind=f.kind, target=f.target, at=f.at, until=f.until,
            arg=f.arg)
    lab: Any = make_lab(mode, t)
    domains = Domains(mode.prefix) if vms else None
    ledger, ledger_lock, agents_lock = inv.Ledger(), threading.Lock(), threading.Lock()
    watch: Watch | None = None
    writer: Writer | None = None
    try:
        with lab:
            try:
                foreign = define_foreign(mode.foreign)
                log("foreign_defined", domain=mode.foreign, state=foreign.state)
                lab.start_all()
                t_up = time.monotonic()
                first: list[str] = []

                def ready() -> bool:
                    nonlocal first
                    first = converged(lab, poll_statuses(lab, list(lab.agents)), domains)
                    return not first
                try:
                    wait("the web cloud converged at first", ready, bound=mode.ready_bound,
                         watch=None, interval=5.0 if vms else 1.0)
                except AssertionError as e:
                    raise AssertionError(f"{e}: {'; '.join(first)}") from None
                summary.ready_after = round(time.monotonic() - t_up, 1)
                log("ready", after=summary.ready_after)
                progress(f"chaos seed {seed}: cloud ready after {summary.ready_after:.0f} s; "
                         f"{len(faults)} faults over {duration:g} s; log {log_path}")
                watch = Watch(lab, ledger, ledger_lock, agents_lock, log, foreign, domains)
                writer = Writer(lab, seed, ledger, ledger_lock)
                writer.start()
                watch.start()
                injector = Injector(lab)
                log.t0 = t0 = time.time()
                for step in steps(faults):
                    while time.time() < t0 + step.at and not watch.breaches:
                        time.sleep(min(0.2, t0 + step.at - time.time()))
                    if watch.breaches:
                        break
                    act(injector, step.action, step.fault, log, agents_lock)
                    if step.action == "inject":
                        summary.done += 1
                t_last = time.monotonic()
                for line in injector.heal():
                    log("healed", detail=line)
                if not watch.breaches:
                    final_convergence(lab, injector, watch, log, bound=mode.converge_bound)
                    summary.converged_after = round(time.monotonic() - t_last, 1)
                writer.stop()
                if not watch.breaches:
                    final_read(lab, watch, log)
                    final_foreign(watch, log)
                watch.stop()
                summary.writes, summary.reads = len(ledger.writes), watch.reads
                summary.breaches = [b.line() for b in watch.breaches]
                if summary.breaches:
                    keep_agent_logs(lab, log_path)
                    log("failed", breaches=summary.breaches)
                    raise ChaosBreach(f"seed {seed}: {summary.breaches[0]}\nlast events:\n"
                                      + "\n".join(log.last) + agents_last(lab))
                log("passed", writes=summary.writes, reads=summary.reads,
                    converged_after=summary.converged_after, faults=summary.done)
            except AssertionError as e:
                if isinstance(e, ChaosBreach):
                    raise
                log("failed", reason=str(e))
                keep_agent_logs(lab, log_path)
                raise ChaosBreach(f"seed {seed}: {e}\nlast events:\n" + "\n".join(log.last)
                                  + agents_last(lab)) from e
    finally:
        if writer is not None:
            writer.stop()
        if watch is not None:
            watch.stop()
        if domains is not None:
            domains.close()
        remove_domains(URI, mode.foreign)
        log.close()
    return summary


def act(injector: Injector, action: str, f: Fault, log: Log,
        agents_lock: threading.Lock) -> None:
    # Starting and killing agents change what the exits check reads: never halfway through.
    with agents_lock if f.kind in ("agent_kill", "clock_step") else contextlib.nullcontext():
        try:
            detail = (injector.inject if action == "inject" else injector.recover)(f)
        except Exception as e:  # a fault that could not be made is logged, the soak goes on
            detail = f"failed: {e!r}"
    log(action, fault=f.id, kind=f.kind, target=f.target, detail=detail)


def final_convergence(lab: Any, injector: Injector, watch: Watch, log: Log, *,
                      bound: float = CONVERGE_BOUND) -> None:
    """Wait for the cloud to match the manifest again; `maintenance off` and a running
    generation are given again (an operator's command may have failed under a fault)."""
    t = time.monotonic()
    for args in (("maintenance", "off"), *(("maintenance", "off", n) for n in lab.node_addresses)):
        log("operator", detail=injector.cli(*args))
    log("operator", detail=injector.cli("apply", str(injector.manifest_file(ensure="running"))))
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = converged(lab, watch.statuses or poll_statuses(lab, list(lab.agents)),
                         watch.domains)
        return not last
    try:
        wait("the cloud converged to the manifest", done, bound=bound, watch=watch)
    except AssertionError as e:
        raise AssertionError(f"{e}: {'; '.join(last)}") from None
    wait("the site took a write", lambda: write(url(lab), "chaos-final", timeout=5.0),
         bound=60.0, watch=watch)
    if not watch.breaches:  # a breach ends the waits early: nothing converged then
        log("converged", after=round(time.monotonic() - t, 1))


def final_foreign(watch: Watch, log: Log) -> None:
    """The foreign domain, looked at once more at the end (libvirt must answer within 60 s)."""
    end = time.monotonic() + 60.0
    while (seen := foreign_view(watch.foreign.name)) is None:
        if time.monotonic() > end:
            raise AssertionError(f"libvirt did not show {watch.foreign.name} within 60 s")
        time.sleep(1.0)
    found = watch.foreign.observe(*seen)
    watch.breaches += found
    log("foreign_checked", domain=watch.foreign.name, state=seen[1], breaches=len(found))


def final_read(lab: Any, watch: Watch, log: Log) -> None:
    """Every acknowledged write, read back once the writer has stopped."""
    end = time.monotonic() + 90.0
    while True:
        before = watch.reads
        found = watch.sample(timeout=30.0)
        watch.breaches += found
        if found or watch.reads > before:
            break
        if time.monotonic() > end:
            raise AssertionError("no full read of the entries within 90 s")
        time.sleep(1.0)
    log("final_read", writes=len(watch.ledger.writes), breaches=len(watch.breaches))


def agents_last(lab: Any, *, lines: int = 20) -> str:
    """The agents' last elections and actions, from their logs, for a breach's message."""
    with contextlib.suppress(OSError):
        events = sorted((e for e in lab.log_events()
                         if str(e.get("event", "")).startswith(("election_", "action_"))),
                        key=lambda e: e["at"])[-lines:]
        return "\nthe agents' last elections and actions:\n" + "\n".join(
            f"{e['timestamp']} {e['agent']} {e['event']} term={e.get('term')} "
            f"{e.get('reason', '')}" for e in events)
    return ""


def keep_agent_logs(lab: Any, log_path: Path) -> None:
    folder = log_path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    for name, agent in lab.agents.items():
        with contextlib.suppress(OSError):
            shutil.copy(agent.log_path, folder / f"{name}.log")
    subprocess.run(["sync"], check=False)
