"""Real agent processes, each in its own network namespace on one bridge, for tests and benches.

`AgentLab` makes the cluster PKI, one folder per agent (settings, manifests, state, API
socket, log), writes the same manifest into every member's manifest folder (as an operator
dropping it on each host would), and runs `cloudd` in each namespace. It asks each agent for
its view through the agent's own local API (`status`), and cuts or kills agents on request.
Everything it made is removed by `close()`.

By default the nodes are `managed: false` and the hosts use libvirt's in-process test driver
(elections only). For the leader's real work, give `libvirt_uri` (e.g. qemu:///system, shared
by every host agent: they tell their domains apart by the host in the domains' metadata),
`node_image` (the nodes become managed VMs), `template` and `template_values` (the domain
template and its extra placeholders), and `fence` (each host's fence command). `write_manifest`
hands every member a new generation (e.g. `ensure: stopped`).

With `own_pki`, every agent reads its CA bundle, certificate and key from copies in its own
folder (`pki_files`), as agents on separate machines do (a pool host also the node issuer,
`nodes-ca.crt` and `nodes-ca.key`, as `cloudd-cli bootstrap` gives it), and the lab's `pki/`
folder (the CA, its node issuer and every certificate it issued) is the operator's alone:
what a test changes in one agent's files reaches that agent only, when it next starts
(`restart`).

With `time_servers`, each pool host's namespace runs a chronyd serving the lab's subnet from the
host's address (`cloudd_lab.timeserver`: `-x`, so this machine's clock is never touched), as a
pool host serves time to its nodes; it lives as long as the lab, whatever its agent does.

The default domain template is the example one of the cloud's type, from the checkout's
manifests/templates (`cloudd_lab.paths.example_template`: the lab runs from a checkout only).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from cloudd.client.api import ApiClient, ApiError
from cloudd.pki import ISSUER_CERT, ISSUER_KEY, MemberKind, PkiFiles, init_ca, issue
from cloudd.vmctl.hostagent import DEFAULT_IMAGE_DIRS
from cloudd.vmctl.metadata import from_domain_xml
from cloudd_lab.netlab import NetLab, Netns
from cloudd_lab.paths import example_template
from cloudd_lab.timeserver import TimeServer

CLOUDD = str(Path(sys.executable).parent / "cloudd")
CLI = str(Path(sys.executable).parent / "cloudd-cli")


#: The file in a lab's folder naming the process that made it.
OWNER = ".owner"
#: Listings a sweep makes at most: a dead run's process may fork between a listing and its kill.
_SWEEP_ROUNDS = 5


def node_system(folder: Path) -> Path:
    """A node agent's own `/` for the system files it keeps (`node.system_root`): cloudd's
    block of `etc/hosts` and the manifest's users go there, never into this machine's files.
    Made with copies of this machine's account files, which `useradd --prefix` extends."""
    root = folder / "system"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(Path("/etc") / name, root / "etc" / name)
    return root


def lab_root(prefix: str, *, parent: Path | None = None) -> Path:
    """A new lab folder `cloudd-PREFIX-XXXXXXXX` (in `parent`, default the temporary folder),
    naming the process that made it: a lab made before it holds the prefix's lock (it waits
    for another run's lab) is a living one, whose folder that other lab's sweep must keep."""
    root = Path(tempfile.mkdtemp(prefix=f"cloudd-{prefix}-", dir=parent))
    (root / OWNER).write_text(f"{os.getpid()}\n")
    return root


def stale_folders(prefix: str, parent: Path, *, mine: Path) -> list[Path]:
    """The lab folders of `prefix` in `parent` that no living process made (`mine` aside)."""
    shape = re.compile(f"cloudd-{re.escape(prefix)}-[a-z0-9_]{{8}}")
    return [p for p in sorted(parent.glob(f"cloudd-{prefix}-*"))
            if p != mine and shape.fullmatch(p.name) and not _made_by_a_living_process(p)]


def _made_by_a_living_process(folder: Path) -> bool:
    try:
        pid = int((folder / OWNER).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):  # no owner file, or its process is gone
        return False
    return True


