"""A lab whose nodes are real VMs running the agent: the e2e suite's and the demo's cloud.

`VmLab` is an `AgentLab` (pool host agents in network namespaces on one bridge, all sharing
this machine's libvirtd at qemu:///system) whose nodes are managed test guests booting
the lab's `templates/testguest-agent.xml`: the leader fills the kernel command line with the
node's identity and the guest's /init runs the host's own `cloudd --from-cmdline
/proc/cmdline`, which fetches the manifest from the hosts and joins. Each host's fence command
is the lab fence (`cloudd_lab.labfence`), recording when it ran.

Where things live matters: QEMU runs unprivileged, so the kernel and initrd sit in a
world-readable folder, and the guest sees the host's `/` over virtiofs but gets a fresh
`/tmp`, so the lab's root (the PKI the identities name) is under /var/tmp, not /tmp.

The observers (`domains`, `inspect`, `joined`) are blocking, for tests and the demo driver.
`close()` removes the lab's domains too (every domain whose name starts with the cloud's, on
this machine's libvirtd and on `more_libvirtds`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cloudd.client.api import ApiClient, ApiError
from cloudd.vmctl.metadata import from_domain_xml
from cloudd.vmctl.template import domain_name
from cloudd_lab import testguest
from cloudd_lab.agentlab import CLOUDD, AgentLab, lab_root
from cloudd_lab.paths import resource

SYSTEM = "qemu:///system"
#: The domain template whose guests run the agent (package data).
AGENT_TEMPLATE = resource("templates", "testguest-agent.xml")
#: Kernel and initrd of the test guest (world-readable: QEMU runs unprivileged).
GUEST_DIR = Path("/var/tmp/cloudd-e2e-guest")
#: Where lab roots go: visible to the guests through virtiofs (unlike /tmp).
LAB_PARENT = Path("/var/tmp")
#: The host agents list this folder for the planner; the test guest boots no disk.
IMAGES = Path("/var/lib/cloudd/images")


def agent_command() -> str:
    """What the guest's /init runs: the host's own agent, from the guest's identity."""
    return f"exec {CLOUDD} --from-cmdline /proc/cmdline"


def virsh(*args: str, uri: str = SYSTEM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def qemu_pid(domain: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    return None


#: Seconds a guest takes at the least, from its qemu's start, before its agent can answer (its
#: kernel and userland under TCG, then Python: 10 s and more, bench/guest_boot.py). An "alive"
#: sooner is the leader's word on the agent of the qemu before (killed, its death not noticed
#: yet, while a fast restart already started the new one), not a rejoin.
AGENT_START_MIN = 5.0


def started(domain: str) -> float:
    """When `domain`'s qemu started (unix time; 0 when it does not run)."""
    with contextlib.suppress(OSError):
        return Path(f"/run/libvirt/qemu/{domain}.pid").stat().st_mtime
    return 0.0


@dataclass(frozen=True)
class Dom:
    """One domain as libvirt shows it."""

    name: str
    node: str
    host: str
    running: bool
    pid: int | None


@dataclass
class VmLab(AgentLab):
    """`hosts` pool host agents and a web cloud of managed VM nodes running the agent."""

    node_memory_mib: int = 256
    libvirt_uri: str = SYSTEM
    template: Path | None = AGENT_TEMPLATE
    template_values: dict[str, str] = field(default_factory=dict)
    #: the URIs of other libvirtds some pool hosts use (`SecondLibvirtd`), whose domains
    #: `domains` lists too
    more_libvirtds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        # AgentLab made its root under /tmp, which the guests do not see: move it.
        shutil.rmtree(self.root)
        self.root = lab_root(self.prefix, parent=LAB_PARENT)
        self.root.chmod(0o755)
        self.fence_record = self.root / "fences"
        self.image_file = IMAGES / f"{self.cloud_name}-node.img"
        self.node_image = str(self.image_file)
        record, cloud = self.fence_record, self.cloud_name
        self.fence = lambda host: [sys.executable, "-m", "cloudd_lab.labfence", "--uri",
                                   SYSTEM, "--host", host, "--cloud", cloud,
                                   "--record", str(record)]

    def open(self) -> Self:
        self.lock.acquire()  # before removing the prefix's domains: they may be a living lab's
        self.template_values = {"bridge": self.net.bridge, **self.boot_values(),
                                **self.template_values}
        self.remove_domains()
        IMAGES.mkdir(parents=True, exist_ok=True)
        self.prepare_nodes()
        super().open()
        return self

    def boot_values(self) -> dict[str, str]:
        """The template's values for what the guests boot: the test guest's kernel and
        initrd, and the agent's command for its /init."""
        image = testguest.build_test_guest(GUEST_DIR)
        return {"kernel": str(image.kernel), "initrd": str(image.initrd),
                "agent_cmd64": base64.b64encode(agent_command().encode()).decode()}

    def prepare_nodes(self) -> None:
        """What the nodes need before the agents start: the (empty) image every node names."""
        self.image_file.write_bytes(b"")

    # -- the cloud's domains --------------------------------------------------------------
    def domain(self, node: str) -> str:
        return domain_name(self.cloud_name, node)

    @property
    def node_names(self) -> list[str]:
        return list(self.node_addresses)

    def domains(self) -> dict[str, Dom]:
        """Every domain of this lab's cloud, by node name (on the machine's libvirtd and on
        `more_libvirtds`; the qemu pid only of the machine's)."""
        out: dict[str, Dom] = {}
        for uri in (SYSTEM, *self.more_libvirtds):
            listing = virsh("list", "--all", "--name", uri=uri)
            if listing.returncode != 0:
                raise AssertionError(f"virsh list failed: {listing.stderr.strip()}")
            for name in listing.stdout.split():
                xml = virsh("dumpxml", name, uri=uri)
                meta = from_domain_xml(xml.stdout) if xml.returncode == 0 else None
                if meta is None or meta.cloud != self.cloud_name:
                    continue
                running = virsh("domstate", name, uri=uri).stdout.strip() == "running"
                pid = qemu_pid(name) if running and uri == SYSTEM else None
                out[meta.node] = Dom(name, meta.node, meta.host or "", running, pid)
        return out

    def events(self) -> list[str]:
        """The reasons in the acting leader's event log, oldest first (each agent keeps its
        own log: the leader's has the cloud's actions)."""
        view = self.leader_view()
        assert view is not None, "no acting leader answered"
        done = self.cli(view["leadership"]["leader"], "events", "--json", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["reason"] for line in done.stdout.splitlines() if line.strip()]

    def kill_vm(self, node: str) -> int:
        """kill -9 the qemu of `node`'s domain; its pid."""
        pid = qemu_pid(self.domain(node))
        if pid is None:
            raise AssertionError(f"{self.domain(node)} has no qemu running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def power_loss(self, host: str) -> list[str]:
        """A host agent killed with its domains (destroyed): the nodes it ran."""
        lost = [n for n, d in self.domains().items() if d.host == host]
        self.kill(host)
        for node in lost:
            virsh("destroy", self.domain(node))
        return lost

    def bring_back(self, host: str, *, bound: float = 120.0) -> None:
        """A lost host powered on again: its agent starts, and the acting leader sees it alive
        within `bound` seconds (AssertionError if not)."""
        self.start(host)
        poll(f"{host} alive again", lambda: (v := self.leader_view()) is not None and any(
            h["name"] == host and h["liveness"] == "alive" for h in v["hosts"]), bound=bound)

    def remove_domains(self) -> None:
        for uri in (SYSTEM, *self.more_libvirtds):
            for name in virsh("list", "--all", "--name", uri=uri).stdout.split():
                if name.startswith(f"{self.cloud_name}-"):
                    virsh("destroy", name, uri=uri)
                    virsh("undefine", name, uri=uri)

    # -- what the agents say --------------------------------------------------------------
    def inspect(self, name: str) -> dict[str, Any] | None:
        """The cloud's inspect document as agent `name` answers it (None: no answer)."""
        async def ask() -> Any:
            return await ApiClient(self.agents[name].socket, timeout=5).call(
                "inspect", cloud=self.cloud_name)
        try:
            doc = asyncio.run(ask())
        except (ApiError, OSError, TimeoutError):
            return None
        if not isinstance(doc, dict) or not doc.get("clouds"):
            return None
        cloud = doc["clouds"][0]
        return cloud if isinstance(cloud, dict) else None

    def leader_view(self) -> dict[str, Any] | None:
        """The acting leader's own inspect view of the cloud, asked of the running hosts."""
        for name in self.running():
            if not name.startswith("pm"):
                continue
            view = self.inspect(name)
            if view is not None and view.get("source") == "leader" \
                    and view["leadership"]["state"] == "stable":
                return view
        return None

    def joined(self, nodes: Sequence[str] | None = None, *,
               hosts: set[str] | None = None) -> dict[str, Any] | None:
        """The leader's view when every node in `nodes` runs (on `hosts`, if given) and its
        agent is alive in the leader's membership."""
        view = self.leader_view()
        if view is None:
            return None
        by_name = {n["name"]: n for n in view["nodes"]}
        for node in nodes or self.node_names:
            n = by_name.get(node)
            if n is None or n["domain_state"] != "running" or n["agent_liveness"] != "alive":
                return None
            if hosts is not None and n["host"] not in hosts:
                return None
        return view

    def wait_joined(self, nodes: Sequence[str] | None = None, *, since: float, bound: float,
                    hosts: set[str] | None = None,
                    progress: Callable[[float, dict[str, Any] | None], None] | None = None,
                    ) -> dict[str, tuple[float, str]]:
        """Wait until each node's domain, started after `since` (unix time) on one of `hosts`
        if given, runs and the leader has seen its agent alive: node -> (seconds from `since`
        to the first such sighting, host).

        The domain's state, host and start come from libvirt itself (the qemu pid file is
        written at start), the agent's liveness from the leader's `inspect`. Sightings are
        kept because a node's liveness may flicker under TCG load; each one is the node's
        agent answering the leader's probes. A sighting sooner than AGENT_START_MIN after the
        domain's start is the agent of the qemu before, not counted."""
        wanted = list(nodes or self.node_names)
        seen: dict[str, tuple[float, str]] = {}
        t0 = time.monotonic()
        while True:
            view = self.leader_view()
            now = time.time()
            alive = {n["name"] for n in (view or {}).get("nodes", ())
                     if n["agent_liveness"] == "alive"}
            if alive & (set(wanted) - set(seen)):
                doms = self.domains()
                for node in sorted(alive & (set(wanted) - set(seen))):
                    d = doms.get(node)
                    began = started(d.name) if d is not None else 0.0
                    if (d is not None and d.running and began > since
                            and now - began >= AGENT_START_MIN
                            and (hosts is None or d.host in hosts)):
                        seen[node] = (now - since, d.host)
            if len(seen) == len(wanted):
                return seen
            if progress is not None:
                progress(time.monotonic() - t0, view)
            if time.monotonic() - t0 > bound:
                raise AssertionError(
                    f"not within {bound:.0f} s: agents of {sorted(set(wanted) - set(seen))} "
                    f"rejoined; domains: {self.domains()}; leader view: {view}")
            time.sleep(0.25)

    def leader(self) -> str | None:
        view = self.leader_view()
        return None if view is None else view["leadership"]["leader"]

    def fenced_at(self, host: str) -> float | None:
        """When the lab fence first ran for `host` (unix time), if it did."""
        if not self.fence_record.exists():
            return None
        times = [float(f[0]) for f in (line.split() for line in
                                         self.fence_record.read_text().splitlines())
                 if len(f) >= 3 and f[2] == host]
        return min(times) if times else None

    def serial_log(self, node: str) -> str:
        path = Path(f"/var/log/libvirt/qemu/{self.domain(node)}.serial.log")
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")
        return ""

    # -- cleanup --------------------------------------------------------------------------
    def close(self) -> None:
        for name in list(self.agents):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
        self.remove_domains()  # before the bridge goes away
        self.image_file.unlink(missing_ok=True)
        for node in self.node_addresses:
            Path(f"/var/log/libvirt/qemu/{self.domain(node)}.serial.log").unlink(
                missing_ok=True)
        super().close()


def poll(what: str, check: Callable[[], Any], *, bound: float,
         every: Callable[[], None] | None = None, interval: float = 0.25,
         progress: Callable[[float], None] | None = None) -> tuple[Any, float]:
    """Poll `check` (and the invariant `every`) until truthy: its value and the seconds taken.
    AssertionError after `bound` seconds; `progress(elapsed)` is called on each round."""
    t0 = time.monotonic()
    while True:
        if every is not None:
            every()
        value = check()
        elapsed = time.monotonic() - t0
        if value:
            return value, elapsed
        if progress is not None:
            progress(elapsed)
        if elapsed > bound:
            raise AssertionError(f"not within {bound:.0f} s: {what}")
        time.sleep(interval)


def leftovers(prefix: str) -> list[str]:
    """What a lab with `prefix` left behind: domains, namespaces, bridge, agent processes."""
    out = [f"domain {n}" for n in virsh("list", "--all", "--name").stdout.split()
           if n.startswith(f"{prefix}-")]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False).stdout
    out += [f"netns {line.split()[0]}" for line in netns.splitlines()
            if line.startswith(prefix)]
    if Path(f"/sys/class/net/{prefix}br").exists():
        out.append(f"bridge {prefix}br")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f"/cloudd-{prefix}-" in cmd:
                out.append(f"process {proc.name}: {cmd.strip()}")
    roots = [p for p in LAB_PARENT.glob(f"cloudd-{prefix}-*")
             if not os.environ.get("CLOUDD_KEEP_LAB")]
    out += [f"folder {p}" for p in roots]
    return out
