"""An AppScale cloud kept by real agents: a pool host and three `managed: false` nodes in
namespaces, each node's agent with a private /etc/ssh and /root (a mount namespace of its own)
and its own real sshd, against the lab's stand-in for the AppScale tools (not AppScale).

The manifest lists the master's address under master, database and zookeeper (one node,
three roles) and two compute nodes. Through the daemon only: the leader makes the SSH seeds
and keeps them in the record, assigns each node its roles, each node's agent writes the
deployment's host key and drop-in (and the master its AppScalefile, key, known_hosts and the
tools' ssh wrappers), the leader's configure hands every node the master's key and has the
master run `appscale up` as a job; monitor puts the tools' status beside each node in
`inspect`. Then a compute node is respawned (its agent and sshd killed, its /etc/ssh and
/root emptied, its agent started again): down then up; and `cloudd-cli stop`: down, before the
cloud stops.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import CLOUDD, AgentLab
from cloudd_lab.appscale_standin import LEDGER_ENV

pytestmark = [pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[4]
BOUND = 240.0
MASTER, W1, W2 = "lab-master-1", "lab-compute-1", "lab-compute-2"
NODES = (MASTER, W1, W2)
DROPIN = "sshd_config.d/cloudd-appscale.conf"


class ASAgentLab(AgentLab):
    """Node agents in mount namespaces of their own (private /etc/ssh and /root), each node
    with its sshd started by the test once its agent wrote the deployment's host key."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sshd: dict[str, subprocess.Popen[bytes]] = {}
        self.ledger = self.root / "ledger.jsonl"
        self.tools = self.root / "appscale"
        self.tools.write_text(
            f"#!{sys.executable}\nimport os, sys\n"
            f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'lab')!r}]\n"
            f"os.environ[{LEDGER_ENV!r}] = {str(self.ledger)!r}\n"
            "from cloudd_lab.appscale_standin import main\nraise SystemExit(main())\n")
        self.tools.chmod(0o755)
        self.root.chmod(0o755)

    def private(self, node: str, what: str) -> Path:
        return self.root / "private" / node / what

    def fresh_node_folders(self, node: str) -> None:
        """A node's /etc/ssh (the machine's config, no host keys) and an empty /root."""
        etc, home = self.private(node, "etc-ssh"), self.private(node, "root")
        for folder in (etc, home):
            shutil.rmtree(folder, ignore_errors=True)
        (etc / "sshd_config.d").mkdir(parents=True)
        home.mkdir(mode=0o700)
        for name in ("sshd_config", "ssh_config", "moduli"):
            shutil.copy2(Path("/etc/ssh") / name, etc / name)

    def manifest(self, members: Sequence[Any]) -> str:
        text = super().manifest(members)
        master = self.node_addresses[MASTER]
        secret = self.root / "admin-password"
        secret.write_text("h24g-admin-password\n")
        secret.chmod(0o600)
        return (text.replace("roles:\n", f"roles:\n  database: [{{address: {master}}}]\n"
                             f"  zookeeper: [{{address: {master}}}]\n", 1)
                + "settings:\n  admin_password_ref: admin\n  keyname: as2\n"
                + f"  tools: {self.tools}\n"
                + '  sshd_reload: ["pkill", "-HUP", "-F", "/root/sshd.pid"]\n'
                + f"secrets: {{admin: {{file: {secret}}}}}\n"
                + "timing: {monitor_interval: 3}\n")

    def start(self, name: str) -> None:
        if name.startswith("pm"):
            super().start(name)
            return
        agent = self.agents[name]
        if not self.private(name, "etc-ssh").exists():
            self.fresh_node_folders(name)
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.signalled = False
        script = (f"mount --bind {self.private(name, 'etc-ssh')} /etc/ssh && "
                  f"mount --bind {self.private(name, 'root')} /root && "
                  f"exec {CLOUDD} --config {agent.folder / 'agent.yaml'}")
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, "unshare", "--mount",
             "--propagation", "private", "--", "/bin/sh", "-c", script],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True)

    def start_sshd(self, node: str) -> None:
        proc = self.agents[node].proc
        assert proc is not None and proc.poll() is None, f"{node}'s agent is not running"
        with open(self.root / f"sshd-{node}.log", "ab") as log:
            self.sshd[node] = subprocess.Popen(
                ["nsenter", "-t", str(proc.pid), "-m", "-n", "--", "/usr/sbin/sshd", "-D", "-e",
                 "-o", "PidFile=/root/sshd.pid"], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)

    def stop_sshd(self, node: str) -> None:
        proc = self.sshd.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def close(self) -> None:
        for node in list(self.sshd):
            self.stop_sshd(node)
        super().close()

    def commands(self) -> list[str]:
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return [" ".join(json.loads(line)["argv"][1:]) for line in lines]

    def nodes_view(self) -> dict[str, dict[str, Any]]:
        """node -> its row in the acting leader's `inspect --json`."""
        for name, status in self.statuses(["pm1"]).items():
            if status and status.get("acting"):
                done = self.cli(name, "inspect", "--json")
                if done.returncode == 0:
                    cloud = json.loads(done.stdout)["clouds"][0]
                    return {n["name"]: n for n in cloud["nodes"]}
        return {}

    def findings(self) -> dict[str, list[dict[str, Any]]]:
        return {n: row["findings"] for n, row in self.nodes_view().items()}