def _kill_all(find: Callable[[], list[int]]) -> list[int]:
    """SIGKILL every pid `find` lists, and list again until no new one appears (a process may
    fork between a listing and its kill); the pids killed."""
    killed: list[int] = []
    for _ in range(_SWEEP_ROUNDS):
        fresh = [pid for pid in find() if pid not in killed]
        if not fresh:
            break
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _processes_naming(marker: str) -> list[int]:
    """The processes (this one aside) whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
    return found


def _netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         check=False).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def sweep_stale(prefix: str, folders: Sequence[Path]) -> list[str]:
    """Remove what a dead lab of `prefix` left behind; what was removed.

    Call it holding the prefix's `LabLock`: no living lab of that prefix has processes,
    namespaces or a bridge then, so every agent process (its command line names a lab folder,
    `/cloudd-PREFIX-`), namespace, bridge and folder (`stale_folders`) that carries the prefix
    is a killed run's (an interrupted suite, a lost session), and would make this lab's bridge
    collide. Each kind of process is listed again after its kills until none is new.
    """
    marker = f"/cloudd-{prefix}-"
    swept = [f"process {pid}" for pid in _kill_all(functools.partial(_processes_naming, marker))]
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=False).stdout
    for ns in (line.split()[0] for line in names.splitlines() if line.startswith(f"{prefix}-")):
        _kill_all(functools.partial(_netns_pids, ns))
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        swept.append(f"netns {ns}")
    if Path(f"/sys/class/net/{prefix}br").exists():
        subprocess.run(["ip", "link", "del", f"{prefix}br"], capture_output=True, check=False)
        swept.append(f"bridge {prefix}br")
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        swept.append(f"folder {folder}")
    return swept


@dataclass(frozen=True)
class LabDomain:
    """One domain on the lab's shared libvirtd, as `virsh` shows it."""

    name: str
    #: the host named in its cloudd metadata ("" for a domain without one)
    host: str
    running: bool
    #: its qemu's pid while it runs
    pid: int | None


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def lab_domains(uri: str, prefix: str) -> dict[str, LabDomain]:
    """Every domain whose name starts with `prefix` on `uri`, by name."""
    listing = virsh(uri, "list", "--all", "--name")
    if listing.returncode != 0:
        raise AssertionError(f"virsh list failed: {listing.stderr.strip()}")
    out: dict[str, LabDomain] = {}
    for name in listing.stdout.split():
        if not name.startswith(prefix):
            continue
        xml = virsh(uri, "dumpxml", name)
        if xml.returncode != 0:
            continue  # undefined meanwhile
        meta = from_domain_xml(xml.stdout)
        running = virsh(uri, "domstate", name).stdout.strip() == "running"
        pid = None
        if running:
            with contextlib.suppress(OSError, ValueError):
                pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        out[name] = LabDomain(name, meta.host if meta else "", running, pid)
    return out


def remove_domains(uri: str, prefix: str) -> None:
    """Destroy and undefine every domain whose name starts with `prefix` (cleanup)."""
    for name in virsh(uri, "list", "--all", "--name").stdout.split():
        if name.startswith(prefix):
            virsh(uri, "destroy", name)
            virsh(uri, "undefine", name)


