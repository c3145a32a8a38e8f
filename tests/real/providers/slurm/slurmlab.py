"""A real Slurm cloud on one machine: a head and compute nodes in `nodens` test nodes.

`SlurmLab` plays both sides a cloudd agent plays: the node side (converge the role, run its
daemons under a real `Supervisor`) and the leader side (a `ClusterView` whose `ask` runs the
head role's action, as the leader's message to the head's agent would). Each node has its own
network, hostname (its node name) and private folders; their roots, the jobs' folder and the
binaries are shared. Every wait is bounded, so a broken daemon fails the test, never hangs it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cloudd_lab.nodens import NodeLab, NodeNs

from cloudd.daemon.node import actions
from cloudd.errors import PermanentError
from cloudd.providers.base import Assignment, ClusterView, Peer, converge
from cloudd.providers.policy import State
from cloudd.providers.slurm.provider import PROVIDER
from cloudd.providers.supervisor import ServiceStatus, Supervisor

PREFIX = "h22s"
SUBNET = "10.239.39.0/25"
CLOUD = "sl"
#: A compute node that stops answering is DOWN after 10 s (Slurm's default is 300).
SETTINGS: dict[str, object] = {"partition": "main", "munge_key_ref": "munge",
                               "slurmd_timeout": 10}
#: The user jobs are submitted as (the same uid on every node: they share /etc/passwd).
USER = "h22sjob"
FIRST_UID = 47321


async def until(check: Callable[[], Awaitable[bool]], what: str, *, limit: float = 60.0) -> None:
    """Poll `check()` every 0.25 s until true; fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(0.25)


def make_user() -> int:
    """(Re)make the test's submitting user with a free uid; returns the uid."""
    subprocess.run(["userdel", USER], capture_output=True, check=False)
    uid = FIRST_UID
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
        uid += 1
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--uid",
                    str(uid), "--user-group", "--shell", "/bin/sh", USER], check=True)
    return uid


def drop_user() -> None:
    subprocess.run(["userdel", USER], capture_output=True, check=False)


@dataclass
class SlurmLab:
    nodes: NodeLab
    secrets: Path
    shared: Path
    roles: dict[str, str] = field(default_factory=dict)  # node name -> role
    ns: dict[str, NodeNs] = field(default_factory=dict)
    sups: dict[str, Supervisor] = field(default_factory=dict)

    # ---- the node side ---------------------------------------------------------------
    def add(self, name: str, role: str) -> NodeNs:
        self.roles[name] = role
        self.ns[name] = self.nodes.add(name.replace("-", ""), hostname=name)
        return self.ns[name]

    def root(self, name: str) -> Path:
        return self.nodes.root / name

    def peers(self) -> tuple[Peer, ...]:
        return tuple(Peer(n, r, self.ns[n].netns.address.ip, self.healthy(n))
                     for n, r in self.roles.items())

    def healthy(self, name: str) -> bool:
        sup = self.sups.get(name)
        return sup is not None and all(s.state is State.RUNNING and s.ready
                                       for s in sup.status().values())

    def assignment(self, name: str) -> Assignment:
        return Assignment(cloud=CLOUD, node=name, role=self.roles[name],
                          address=self.ns[name].netns.address.ip, root=self.root(name),
                          secrets_dir=self.secrets, settings=SETTINGS,
                          peers=tuple(p for p in self.peers() if p.node != name),
                          exec_prefix=self.ns[name].exec_prefix)

    async def converge(self, name: str) -> None:
        """What a node agent does with its assignment: packages, files, prepare, services."""
        a = self.assignment(name)
        done = await converge(PROVIDER, a)
        assert done.installed == ()  # the suite's machine has them all
        sup = self.sups[name] = Supervisor(done.services, state_dir=a.root / "state", node=name)
        await sup.start()
        for service in sup.units:
            await self.running(name, service)

    def service(self, name: str, service: str) -> ServiceStatus:
        return self.sups[name].status()[service]

    async def running(self, name: str, service: str, *,
                      not_pid: int | None = None) -> ServiceStatus:
        """Wait (bounded) until the service is RUNNING and ready (with a new pid)."""
        try:
            return await self.sups[name].wait_for(
                service, lambda s: s.state is State.RUNNING and s.ready and s.pid != not_pid,
                within=60)
        except TimeoutError:
            log = self.root(name) / "log" / f"{service}.out"
            pytest.fail(f"{service} on {name} not running: {self.service(name, service)}; "
                        f"{log.read_text()[-2000:] if log.exists() else ''}")

    async def kill9(self, name: str, service: str) -> int:
        """kill -9 the service's process; the supervisor notices and starts it again."""
        pid = self.service(name, service).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await self.running(name, service, not_pid=pid)
        return pid

    async def stop(self, name: str) -> None:
        await self.sups.pop(name).stop(within=30)

    async def restart_agent(self, name: str) -> Supervisor:
        """The node's agent goes away (its services keep running) and a new one starts: it
        adopts the running daemons from the state the old one kept."""
        old = self.sups.pop(name)
        old.detach()
        specs = [u.spec for u in old.units.values()]
        sup = self.sups[name] = Supervisor(specs, state_dir=self.root(name) / "state",
                                           node=name)
        await sup.start()
        return sup

    def crash(self, name: str) -> None:
        """The node dies: its agent stops watching and every process in it is killed."""
        self.sups.pop(name).detach()
        pids = self.ns[name].pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        for name in reversed(list(self.sups)):
            await self.stop(name)

    # ---- the leader side -------------------------------------------------------------
    async def ask(self, node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        """The head's agent answering the leader: what its role refuses, or its bounded
        answer (`cloudd.daemon.node.actions`, as the node's agent does it)."""
        role = PROVIDER.role(self.roles[node])
        pairs = tuple(sorted(args.items()))
        why = actions.refusal(role, action, pairs, node=node)
        if why is not None:
            raise PermanentError(why)
        return dict(await actions.perform(role, self.assignment(node), action, pairs))

    def cluster(self) -> ClusterView:
        return ClusterView(cloud=CLOUD, nodes=self.peers(), settings=SETTINGS, ask=self.ask)

    # ---- a user of the cluster -------------------------------------------------------
    def slurm(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """A Slurm client command on the head, as `user` (root by default)."""
        head = next(n for n, r in self.roles.items() if r == "head")
        conf = self.root(head) / "slurm" / "slurm.conf"
        return self.ns[head].run(list(argv), user=user, env={"SLURM_CONF": str(conf)},
                                 cwd=self.shared)

    def job(self, job: str, fmt: str) -> str:
        """One field of a job in squeue ("" once it has left the queue)."""
        return self.slurm("squeue", "-h", "-j", job, "-o", fmt).stdout.strip()

    def submit(self, script: str, *, where: str | None = None) -> str:
        """sbatch a one-line job as the test user; returns its id."""
        done = self.slurm("sbatch", "--parsable", "-o", str(self.shared / "job-%j.out"),
                          *(["-w", where] if where else []), "--wrap", script, user=USER)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    async def output(self, job: str, *, limit: float = 60.0) -> str:
        """The job's output once it has finished (bounded)."""
        out = self.shared / f"job-{job}.out"

        async def done() -> bool:
            return self.job(job, "%T") == "" and out.exists()

        await until(done, f"job {job} to finish", limit=limit)
        return out.read_text()
