"""A real web cloud on one machine: four network namespaces on a bridge, real services.

`WebLab` plays both sides a cloudd agent plays: the node side (render, write, prepare, start
the role's services, reload them) and the leader side (judge servers' health, hand peers to
the balancer). Each node's services run under its own real `Supervisor`; every wait is bounded
(generously), so a broken service fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cloudd_lab.netlab import NetLab, Netns

from cloudd.providers.base import (
    Assignment,
    Changes,
    ClusterView,
    Peer,
    apply_rendered,
    converge,
    read_secrets,
)
from cloudd.providers.policy import State
from cloudd.providers.probes import run_probe
from cloudd.providers.supervisor import ServiceStatus, Supervisor
from cloudd.providers.web.provider import PROVIDER

PREFIX = "h8web"
SUBNET = "10.232.0.0/24"
APP_PORT, BALANCER_PORT = 8080, 80
SETTINGS = {"app_port": APP_PORT, "balancer_port": BALANCER_PORT, "database_name": "guestbook",
            "database_user": "guestbook", "database_password_ref": "db_password"}
LABELS = {"db": "database", "s1": "server", "s2": "server", "lb": "balancer"}


async def until(check: Callable[[], Awaitable[bool]], what: str, *, limit: float = 60.0) -> None:
    """Poll `check()` (async, -> bool) every 0.2 s until true; fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(0.2)


@dataclass
class WebLab:
    net: NetLab
    root: Path
    secrets: Path
    ns: dict[str, Netns]
    health: dict[str, bool] = field(default_factory=dict)
    sups: dict[str, Supervisor] = field(default_factory=dict)

    def node(self, label: str) -> str:
        return f"w-{label}"

    def peers(self) -> tuple[Peer, ...]:
        return tuple(Peer(self.node(label), role, self.ns[label].ip,
                          self.health.get(label, True)) for label, role in LABELS.items())

    def cluster(self) -> ClusterView:
        return ClusterView(cloud="w", nodes=self.peers(), settings=SETTINGS)

    def assignment(self, label: str) -> Assignment:
        return Assignment(cloud="w", node=self.node(label), role=LABELS[label],
                          address=self.ns[label].ip, root=self.root / label,
                          secrets_dir=self.secrets, settings=SETTINGS,
                          peers=tuple(p for p in self.peers() if p.node != self.node(label)),
                          exec_prefix=("ip", "netns", "exec", self.ns[label].name))

    def render(self, label: str, assignment: Assignment | None = None) -> Changes:
        a = assignment or self.assignment(label)
        role = PROVIDER.role(a.role)
        return apply_rendered(role.render(a, read_secrets(a, role.secrets(a))))

    async def converge(self, label: str) -> None:
        """What a node agent does with its assignment: packages, files, prepare, services."""
        a = self.assignment(label)
        done = await converge(PROVIDER, a)
        assert done.installed == ()  # the suite's machine has them all
        sup = self.sups[label] = Supervisor(done.services, state_dir=a.root / "state",
                                            node=a.node)
        await sup.start()
        await self.running(label)

    def service(self, label: str) -> ServiceStatus:
        (status,) = self.sups[label].status().values()
        return status

    async def running(self, label: str, *, not_pid: int | None = None) -> ServiceStatus:
        """Wait (bounded) until the node's service is RUNNING and ready (with a new pid)."""
        sup = self.sups[label]
        (name,) = sup.units
        try:
            return await sup.wait_for(
                name, lambda s: s.state is State.RUNNING and s.ready and s.pid != not_pid,
                within=90)
        except TimeoutError:
            log = self.root / label / "log" / f"{name}.out"
            pytest.fail(f"{name} on {label} not running: {self.service(label)}; "
                        f"{log.read_text()[-2000:] if log.exists() else ''}")

    async def reload(self, label: str) -> None:
        (name,) = self.sups[label].units
        await self.sups[label].reload(name)

    async def kill9(self, label: str) -> int:
        """kill -9 the service's main process; the supervisor notices and restarts it."""
        pid = self.service(label).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await self.running(label, not_pid=pid)
        return pid

    async def stop_all(self) -> None:
        for label in reversed(list(self.sups)):
            await self.sups.pop(label).stop(within=30)

    async def judge_servers(self) -> None:
        """The leader's view: a server is healthy when its readiness probe passes."""
        for label in ("s1", "s2"):
            (spec,) = PROVIDER.role("server").services(self.assignment(label))
            assert spec.readiness is not None
            outcome = await run_probe(replace(spec.readiness, timeout=1.0))
            self.health[label] = outcome.ok
