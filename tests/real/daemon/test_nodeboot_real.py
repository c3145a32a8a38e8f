"""A node's agent from its identity alone, in network namespaces: it fetches the manifest from
the pool hosts' agents, then joins like any member."""

from __future__ import annotations

import subprocess

import pytest
from cloudd_lab.agentlab import CLOUDD, AgentLab

from cloudd.config.agent import DEFAULT_PORT
from cloudd.config.manifest import load_cloud
from cloudd.providers.catalog import catalog


class SeedLab(AgentLab):
    """Pool host agents from files; node agents from an identity file alone."""

    def start(self, name: str) -> None:
        if name.startswith("pm"):
            return super().start(name)
        agent = self.agents[name]
        role = name.split("-")[1]
        hosts = ",".join(f"{n}@{a.ns.ip}:{DEFAULT_PORT}" for n, a in self.agents.items()
                         if n.startswith("pm"))
        line = agent.folder / "cmdline"
        line.write_text(f"cloudd.cloud=lab cloudd.node={name} cloudd.role={role} "
                        f"cloudd.ip={agent.ns.address} cloudd.members={hosts} cloudd.term=0 "
                        f"cloudd.pki={self.root / 'pki'}\n")
        (agent.folder / "manifests" / "lab.yaml").unlink(missing_ok=True)
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, CLOUDD, "--from-cmdline", str(line),
             "--state-dir", str(agent.folder)],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True)
        return None


@pytest.mark.netns
def test_node_agent_fetches_the_manifest_and_joins() -> None:
    with SeedLab("seed", hosts=2, subnet="10.234.7.0/24", node_agents=True,
                 nodes={"database": 1, "server": 1, "balancer": 1}) as lab:
        lab.start_all()
        leader = lab.wait_for("a leader among the hosts", lambda: lab.one_leader(["pm1", "pm2"]))
        for name in ("lab-database-1", "lab-server-1", "lab-balancer-1"):
            manifest = lab.agents[name].folder / "manifests" / "lab.yaml"
            lab.wait_for(f"{name} has the manifest", manifest.exists, timeout=60)
            assert load_cloud(manifest, catalog()).name == "lab"
        # each node takes the manifest it fetched (its watcher's next scan) and joins; a
        # member nobody has heard from counts as alive, so "alive" alone proves nothing
        for name in ("lab-database-1", "lab-server-1", "lab-balancer-1"):
            lab.wait_for(f"{name} joined", lambda n=name: "cloud_joined" in lab.log_text(n),
                         timeout=60)
        lab.wait_for("the leader hears every node", lambda: all(
            (s := lab.status(leader[0])) is not None
            and s["members"][n] == "alive" for n in ("lab-database-1", "lab-server-1")))
        log = lab.log_text("lab-database-1")
        # asked for it, or offered it by a host first: either way it came from the pool
        assert ("manifest_received" in log or "manifest_installed" in log)
        assert "cloud_joined" in log
