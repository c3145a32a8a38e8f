"""An AppScale deployment's SSH side on one machine: a master and nodes, each with a real sshd.

Each node is a `nodens` test node (its own network, hostname, and private /root, /etc/ssh,
/run), so that each sshd has its own host key, drop-in and root's authorized_keys, installed
here from `cloudd.providers.appscale.sshtrust`'s output as a node's agent would write it. The
tools (the lab's stand-in for `appscale`) run in the master's namespaces through
`cloudd.providers.appscale.tools`, in a deployment folder every node sees at the same path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from cloudd_lab.appscale_standin import LEDGER_ENV
from cloudd_lab.nodens import DEFAULT_PRIVATE, NodeLab, NodeNs

from cloudd.providers.appscale import sshtrust
from cloudd.providers.appscale.tools import ToolsSettings

PREFIX = "h24a"
SUBNET = "10.239.44.0/24"
CLOUD = KEYNAME = "as1"
#: Each node's own root home, ssh configuration and /run (sshd's privilege separation folder).
PRIVATE = (*DEFAULT_PRIVATE, "/root", "/etc/ssh")
ROOT_HOME = PurePosixPath("/root")
#: The lab's nodes: label -> (hostname, AppScale roles of its ips_layout entry).
NODES = {"m": ("as-head", ["master", "database", "zookeeper"]),
         "w1": ("as-w1", ["compute"]),
         "w2": ("as-w2", ["compute"])}


@dataclass
class ASLab:
    nodes: NodeLab
    client_seed: bytes = field(default_factory=lambda: os.urandom(32))
    host_seed: bytes = field(default_factory=lambda: os.urandom(32))
    ns: dict[str, NodeNs] = field(default_factory=dict)
    sshd: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.nodes.root / "deployment"

    @property
    def ledger(self) -> Path:
        return self.nodes.root / "ledger.jsonl"

    def build(self) -> None:
        for label, (hostname, _) in NODES.items():
            node = self.ns[label] = self.nodes.add(label, hostname=hostname)
            etc = node.outside("/etc/ssh")
            for name in ("sshd_config", "ssh_config", "moduli"):
                shutil.copy2(Path("/etc/ssh") / name, etc / name)
            (etc / "sshd_config.d").mkdir(mode=0o755)
            node.outside("/run/sshd").mkdir(mode=0o755)
        self.folder.mkdir(mode=0o755)
        layout = [{"roles": roles, "nodes": self.ip(label)}
                  for label, (_, roles) in NODES.items()]
        (self.folder / "AppScalefile").write_text(yaml.safe_dump({
            "ips_layout": layout, "keyname": KEYNAME, "group": KEYNAME,
            "admin_user": "admin@example.com", "admin_pass": "h24a-password"}))
        (self.folder / "appscale").write_text(
            f"#!{sys.executable}\nfrom cloudd_lab.appscale_standin import main\n"
            "raise SystemExit(main())\n")
        (self.folder / "appscale").chmod(0o755)

    def ip(self, label: str) -> str:
        return self.ns[label].ip

    def trust_nodes(self) -> list[sshtrust.TrustNode]:
        return [sshtrust.TrustNode(self.ip(label), hostname)
                for label, (hostname, _) in NODES.items()]

    # ---- what a node's agent writes ------------------------------------------------------
    def write(self, label: str, path: PurePosixPath, text: str, mode: int) -> None:
        where = self.ns[label].outside(path)
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        where.write_text(text)
        where.chmod(mode)

    def install_trust(self, label: str) -> None:
        """The node's share of the trust: host key, sshd drop-in, root's authorized_keys line
        (and the master's key and known_hosts on the master)."""
        for f in sshtrust.node_files(self.host_seed, cloud=CLOUD):
            self.write(label, f.path, f.text, f.mode)
        public = sshtrust.client_key(self.client_seed, cloud=CLOUD).public_line
        line = sshtrust.authorized_keys_line(public, master=self.ip("m"))
        keys = self.ns[label].outside(sshtrust.AUTHORIZED_KEYS_PATH)
        old = keys.read_text() if keys.exists() else ""
        self.write(label, sshtrust.AUTHORIZED_KEYS_PATH,
                   sshtrust.merge_authorized_keys(old, line), 0o600)
        if label == "m":
            for f in (*sshtrust.master_files(self.client_seed, self.host_seed, cloud=CLOUD,
                                             keyname=KEYNAME, home=ROOT_HOME,
                                             nodes=self.trust_nodes()),
                      *sshtrust.tools_wrappers(home=ROOT_HOME, keyname=KEYNAME)):
                self.write(label, f.path, f.text, f.mode)

    def wipe_root_ssh(self, label: str) -> None:
        shutil.rmtree(self.ns[label].outside("/root/.ssh"), ignore_errors=True)

    # ---- sshd ----------------------------------------------------------------------------
    def spawn_sshd(self, label: str) -> None:
        """The node's sshd in the foreground (-D), logging to the lab's folder (-e)."""
        with open(self.nodes.root / f"sshd-{label}.log", "ab") as log:
            self.sshd[label] = subprocess.Popen(
                self.ns[label].argv(["/usr/sbin/sshd", "-D", "-e"]), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)

    async def start_sshd(self, label: str) -> None:
        self.spawn_sshd(label)
        await self.until_listening(label)

    async def until_listening(self, label: str, *, limit: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            if self.sshd[label].poll() is not None:
                text = (self.nodes.root / f"sshd-{label}.log").read_text()
                pytest.fail(f"sshd on {label} exited: {text[-2000:]}")
            try:
                _, writer = await asyncio.open_connection(self.ip(label), 22)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline:
                    pytest.fail(f"sshd on {label} not listening after {limit:g}s")
                await asyncio.sleep(0.2)

    def kill_sshd(self, label: str) -> None:
        proc = self.sshd.pop(label)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for label in list(self.sshd):
            self.kill_sshd(label)

    # ---- the master's side ---------------------------------------------------------------
    def settings(self) -> ToolsSettings:
        master = self.ns["m"]
        # nsenter starts at / of the mount namespace it enters: --wd keeps the folder.
        prefix = (*master.exec_prefix[:-1], f"--wd={self.folder}", "--")
        return ToolsSettings(appscale=self.folder / "appscale", folder=self.folder,
                             home=Path(ROOT_HOME), prefix=prefix, up_within=120.0,
                             status_within=120.0, down_within=120.0,
                             env={LEDGER_ENV: str(self.ledger),
                                  "PYTHONPATH": os.environ.get("PYTHONPATH", "")})

    def ssh_from(self, label: str, target: str, *, known_hosts: str | None = None,
                 key_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """ssh as root from node `label` to `target` with the master's options; another
        known_hosts text or another key, when given, replaces the master's."""
        opts = list(sshtrust.ssh_options(home=ROOT_HOME, keyname=KEYNAME))
        scratch = self.nodes.root / f"scratch-{label}"
        scratch.mkdir(mode=0o700, exist_ok=True)
        if known_hosts is not None:
            (scratch / "known_hosts").write_text(known_hosts)
            mine = f"UserKnownHostsFile={sshtrust.known_hosts_path(ROOT_HOME, KEYNAME)}"
            opts[opts.index(mine)] = f"UserKnownHostsFile={scratch / 'known_hosts'}"
        if key_text is not None:
            (scratch / "key").write_text(key_text)
            (scratch / "key").chmod(0o600)
            opts[opts.index("-i") + 1] = str(scratch / "key")
        return self.ns[label].run(["ssh", *opts, f"root@{target}", "hostname"], timeout=60)
