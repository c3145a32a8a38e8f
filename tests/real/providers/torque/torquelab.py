"""A real TORQUE cluster on one machine: test nodes with their own network, hostname and
private folders (`cloudd_lab.nodens`), each running its role's daemons under a real
`Supervisor`.

`TorqueLab` plays both sides a cloudd agent plays: the node side (converge: render, write,
prepare, start the role's services) and the leader side (`cluster()` with an `ask` that runs
the head's `act`, as the leader's channel would, within the node's bound). Jobs are submitted
as a normal user made for the test (same uid on every node: /etc/passwd is shared) and write
into a folder every node sees at the same path (the cloud's `shared_paths`). Every wait is
bounded, so a broken daemon fails the test instead of hanging it.

A node's supervisor may also run in a process of its own (`converge(..., own_process=True)`),
as the agent's does on a real node, so that a test can kill -9 it: `kill_agent` does, and
`restart_agent` starts a new supervisor here that adopts what the dead one left running.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import pwd
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cloudd_lab.nodens import NodeLab, NodeNs

from cloudd.providers import procstate
from cloudd.providers.base import ACT_WITHIN, Assignment, ClusterView, Finding, Peer, converge
from cloudd.providers.policy import State
from cloudd.providers.service import ServiceSpec
from cloudd.providers.supervisor import ServiceStatus, Supervisor
from cloudd.providers.torque.layout import program
from cloudd.providers.torque.provider import PROVIDER

PREFIX = "h22q"
SUBNET = "10.239.40.0/24"
CLOUD = "tq"
USER = "h22qjob"
#: A uid no account of this machine uses (checked when the user is made).
UID = 42240
#: A node's supervisor in a process of its own: the agent's part that a kill -9 takes away.
#: Its services are given as a pickle the lab wrote (root's file, in the lab's own folder).
AGENT = """\
import asyncio, pickle, sys
from pathlib import Path
from cloudd.providers.supervisor import Supervisor

