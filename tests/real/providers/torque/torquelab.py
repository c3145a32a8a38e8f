"""A real TORQUE cluster on one machine: test nodes with their own network, hostname and
private folders (`cloudd_lab.nodens`), each running its role's daemons under a real
`Supervisor`.

`TorqueLab` plays both sides a cloudd agent plays: the node side (converge: render, write,
prepare, start the role's services) and the leader side (`cluster()` with an `ask` that runs
the head's `act`, as the leader's channel would, within the node's bound). Jobs are submitted
as a normal user made for the test (same uid on every node: /etc/passwd is shared) and write
into a folder every node sees at the same path (the cloud's `shared_paths`). Every wait is
bounded, so a broken daemon fails the test instead of hanging it.
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

from cloudd.providers.base import ACT_WITHIN, Assignment, ClusterView, Finding, Peer, converge
from cloudd.providers.policy import State
from cloudd.providers.supervisor import ServiceStatus, Supervisor
from cloudd.providers.torque.layout import program
from cloudd.providers.torque.provider import PROVIDER

PREFIX = "h22q"
SUBNET = "10.239.40.0/24"
CLOUD = "tq"
USER = "h22qjob"
#: A uid no account of this machine uses (checked when the user is made).
UID = 42240


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

    async def converge(self, label: str) -> None:
        """What a node agent does with its assignment: files, prepare, services."""
        (self.nodes.root / "roles").mkdir(mode=0o755, exist_ok=True)
        a = self.assignment(label)
        done = await converge(PROVIDER, a)
        sup = self.sups[label] = Supervisor(done.services, state_dir=a.root / "state",
                                            node=a.node)
        await sup.start()
        for name in sup.units:
            await self.running(label, name)

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
        for label in reversed(list(self.sups)):
            await self.stop(label)

    async def findings(self) -> dict[str, Finding]:
        """`monitor`'s findings by node (nudging down nodes, as the leader would)."""
        return {f.node: f for f in await PROVIDER.monitor(self.cluster())}

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
        out = self.shared / f"{name}.out"
        script = self.shared / f"{name}.sh"
        script.write_text(f"#!/bin/sh\nsleep {sleep}\nhostname\nid -un\n")
        script.chmod(0o755)
        extra = ["-l", f"nodes={where}"] if where else []
        done = self.client("head", "qsub", "-N", name, "-j", "oe", "-o", str(out), *extra,
                           str(script), user=USER)
        assert done.returncode == 0, f"qsub failed: {done.stdout}{done.stderr}"
        return out

    async def ran(self, out: Path, *, limit: float = 120.0) -> list[str]:
        """The job's output lines once pbs_mom has copied them back."""
        async def written() -> bool:
            return len(_words(out)) >= 2
        await until(written, f"the output of {out.name}", limit=limit)
        return _words(out)


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []
