"""A real web cloud on one machine: four network namespaces on a bridge, real services.

`WebLab` plays both sides a cloudd agent plays: the node side (render, write, prepare, start
the role's services, reload them) and the leader side (judge servers' health, hand peers to
the balancer). The services run as real processes in their own sessions; every wait is a poll
with a generous bound, so a broken service fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import pytest

from cloudd.providers.base import (
    Assignment,
    Changes,
    ClusterView,
    Peer,
    apply_rendered,
    ensure_packages,
    read_secrets,
)
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.web.provider import PROVIDER, http_get
from cloudd.vmctl.netlab import NetLab, Netns

PREFIX = "h8web"
SUBNET = "10.232.0.0/24"
SETTINGS = {"app_port": 8080, "balancer_port": 80, "buffer_pool_mib": 16}
LABELS = {"db": "database", "s1": "server", "s2": "server", "lb": "balancer"}


async def probe(spec: ProbeSpec) -> bool:
    """One run of a probe: True when it passes."""
    try:
        if spec.kind is ProbeKind.HTTP:
            url = urlsplit(spec.url)
            status, _ = await http_get(url.hostname or "", url.port or 80, url.path,
                                       within=spec.timeout)
            return 200 <= status < 400
        if spec.kind is ProbeKind.TCP:
            async with asyncio.timeout(spec.timeout):
                _, writer = await asyncio.open_connection(spec.host, spec.port)
            writer.close()
            return True
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(spec.timeout + 5):
            return await proc.wait() == 0
    except (OSError, TimeoutError):
        return False


async def until(check, what: str, *, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll `check()` (async, -> bool) every 0.2 s until true; fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit:g}s waiting for {what}")
        await asyncio.sleep(0.2)


def _log_file(path: Path) -> BinaryIO:
    return path.open("ab")


@dataclass
class Running:
    spec: ServiceSpec
    proc: asyncio.subprocess.Process


@dataclass
class WebLab:
    net: NetLab
    root: Path
    secrets: Path
    ns: dict[str, Netns]
    health: dict[str, bool] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)

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
        role = PROVIDER.role(a.role)
        assert await ensure_packages(role.packages(a)) == ()  # the suite's machine has them
        self.render(label, a)
        await role.prepare(a)
        for spec in role.services(a):
            await self.start(label, spec)

    async def start(self, label: str, spec: ServiceSpec) -> None:
        with _log_file(self.root / label / "log" / f"{spec.name}.out") as log:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, cwd=spec.cwd, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
        self.running[label] = Running(spec, proc)
        assert spec.readiness is not None
        readiness = spec.readiness
        await until(lambda: self._ready(label, readiness), f"{spec.name} on {label} ready")

    async def _ready(self, label: str, spec: ProbeSpec) -> bool:
        proc = self.running[label].proc
        if proc.returncode is not None:
            out = (self.root / label / "log" / f"{self.running[label].spec.name}.out")
            pytest.fail(f"{label} exited with {proc.returncode}: {out.read_text()[-2000:]}")
        return await probe(spec)

    async def reload(self, label: str) -> None:
        spec = self.running[label].spec
        assert spec.reload_argv is not None
        if not spec.reload_argv:
            os.kill(self.running[label].proc.pid, signal.SIGHUP)
            return
        proc = await asyncio.create_subprocess_exec(*spec.reload_argv)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, f"reload of {spec.name} failed"

    async def kill9_and_restart(self, label: str) -> None:
        """kill -9 the service's main process, clear its group as a supervisor does, restart."""
        run = self.running[label]
        os.kill(run.proc.pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            await run.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)  # nginx's workers outlive their master
        await self.start(label, run.spec)

    async def stop_all(self) -> None:
        for run in reversed(list(self.running.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await run.proc.wait()
            except TimeoutError:
                os.killpg(run.proc.pid, signal.SIGKILL)
                await run.proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
        self.running.clear()

    async def judge_servers(self) -> None:
        """The leader's view: a server is healthy when its readiness probe passes."""
        for label in ("s1", "s2"):
            (spec,) = PROVIDER.role("server").services(self.assignment(label))
            assert spec.readiness is not None
            self.health[label] = await probe(replace(spec.readiness, timeout=1.0))


@pytest.fixture
def webroot(have) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """The nodes' root dirs. Not under pytest's tmp_path: its parents are 0700, and mysql and
    www-data must traverse to their files."""
    for program in ("nginx", "mariadbd", "mariadb-install-db", "ruby", "setpriv"):
        have(program)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/var/tmp"))
    root.chmod(0o755)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "db_password").write_text("correct horse 'battery'\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def weblab(webroot: Path) -> AsyncIterator[WebLab]:
    root, secrets = webroot, webroot / "secrets"
    net = NetLab(PREFIX, subnet=SUBNET)
    lab = None
    try:
        with net:
            lab = WebLab(net=net, root=root, secrets=secrets,
                         ns={label: net.add_netns(label) for label in LABELS})
            yield lab
            await lab.stop_all()
    finally:
        if lab is not None:
            await lab.stop_all()