class LabLock:
    """One lab of a given prefix at a time on this machine, across processes.

    Two runs of the same test at once (two people running the suite) would remove each
    other's domains and collide on the bridge's name: the second waits for the first (up to
    `timeout` seconds, then fails with a message naming the lock file).
    """

    def __init__(self, prefix: str, *, timeout: float = 900.0) -> None:
        self.path = Path(tempfile.gettempdir()) / f"cloudd-lab-{prefix}.lock"
        self.timeout = timeout
        self._file: Any = None

    def acquire(self) -> None:
        if self._file is not None:
            return
        f = open(self.path, "a")  # noqa: SIM115 (held until release())
        end = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    f.close()
                    raise AssertionError(f"another lab holds {self.path} for more than "
                                         f"{self.timeout:g} s") from None
                time.sleep(0.5)
        self._file = f

    def release(self) -> None:
        """Safe to call twice."""
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> LabLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class AgentProc:
    name: str
    ns: Netns
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: Any = None
    #: the lab signalled this process itself (kill, restart): its exit is the test's doing
    signalled: bool = False

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
    cloud_name: str = "lab"
    #: every host agent's libvirt connection (in its settings and in the manifest)
    libvirt_uri: str = "test:///default"
    #: the domain template (default: manifests/templates/<cloud_type>.xml)
    template: Path | None = None
    template_values: dict[str, str] = field(default_factory=dict)
    #: the nodes' image: they are managed VMs (None: `managed: false` machines)
    node_image: str | None = None
    node_memory_mib: int = 128
    #: host name -> its fence command (None: no fence commands in the manifest)
    fence: Callable[[str], Sequence[str]] | None = None
    #: nodes that run an agent even without `node_agents` (by name, e.g. "lab-balancer-1")
    agent_nodes: Sequence[str] = ()
    #: each agent reads copies of its PKI files from its own folder (see `pki_files`)
    own_pki: bool = False
    #: each pool host's namespace serves time to the lab's subnet (see `time_server`)
    time_servers: bool = False
    #: the manifest lists the pool hosts last first: the highest-ranked host, which leads
    #: after a quiet start, is then the last (pmN), while the planner, which breaks ties by
    #: host name, places the first nodes on pm1; so the leader's host is not the database's
    hosts_last_first: bool = False
    #: pool host name -> more of its manifest fields (a `libvirt_uri` here replaces the lab's)
    host_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the guests a kernel boots are test guests, which share the host's `/`
    shares_host_root: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.root = lab_root(self.prefix)
        self.net = NetLab(self.prefix, subnet=self.subnet)
        self.agents: dict[str, AgentProc] = {}
        self.node_addresses: dict[str, str] = {}
        self.members: list[tuple[str, Netns | None, str]] = []
        self.ensure = "running"
        self.lock = LabLock(self.prefix)
        self.clocks: dict[str, TimeServer] = {}
        #: a node's manifest fields when not `node_fields`' (see `add_node`)
        self.own_fields: dict[str, str] = {}

    # -- building -------------------------------------------------------------------------
    def open(self) -> Self:
        self.lock.acquire()
        stale = [] if os.environ.get("CLOUDD_KEEP_LAB") else stale_folders(
            self.prefix, self.root.parent, mine=self.root)
        for what in sweep_stale(self.prefix, stale):
            print(f"lab {self.prefix}: removed what a dead run left: {what}", file=sys.stderr)
        self.net.open()
        pki = self.root / "pki"
        pki.mkdir()
        now = dt.datetime.now(dt.UTC)
        init_ca(pki, now=now)
        members: list[tuple[str, Netns | None, str]] = []
        for i in range(1, self.hosts + 1):
            host_ns = self.net.add_netns(f"pm{i}")
            members.append((f"pm{i}", host_ns, host_ns.ip))
        for role, count in self.nodes.items():
            for j in range(1, count + 1):
                name = f"lab-{role}-{j}"
                if self.node_agents or name in self.agent_nodes:
                    node_ns = self.net.add_netns(f"{role[:8]}{j}")
                    members.append((name, node_ns, node_ns.ip))
                else:
                    members.append((name, None, str(self.net.allocate().ip)))
                self.node_addresses[name] = members[-1][2]
        self.members = members
        manifest = self.manifest(members)
        template = self.template or example_template(self.cloud_type)
        hosts = {f"pm{i}" for i in range(1, self.hosts + 1)}
        for name, ns, address in members:
            if name in hosts:
                issue(pki, name, now=now, kind=MemberKind.HOST, addresses=[address])
            else:
                issue(pki, name, now=now, kind=MemberKind.NODE, cloud=self.cloud_name,
                      addresses=[address])
            if ns is None:
                continue
            folder = self.root / name
            (folder / "manifests" / "templates").mkdir(parents=True)
            own = self.pki_files(name)
            if self.own_pki:
                own.ca.parent.mkdir(mode=0o700)
                issued = PkiFiles.for_member(pki, name)
                for theirs, mine in ((issued.ca, own.ca), (issued.cert, own.cert),
                                     (issued.key, own.key)):
                    shutil.copy2(theirs, mine)
                if name in hosts:  # a pool host signs its nodes' certificates
                    for issuer in (ISSUER_CERT, ISSUER_KEY):
                        shutil.copy2(pki / issuer, own.ca.parent / issuer)
            shutil.copy(template, folder / "manifests" / "templates" / "domain.xml")
            (folder / "manifests" / "lab.yaml").write_text(manifest)
            system = "" if name in hosts else f"node: {{system_root: {node_system(folder)}}}\n"
            (folder / "agent.yaml").write_text(
                f"name: {name}\nprofile: {self.profile}\n"
                f"listen: {{address: {address}}}\n"
                f"pki: {{ca: {own.ca}, cert: {own.cert}, key: {own.key}}}\n"
                f"libvirt: {self.libvirt_settings()}\n"
                f"state_dir: {folder / 'state'}\nmanifest_dir: {folder / 'manifests'}\n"
                f"api_socket: {folder / 'api.sock'}\n{system}{self.extra_settings}")
            self.agents[name] = AgentProc(name, ns, folder)
        if self.time_servers:
            for name, ns, address in members:
                if name in hosts and ns is not None:
                    self.clocks[name] = TimeServer(
                        ns.name, address, str(self.net.subnet),
                        self.root / name / "chrony").start()
        return self

    def add_node(self, role: str, fields: str = "managed: false") -> str:
        """One more node of `role` with the subnet's next address and manifest `fields` (a
        machine the lab runs no agent for), in the manifest from the next `write_manifest`:
        its name."""
        taken = {n for n, _, _ in self.members}
        name = next(f"lab-{role}-{j}" for j in range(1, len(taken) + 2)
                    if f"lab-{role}-{j}" not in taken)
        address = str(self.net.allocate().ip)
        self.members.append((name, None, address))
        self.node_addresses[name] = address
        self.own_fields[name] = fields
        return name

    def remove_node(self, name: str) -> None:
        """Take a node `add_node` gave out of the manifest (from the next `write_manifest`)."""
        self.members = [m for m in self.members if m[0] != name]
        del self.node_addresses[name]
        self.own_fields.pop(name, None)

    def add_outsider(self, name: str = "outsider") -> AgentProc:
        """An agent on the lab's bridge with the lab's CA but in no cloud (no manifest), as on
        an operator's machine: it holds an operator certificate. Started by `start`."""
        ns = self.net.add_netns(name[:12])
        pki = self.root / "pki"
        issue(pki, name, now=dt.datetime.now(dt.UTC), kind=MemberKind.OPERATOR,
              addresses=[ns.ip])
        folder = self.root / name
        (folder / "manifests").mkdir(parents=True)
        (folder / "agent.yaml").write_text(
            f"name: {name}\nprofile: {self.profile}\n"
            f"listen: {{address: {ns.ip}}}\n"
            f"pki: {{ca: {pki}/ca.crt, cert: {pki}/{name}.crt, key: {pki}/{name}.key}}\n"
            f"state_dir: {folder / 'state'}\nmanifest_dir: {folder / 'manifests'}\n"
            f"api_socket: {folder / 'api.sock'}\n")
        self.agents[name] = AgentProc(name, ns, folder)
        return self.agents[name]

    def time_server(self, host: str) -> TimeServer:
        """The chronyd of pool host `host` (with `time_servers`)."""
        return self.clocks[host]

    def pki_files(self, name: str) -> PkiFiles:
        """The CA bundle, certificate and key the agent `name` reads when it starts: its own
        copies with `own_pki`, else the lab's `pki/` folder's."""
        folder = self.root / name / "pki" if self.own_pki else self.root / "pki"
        return PkiFiles.for_member(folder, name)

    def libvirt_settings(self) -> str:
        """The agents' `libvirt` settings, as YAML. Guests booted by direct kernel boot (a
        template with a kernel) have the folder of their kernel and initrd as an image folder
        too; a test guest shares the host's `/` (`shares_host_root`), which only the lab-only
        setting allows."""
        boot = sorted({str(Path(self.template_values[k]).parent)
                       for k in ("kernel", "initrd") if k in self.template_values})
        if not boot:
            return json.dumps({"uri": self.libvirt_uri})
        settings: dict[str, Any] = {
            "uri": self.libvirt_uri, "image_dirs": [*(str(d) for d in DEFAULT_IMAGE_DIRS), *boot]}
        if self.shares_host_root:
            settings["lab_allow_host_root_share"] = True
        return json.dumps(settings)

    def manifest(self, members: Sequence[tuple[str, Netns | None, str]]) -> str:
        pool = []
        for n, _, a in members:
            if n.startswith("pm"):
                fence = (f", fence: {json.dumps(list(self.fence(n)))}"
                         if self.fence is not None else "")
                more = dict(self.host_fields.get(n, {}))
                uri = more.pop("libvirt_uri", self.libvirt_uri)
                fields = "".join(f", {k}: {json.dumps(v)}" for k, v in more.items())
                pool.append(f"  - {{name: {n}, address: {a}, "
                            f"libvirt_uri: {json.dumps(uri)}{fence}{fields}}}")
        if self.hosts_last_first:
            pool.reverse()
        roles = []
        for role in self.nodes:
            roles.append(f"  {role}:")
            for n, _, a in members:
                if n.startswith(f"lab-{role}-"):
                    fields = self.own_fields.get(n) or self.node_fields(n)
                    roles.append(f"    - {{name: {n}, address: {a}, {fields}}}")
        values = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in self.template_values.items())
        return (f"apiVersion: cloudd/v1\nkind: Cloud\nname: {self.cloud_name}\n"
                f"type: {self.cloud_type}\nensure: {self.ensure}\n"
                f"domain_template: templates/domain.xml\npool:\n" + "\n".join(pool) + "\n"
                + "roles:\n" + "\n".join(roles) + "\n"
                + (f"network: {{prefix_length: {self.net.subnet.prefixlen}}}\n")
                + (f"template_values:\n{values}" if values else "")
                + self.manifest_extra())

    def node_fields(self, node: str) -> str:
        """A node's fields in the manifest, after its name and address (YAML flow style)."""
        if self.node_image is None:
            return "managed: false"
        return f"image: {json.dumps(self.node_image)}, memory_mib: {self.node_memory_mib}"

    def manifest_extra(self) -> str:
        """More of the manifest (whole lines): settings, secrets."""
        return ""

    def write_manifest(self, *, ensure: str | None = None) -> str:
        """Give every member with an agent the manifest again (a new generation when
        `ensure` changes it), each file replaced atomically; returns the text."""
        if ensure is not None:
            self.ensure = ensure
        text = self.manifest(self.members)
        for agent in self.agents.values():
            path = agent.folder / "manifests" / "lab.yaml"
            tmp = path.with_name(".lab.yaml.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return text

    # -- processes ------------------------------------------------------------------------
    def start(self, name: str, *, env: Mapping[str, str] | None = None) -> None:
        """Start the agent `name` in its namespace (`env`: its environment, else this
        process's)."""
        agent = self.agents[name]
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.signalled = False
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, CLOUDD, "--config",
             str(agent.folder / "agent.yaml")],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True, env=env)

    def start_all(self) -> None:
        for name in self.agents:
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        agent = self.agents[name]
        if agent.proc is not None and agent.proc.poll() is None:
            agent.signalled = True
            os.killpg(agent.proc.pid, sig)
            agent.proc.wait(timeout=60)

    def freeze(self, name: str) -> None:
        """SIGSTOP the agent's process group: it neither acts nor answers until killed."""
        agent = self.agents[name]
        if agent.proc is not None and agent.proc.poll() is None:
            os.killpg(agent.proc.pid, signal.SIGSTOP)

    def restart(self, name: str) -> None:
        """Stop the agent `name` as its service manager would (SIGTERM, waited for), then
        start it again: it reads its settings and PKI files anew."""
        self.kill(name, signal.SIGTERM)
        self.start(name)

    def cut(self, name: str) -> None:
        self.net.cut(self.agents[name].ns)

    def restore(self, name: str) -> None:
        self.net.restore(self.agents[name].ns)

    def running(self) -> list[str]:
        return [n for n, a in self.agents.items() if a.proc is not None and a.proc.poll() is None]

    # -- observing ------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any] | None:
        async def ask() -> dict[str, Any] | None:
            answer = await ApiClient(self.agents[name].socket, timeout=5).call("status")
            return answer if isinstance(answer, dict) else None
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
                                     f"{self.statuses()}{self.exits()}")
            time.sleep(interval)

    def exits(self, *, lines: int = 12) -> str:
        """The agents that exited on their own (not signalled by the lab): their exit code
        and the end of their log, for a failure message (empty when none did)."""
        out = []
        for name, agent in self.agents.items():
            if agent.proc is None or agent.signalled or (rc := agent.proc.poll()) is None:
                continue
            try:
                tail = agent.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as e:
                tail = [f"(log not readable: {e})"]
            out.append(f"\n{name} exited with {rc}; the end of its log:\n" + "\n".join(tail))
        return "".join(out)

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

    def cli(self, agent: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`cloudd-cli ARGS` against one agent's local API, as an operator on it would."""
        return subprocess.run([CLI, *args, "--socket", str(self.agents[agent].socket)],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line of every agent, with `agent` (its name) and `at` (unix time)."""
        out = []
        for name in self.agents:
            for line in self.log_text(name).splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = json.loads(line)
                    event["at"] = dt.datetime.fromisoformat(event["timestamp"]).timestamp()
                    event["agent"] = name
                    out.append(event)
        return out

    def actions(self, verb: str, *, since: float) -> list[dict[str, Any]]:
        """The leaders' successful actions (`action_done`, reason `<verb> on <host>: ...`)
        logged since `since`."""
        return [e for e in self.log_events()
                if e.get("event") == "action_done"
                and str(e.get("reason", "")).startswith(f"{verb} on ") and e["at"] >= since]

    # -- cleanup --------------------------------------------------------------------------
    def close(self) -> None:
        for clock in self.clocks.values():
            clock.stop()
        for name in list(self.agents):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
            if self.agents[name].log_file is not None:
                self.agents[name].log_file.close()
        # Services outlive their agent by design (their own sessions): whatever still runs in
        # the lab's namespaces is the lab's, and goes with it.
        for ns in self.net.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            self.net.close()
        finally:
            if os.environ.get("CLOUDD_KEEP_LAB"):
                print(f"lab kept in {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self.lock.release()

    def __enter__(self) -> Self:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
