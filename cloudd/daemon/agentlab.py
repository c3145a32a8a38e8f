"""Real agent processes, each in its own network namespace on one bridge, for tests and benches.

`AgentLab` makes the cluster PKI, one folder per agent (settings, manifests, state, API
socket, log), writes the same manifest into every member's manifest folder (as an operator
dropping it on each host would), and runs `cloudd` in each namespace. It asks each agent for
its view through the agent's own local API (`status`), and cuts or kills agents on request.
Everything it made is removed by `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudd.daemon.api import ApiClient, ApiError
from cloudd.daemon.pki import init_ca, issue
from cloudd.vmctl.netlab import NetLab, Netns

REPO = Path(__file__).resolve().parents[2]  # the checkout (manifests/templates)
CLOUDD = str(Path(sys.executable).parent / "cloudd")


@dataclass
class AgentProc:
    name: str
    ns: Netns
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: Any = None

    @property
    def socket(self) -> Path:
        return self.folder / "api.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "agent.log"


@dataclass
class AgentLab:
    """`hosts` pool host agents; `nodes` is role -> count of unmanaged nodes (agents too when
    `node_agents`)."""

    prefix: str
    hosts: int
    nodes: dict[str, int] = field(default_factory=lambda: {"balancer": 1, "server": 1,
                                                           "database": 1})
    cloud_type: str = "web"
    profile: str = "local"
    subnet: str = "10.234.0.0/24"
    node_agents: bool = False
    extra_settings: str = ""

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"cloudd-{self.prefix}-"))
        self.net = NetLab(self.prefix, subnet=self.subnet)
        self.agents: dict[str, AgentProc] = {}
        self.node_addresses: dict[str, str] = {}

    # -- building -------------------------------------------------------------------------
    def open(self) -> AgentLab:
        self.net.open()
        pki = self.root / "pki"
        pki.mkdir()
        now = dt.datetime.now(dt.UTC)
        init_ca(pki, now=now)
        members: list[tuple[str, Netns | None, str]] = []
        for i in range(1, self.hosts + 1):
            ns = self.net.add_netns(f"pm{i}")
            members.append((f"pm{i}", ns, ns.ip))
        for role, count in self.nodes.items():
            for j in range(1, count + 1):
                name = f"lab-{role}-{j}"
                if self.node_agents:
                    ns = self.net.add_netns(f"{role[:8]}{j}")
                    members.append((name, ns, ns.ip))
                else:
                    members.append((name, None, str(self.net.allocate().ip)))
                self.node_addresses[name] = members[-1][2]
        manifest = self.manifest(members)
        for name, ns, address in members:
            issue(pki, name, now=now, addresses=[address])
            if ns is None:
                continue
            folder = self.root / name
            (folder / "manifests" / "templates").mkdir(parents=True)
            shutil.copy(REPO / "manifests" / "templates" / f"{self.cloud_type}.xml",
                        folder / "manifests" / "templates")
            (folder / "manifests" / "lab.yaml").write_text(manifest)
            (folder / "agent.yaml").write_text(
                f"name: {name}\nprofile: {self.profile}\n"
                f"listen: {{address: {address}}}\n"
                f"pki: {{ca: {pki}/ca.crt, cert: {pki}/{name}.crt, key: {pki}/{name}.key}}\n"
                f"libvirt: {{uri: 'test:///default'}}\n"
                f"state_dir: {folder / 'state'}\nmanifest_dir: {folder / 'manifests'}\n"
                f"api_socket: {folder / 'api.sock'}\n{self.extra_settings}")
            self.agents[name] = AgentProc(name, ns, folder)
        return self

    def manifest(self, members: Sequence[tuple[str, Netns | None, str]]) -> str:
        pool = "\n".join(f"  - {{name: {n}, address: {a}, libvirt_uri: 'test:///default'}}"
                         for n, _, a in members if n.startswith("pm"))
        roles = []
        for role in self.nodes:
            roles.append(f"  {role}:")
            for n, _, a in members:
                if n.startswith(f"lab-{role}-"):
                    roles.append(f"    - {{name: {n}, address: {a}, managed: false}}")
        return (f"apiVersion: cloudd/v1\nkind: Cloud\nname: lab\ntype: {self.cloud_type}\n"
                f"domain_template: templates/{self.cloud_type}.xml\npool:\n{pool}\n"
                "roles:\n" + "\n".join(roles) + "\n")

    # -- processes ------------------------------------------------------------------------
    def start(self, name: str) -> None:
        agent = self.agents[name]
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, CLOUDD, "--config",
             str(agent.folder / "agent.yaml")],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True)

    def start_all(self) -> None:
        for name in self.agents:
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        agent = self.agents[name]
        if agent.proc is not None and agent.proc.poll() is None:
            os.killpg(agent.proc.pid, sig)
            agent.proc.wait(timeout=60)

    def cut(self, name: str) -> None:
        self.net.cut(self.agents[name].ns)

    def restore(self, name: str) -> None:
        self.net.restore(self.agents[name].ns)

    def running(self) -> list[str]:
        return [n for n, a in self.agents.items() if a.proc is not None and a.proc.poll() is None]

    # -- observing ------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any] | None:
        async def ask() -> Any:
            return await ApiClient(self.agents[name].socket, timeout=5).call("status")
        try:
            return asyncio.run(ask())
        except (ApiError, OSError, TimeoutError):
            return None

    def statuses(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Any] | None]:
        return {n: self.status(n) for n in (names or self.running())}

    def acting(self, names: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """(agent, term) of every agent that says it is acting."""
        return [(n, s["term"]) for n, s in self.statuses(names).items()
                if s is not None and s.get("acting")]

    def wait_for(self, what: str, check: Callable[[], Any], *, timeout: float = 90.0,
                 interval: float = 0.05) -> Any:
        end = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"not within {timeout} s: {what}; statuses: "
                                     f"{self.statuses()}")
            time.sleep(interval)

    def one_leader(self, names: Sequence[str] | None = None) -> tuple[str, int] | None:
        """The acting leader, when exactly one agent acts and every agent asked follows it."""
        names = list(names or self.running())
        acting = self.acting(names)
        if len(acting) != 1:
            return None
        leader, term = acting[0]
        views = self.statuses(names)
        if all(v is not None and v.get("leader") == leader for v in views.values()):
            return leader, term
        return None

    def log_text(self, name: str) -> str:
        return self.agents[name].log_path.read_text(errors="replace")

    # -- cleanup --------------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.agents):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
            if self.agents[name].log_file is not None:
                self.agents[name].log_file.close()
        self.net.close()
        if os.environ.get("CLOUDD_KEEP_LAB"):
            print(f"lab kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> AgentLab:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