@pytest.fixture
def lab(have) -> Iterator[ASAgentLab]:  # type: ignore[no-untyped-def]
    for program in ("sshd", "ssh", "nsenter", "unshare", "pkill"):
        have(program)
    with ASAgentLab("h24g", hosts=1, subnet="10.239.45.0/24", node_agents=True,
                    cloud_type="appscale", nodes={"master": 1, "compute": 2}) as lab:
        yield lab


def sshd_once_keyed(lab: ASAgentLab, nodes: Sequence[str]) -> None:
    """Start each node's sshd once its agent wrote the deployment's host key drop-in."""
    for node in nodes:
        if node not in lab.sshd and (lab.private(node, "etc-ssh") / DROPIN).exists():
            lab.start_sshd(node)


def loaded(lab: ASAgentLab) -> bool:
    found = lab.findings()
    states = [next((f for f in found.get(n, []) if f["check"] == "appscale"), None)
              for n in NODES]
    return all(f is not None and f["ok"] for f in states)


def test_the_daemon_keeps_an_appscale_deployment_through_a_respawn_and_a_stop(
        lab: ASAgentLab) -> None:
    t0 = time.monotonic()
    lab.start_all()
    lab.wait_for("every node's sshd keyed and the deployment up, each node loaded", lambda: (
        sshd_once_keyed(lab, NODES) or (lab.commands()[:1] == ["up"] and loaded(lab))),
        timeout=BOUND, interval=1.0)
    print(f"\nup and loaded after {time.monotonic() - t0:.0f} s: {lab.commands()}")
    master = lab.agents[MASTER].folder / "state" / "nodes" / MASTER
    text = (master / "deployment" / "AppScalefile").read_text()
    assert "roles: [master, database, zookeeper]" in text or \
        "roles: [zookeeper, database, master]" in text, text
    # root's trust, handed out by the leader: the master's key, from the master's address
    for node in NODES:
        keys = (lab.private(node, "root") / ".ssh" / "authorized_keys").read_text()
        assert f'from="{lab.node_addresses[MASTER]}"' in keys, (node, keys)
    # only the master holds the client key's seed
    for node in NODES:
        seeds = sorted(p.name for p in (lab.agents[node].folder / "state" / "nodes" / node
                                        / "secrets").iterdir() if p.name.endswith(".seed"))
        assert seeds == (["ssh-client.seed", "ssh-host.seed"] if node == MASTER
                         else ["ssh-host.seed"]), (node, seeds)

    # a compute node respawned: its agent and sshd gone, its machine's folders emptied
    lab.kill(W1)
    lab.stop_sshd(W1)
    lab.fresh_node_folders(W1)
    lab.wait_for(f"{W1} dead to the leader", lambda: lab.nodes_view().get(W1, {}).get(
        "agent_liveness") == "dead" or None, timeout=BOUND, interval=1.0)
    lab.start(W1)
    lab.wait_for("down then up after the respawn, every node loaded again", lambda: (
        sshd_once_keyed(lab, [W1]) or ("down" in lab.commands()
                                       and lab.commands()[-1] != "down" and loaded(lab))),
        timeout=BOUND, interval=1.0)
    ran = lab.commands()
    at = ran.index("down")
    assert ran[at:at + 2] == ["down", "up"], ran
    # before: up (again, when a node's sshd was not listening yet at the first), and looks
    assert ran[0] == "up" and set(ran[1:at]) <= {"up", "status --verbose"}, ran

    # the operator stops the cloud: appscale down before the nodes stop
    done = lab.cli("pm1", "stop", lab.cloud_name, timeout=120)
    assert done.returncode == 0, done.stderr
    lab.wait_for("appscale down after the stop", lambda: (lab.commands()[-1] == "down"
                 and lab.commands().count("down") == 2) or None, timeout=BOUND, interval=1.0)
    print(f"commands the tools received: {lab.commands()}")
