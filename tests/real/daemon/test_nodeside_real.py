"""NodeSide with the real web provider: a MariaDB `database` node in its own network namespace,
its grants following the servers it is assigned."""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.netlab import NetLab
from shared.procs import alive

from cloudd.config.agent import LOCAL, AgentSettings, Reconcile
from cloudd.config.model import Cloud, Ensure, Node, PoolHost, Secret
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, PeerInfo, RoleAssignment
from cloudd.daemon.node.converge import NodeSide, node_root
from cloudd.providers.web.spec import WebSettings


# ---- the real web provider: a MariaDB `database` node in its own network namespace ------
async def _until_async(check: Callable[[], Any], what: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
def dbroot(have: Callable[[str], str]) -> Iterator[Path]:
    """The agent's state dir. Not under tmp_path: its parents are 0700 and mysql must reach
    its files."""
    for program in ("mariadbd", "mariadb-install-db", "mariadb"):
        have(program)
    base = Path(tempfile.mkdtemp(prefix="h11n-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.services
@pytest.mark.netns
async def test_web_database_node(dbroot: Path) -> None:
    base = dbroot
    reports: list[NodeReport] = []
    with NetLab("h11n", subnet="10.241.11.0/24") as net:
        ns = net.add_netns("db")
        cloud = Cloud(
            name="w", type="web", ensure=Ensure.RUNNING, source=base / "w.yaml",
            digest="g1", domain_template=base / "w.xml",
            pool=(PoolHost("pm1", net.host_ip),), roles=("database",),
            nodes=(Node("w-db", "database", 1, ns.ip, None, 256, 1, managed=False),),
            settings=WebSettings(database_password_ref="db_password"),
            secrets={"db_password": Secret()})  # its contents come with the assignment
        settings = AgentSettings(name="w-db", state_dir=base / "state",
                                 reconcile=Reconcile(**LOCAL["reconcile"]))
        side = NodeSide(me="w-db", cloud=cloud, settings=settings, report=reports.append,
                        exec_prefix=("ip", "netns", "exec", ns.name))
        task = asyncio.create_task(side.run())
        root = node_root(settings, "w-db")

        async def hosts() -> list[str]:
            done = await asyncio.to_thread(net.run, ns, [
                "mariadb", f"--socket={root}/run/mysqld.sock", "--user=root", "-N", "-e",
                "SELECT host FROM mysql.user WHERE user = 'app' ORDER BY host"])
            return done.stdout.split() if done.returncode == 0 else []

        def peers(*addresses: str) -> RoleAssignment:
            return RoleAssignment(
                term=1, cloud="w", node="w-db", role="database", address=ip_address(ns.ip),
                generation="g1", peers=tuple(PeerInfo(f"w-s{i}", "server", ip_address(a), True)
                                             for i, a in enumerate(addresses)),
                secrets=(("db_password", base64.b64encode(b"it's a secret\n").decode()),))

        async def ready() -> bool:
            return bool(reports) and reports[-1].phase == NodePhase.READY

        try:
            side.assign(peers("10.241.11.50"))
            await _until_async(ready, "the database node ready", 120)
            (db,) = reports[-1].services
            assert db.name == "mariadbd" and db.pid is not None
            assert await hosts() == ["10.241.11.50"]
            side.assign(peers("10.241.11.50", "10.241.11.51"))

            async def both() -> bool:
                return await hosts() == ["10.241.11.50", "10.241.11.51"]

            await _until_async(both, "the second server's account", 60)
            assert side.view().services[0].pid == db.pid  # reloaded, not restarted
            assert reports[0].phase == NodePhase.CONVERGING
            assert NodePhase.FAILED not in {r.phase for r in reports}
        finally:
            await side.stop_services()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not alive(db.pid)
