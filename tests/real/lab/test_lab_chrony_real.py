"""A lab pool host serves time as a real one does: chronyd -x in its namespace answers a
client in another namespace, on its own address only, and nothing of it outlives the lab."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cloudd_lab.agentlab import AgentLab
from cloudd_lab.netlab import NetLab
from cloudd_lab.timeserver import TimeServer, query

pytestmark = pytest.mark.netns

PREFIX = "h12n"
SUBNET = "10.242.14.0/24"


def chronyds_under(path: Path) -> list[str]:
    """Pids of every chronyd whose command line names a file under `path`."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if "chronyd" in line and str(path) in line]


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def test_a_namespace_serves_time_to_another_on_its_address_only(
        tmp_path: Path, have: Callable[[str], str]) -> None:
    have("chronyd")
    with NetLab(PREFIX, subnet=SUBNET) as lab:
        host, node = lab.add_netns("pm1"), lab.add_netns("node1")
        server = TimeServer(host.name, host.ip, SUBNET, tmp_path / "pm1")
        try:
            server.start()
            asked = query(node.name, host.ip, folder=tmp_path / "q1")
            assert asked.returncode == 0, asked.stdout + asked.stderr
            assert "System clock wrong by" in asked.stdout + asked.stderr
            clients = server.chronyc("clients")
            assert clients.returncode == 0 and node.ip in clients.stdout, clients
            # bound to its namespace's address: nothing answers on the namespace's loopback
            local = query(host.name, "127.0.0.1", folder=tmp_path / "q2", timeout=3)
            assert local.returncode != 0, local.stdout + local.stderr
            assert "Disabled control of system clock" in server.log_path.read_text()
        finally:
            server.stop()
        assert server.proc is not None and server.proc.returncode is not None
        assert chronyds_under(tmp_path) == []
        # chronyd removes its pid file and socket when it stops
        assert not server.socket.exists() and not (server.folder / "chronyd.pid").exists()
        server.stop()  # twice is fine
        try:  # and it starts again (a host powered on again)
            server.start()
            again = query(node.name, host.ip, folder=tmp_path / "q3")
            assert again.returncode == 0, again.stdout + again.stderr
        finally:
            server.stop()
        assert chronyds_under(tmp_path) == []
    assert PREFIX not in namespaces()


def test_an_agent_labs_pool_hosts_serve_its_nodes_and_go_with_it() -> None:
    lab = AgentLab(PREFIX, hosts=2, subnet=SUBNET, time_servers=True,
                   agent_nodes=("lab-database-1",))
    with lab:
        node = lab.agents["lab-database-1"].ns
        for host in ("pm1", "pm2"):
            address = lab.agents[host].ns.ip
            asked = query(node.name, address, folder=lab.root / f"q-{host}")
            assert asked.returncode == 0, (host, asked.stdout + asked.stderr)
            assert lab.time_server(host).folder.is_relative_to(lab.root)
        root = lab.root
    assert chronyds_under(root) == [] and not root.exists()
    assert PREFIX not in namespaces()