async def main() -> None:
    specs = pickle.loads(Path(sys.argv[2]).read_bytes())
    await Supervisor(specs, state_dir=Path(sys.argv[1]), node=sys.argv[3]).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def until(check: Callable[[], Awaitable[bool]], what: str, *, limit: float = 90.0) -> None:
    """Poll `check()` every second until true; fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(1.0)


def make_user(home: Path) -> None:
    """The job submitter, a normal user; one left by a crashed run is removed first."""
    drop_user()
    subprocess.run(["useradd", "--uid", str(UID), "--user-group", "--home-dir", str(home),
                    "--create-home", "--shell", "/bin/sh", USER], check=True)


def drop_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return
    subprocess.run(["userdel", "--force", USER], check=True, capture_output=True)


@dataclass
class TorqueLab:
    nodes: NodeLab
    shared: Path
    roles: dict[str, str] = field(default_factory=dict)  # label -> role
    health: dict[str, bool] = field(default_factory=dict)
    sups: dict[str, Supervisor] = field(default_factory=dict)
    #: Supervisors running in a process of their own, by label.
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, object]:
        return {"queue": "batch", "shared_paths": [str(self.shared)]}

    def node(self, label: str) -> NodeNs:
        return self.nodes.nodes[label]

    def add(self, label: str, role: str) -> NodeNs:
        """A new test node (every node's /etc/hosts then names it)."""
        self.roles[label] = role
        return self.nodes.add(label, hostname=f"{CLOUD}-{label}")

    def forget(self, label: str) -> None:
        """The node leaves the cloud (its namespaces stay until the lab closes)."""
        self.roles.pop(label)
        self.health.pop(label, None)

    def peers(self) -> tuple[Peer, ...]:
        return tuple(Peer(self.node(label).hostname, role, self.node(label).ip,
                          self.health.get(label, True)) for label, role in self.roles.items())

    def cluster(self) -> ClusterView:
        return ClusterView(cloud=CLOUD, nodes=self.peers(), settings=self.settings,
                           ask=self.ask)

    def label_of(self, name: str) -> str:
        return next(label for label in self.roles if self.node(label).hostname == name)

    def assignment(self, label: str) -> Assignment:
        node = self.node(label)
        return Assignment(cloud=CLOUD, node=node.hostname, role=self.roles[label],
                          address=node.ip, root=self.nodes.root / "roles" / label,
                          secrets_dir=self.nodes.root / "secrets", settings=self.settings,
                          peers=tuple(p for p in self.peers() if p.node != node.hostname),
                          exec_prefix=node.exec_prefix)

    async def ask(self, name: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        """The leader's channel: the node's role acts, within the node's own bound."""
        a = self.assignment(self.label_of(name))
        role = PROVIDER.role(a.role)
        assert action in role.actions and set(args) == set(role.actions[action])
        async with asyncio.timeout(ACT_WITHIN):
            return await role.act(a, action, args)

    async def converge(self, label: str, *, own_process: bool = False) -> None:
        """What a node agent does with its assignment: files, prepare, services (supervised
        here, or by a supervisor in a process of its own)."""
        (self.nodes.root / "roles").mkdir(mode=0o755, exist_ok=True)
        a = self.assignment(label)
        done = await converge(PROVIDER, a)
        if own_process:
            await self._agent_process(label, a, done.services)
            return
        sup = self.sups[label] = Supervisor(done.services, state_dir=a.root / "state",
                                            node=a.node)
        await sup.start()
        for name in sup.units:
            await self.running(label, name)

    def _spawn_agent(self, label: str, a: Assignment,
                     services: tuple[ServiceSpec, ...]) -> subprocess.Popen[bytes]:
        """The node's supervisor started in a process of its own (its log beside it)."""
        specs = self.nodes.root / f"{label}-services.pickle"
        specs.write_bytes(pickle.dumps(services))
        specs.chmod(0o600)
        script = self.nodes.root / "agent.py"
        script.write_text(AGENT)
        with open(self.nodes.root / f"{label}-agent.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, str(script), str(a.root / "state"), str(specs), a.node],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    async def _agent_process(self, label: str, a: Assignment,
                             services: tuple[ServiceSpec, ...]) -> None:
        self.agents[label] = self._spawn_agent(label, a, services)

        async def all_running() -> bool:
            agent = self.agents[label]
            if agent.poll() is not None:
                pytest.fail(f"the agent process of {label} exited with {agent.returncode}")
            seen = self.saved(label)
            return (set(seen) == {s.name for s in services}
                    and all(r.state == State.RUNNING for r in seen.values()))
        await until(all_running, f"every service of {label} running under its agent process",
                    limit=60)

    def saved(self, label: str) -> dict[str, procstate.ProcRecord]:
        """The services as the node's supervisor last recorded them (services.json)."""
        try:
            return procstate.load(self.nodes.root / "roles" / label / "state")
        except (procstate.StateFileError, FileNotFoundError):
            return {}

    def kill_agent(self, label: str) -> None:
        """kill -9 the node's agent process; its services keep running."""
        agent = self.agents.pop(label)
        agent.kill()
        agent.wait(timeout=30)

    async def restart_agent(self, label: str) -> Supervisor:
        """A new agent for the node: a supervisor here, over the same services, that adopts
        what its predecessor recorded and left running."""
        specs = pickle.loads((self.nodes.root / f"{label}-services.pickle").read_bytes())
        a = self.assignment(label)
        sup = self.sups[label] = Supervisor(specs, state_dir=a.root / "state", node=a.node)
        await sup.start()
        for name in sup.units:
            await self.running(label, name)
        return sup

    def processes(self, label: str, name: str) -> list[int]:
        """The pids of the processes called `name` running in the node now."""
        found = []
        for pid in self.node(label).pids():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name and procstate.proc_start_time(pid) is not None:
                found.append(pid)
        return found

    def job_processes(self, label: str, job: str) -> list[int]:
        """The live processes of one job in the node (pbs_mom gives each its PBS_JOBID)."""
        mark = f"PBS_JOBID={job}".encode()
        return [pid for pid in self.node(label).pids()
                if mark in _environ(pid) and procstate.proc_start_time(pid) is not None]

    def services_die(self, label: str) -> dict[str, int]:
        """The node's services die for good: its supervisor stops watching (the agent is
        gone) and each service is killed -9. Returns the pids killed, by service."""
        self.health[label] = False
        sup = self.sups.pop(label)
        sup.detach()
        killed = {name: st.pid for name, st in sup.status().items() if st.pid is not None}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)
        return killed

    def status(self, label: str, service: str) -> ServiceStatus:
        return self.sups[label].status()[service]

    async def running(self, label: str, service: str, *,
                      not_pid: int | None = None) -> ServiceStatus:
        """Wait (bounded) until the service is RUNNING and ready (with a new pid)."""
        try:
            return await self.sups[label].wait_for(
                service, lambda s: s.state is State.RUNNING and s.ready and s.pid != not_pid,
                within=60)
        except TimeoutError:
            log = self.nodes.root / "roles" / label / "log" / f"{service}.out"
            pytest.fail(f"{service} on {label} not running: {self.status(label, service)}; "
                        f"{log.read_text()[-2000:] if log.exists() else ''}")

    async def kill9(self, label: str, service: str) -> int:
        """kill -9 the service's process; the supervisor notices and starts it again."""
        pid = self.status(label, service).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await self.running(label, service, not_pid=pid)
        return pid

    async def stop(self, label: str) -> None:
        await self.sups.pop(label).stop(within=30)

    async def stop_all(self) -> None:
        for label in list(self.agents):
            self.kill_agent(label)  # its services: killed with the lab's namespaces
        for label in reversed(list(self.sups)):
            await self.stop(label)

    async def findings(self) -> dict[str, Finding]:
        """`monitor`'s findings by node (nudging down nodes, as the leader would); those for
        the whole cloud (the queue) are `queue()`'s."""
        return {f.node: f for f in await PROVIDER.monitor(self.cluster()) if f.node}

    async def queue(self) -> Finding:
        """`monitor`'s finding of the jobs waiting, for the whole cloud."""
        return next(f for f in await PROVIDER.monitor(self.cluster()) if f.check == "queue")

    async def all_free(self) -> bool:
        found = await self.findings()
        computes = {self.node(label).hostname for label, role in self.roles.items()
                    if role == "compute"}
        return set(found) == computes and all(f.ok for f in found.values())

    def client(self, label: str, *argv: str, user: str | None = None
               ) -> subprocess.CompletedProcess[str]:
        """A TORQUE client run on a node (as `user`), told the head's name."""
        head = next(self.node(lb).hostname for lb, r in self.roles.items() if r == "head")
        return self.node(label).run([program("bin", argv[0]), *argv[1:]], user=user,
                                    env={"PBS_DEFAULT": head}, cwd=self.shared, timeout=30)

    def submit(self, name: str, *, where: str = "", sleep: int = 0) -> Path:
        """qsub, as the test's user on the head, a job printing its host and user (after
        `sleep` seconds); returns the file its output is copied to."""
        return self.qsub(name, where=where, sleep=sleep)[0]

    def qsub(self, name: str, *, where: str = "", sleep: int = 0,
             rerunnable: bool | None = None) -> tuple[Path, str]:
        """`submit`, with `qsub -r y|n` when `rerunnable` is given: (output file, job id)."""
        out = self.shared / f"{name}.out"
        script = self.shared / f"{name}.sh"
        script.write_text(f"#!/bin/sh\nsleep {sleep}\nhostname\nid -un\n")
        script.chmod(0o755)
        extra = ["-l", f"nodes={where}"] if where else []
        if rerunnable is not None:
            extra += ["-r", "y" if rerunnable else "n"]
        done = self.client("head", "qsub", "-N", name, "-j", "oe", "-o", str(out), *extra,
                           str(script), user=USER)
        assert done.returncode == 0, f"qsub failed: {done.stdout}{done.stderr}"
        return out, done.stdout.strip()

    def job(self, job: str) -> dict[str, str]:
        """`qstat -f` of one job as its attributes ({} once pbs_server has forgotten it)."""
        done = self.client("head", "qstat", "-f", job)
        return parse_qstat_f(done.stdout) if done.returncode == 0 else {}

    async def ran(self, out: Path, *, limit: float = 120.0) -> list[str]:
        """The job's output lines once pbs_mom has copied them back."""
        async def written() -> bool:
            return len(_words(out)) >= 2
        await until(written, f"the output of {out.name}", limit=limit)
        return _words(out)


def parse_qstat_f(text: str) -> dict[str, str]:
    """`qstat -f`'s `    name = value` lines (a long value goes on over lines that start
    with a tab) as a mapping; the `Job Id:` line as `Job_Id`."""
    attrs: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs["Job_Id"] = line.split(":", 1)[1].strip()
        elif line.startswith("\t") and last:
            attrs[last] += line.strip()
        elif " = " in line:
            last, value = (part.strip() for part in line.split(" = ", 1))
            attrs[last] = value
    return attrs


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def open_folders(root: Path) -> dict[str, int]:
    """The folders below `root` that someone besides root may write, relative to it, with
    their modes."""
    found = {}
    for folder, _dirs, _files in os.walk(root):
        st = os.lstat(folder)
        if st.st_uid != 0 or st.st_mode & 0o022:
            found[str(Path(folder).relative_to(root))] = st.st_mode & 0o7777
    return found


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []
