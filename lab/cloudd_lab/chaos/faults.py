"""The soak's lab and what each fault does to it, and how it is undone.

`ChaosLab` is an `AgentLab` running the web site on `managed: false` nodes, each in its own
namespace with its own agent, the pool hosts on libvirt's system URI (so that a domain of no
cloud defined there is in their sight). Some members' state folders are small tmpfs mounts of
their own (`disk_full` fills one, never this machine's disks); one member's agent can be
restarted with its wall clock off (`clock_step`, through libfaketime). `ChaosParts` is what
it adds to an `AgentLab`; the soak with VM nodes (`chaos.vms.VmChaosLab`) adds it to an
`ImageLab`, which also makes the VM faults (`kill_qemu`, `stop_qemu`, `stop_libvirtd`...).

`Injector.inject` makes a fault and `Injector.recover` undoes it; each returns what it did, in
words, for the soak's log. Processes are found by namespace, signalled by pid; busy loops and
firewall rules are the injector's own and go with `heal`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudd_lab.agentlab import AgentLab, AgentProc
from cloudd_lab.chaos.schedule import Fault
from cloudd_lab.netlab import NetLab

#: libfaketime, for the member whose clock the soak steps
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
#: the size of each small state file system
DISK_MIB = 64
#: the file that fills one
FILL = ".chaos-fill"


class ChaosParts:
    """What the soak adds to a lab, whatever its nodes: `disks`, members whose state folder is
    a tmpfs of `DISK_MIB` MiB; `clock`, the member whose agent `clock_offset` can start with
    its clock off; the web servers' port, which `generation` faults move. Mixed in before an
    `AgentLab` (`ChaosLab`) or an `ImageLab` (`chaos.vms.VmChaosLab`)."""

    agents: dict[str, AgentProc]
    net: NetLab
    root: Path
    prefix: str

    def __init__(self, prefix: str, *, subnet: str, disks: tuple[str, ...] = (),
                 clock: str = "", **kw: Any) -> None:
        super().__init__(prefix, subnet=subnet, **kw)
        self.disks = disks
        self.clock = clock
        #: seconds the `clock` member's wall clock is off at its next start
        self.clock_offset = 0
        #: the web servers' port: each `generation` fault moves them (8080 <-> 8081)
        self.app_port = 8080
        self.mounted: list[Path] = []
        # The services run as their own users (mysql, www-data): the nodes' state folders
        # must be reachable by them.
        self.root.chmod(0o755)

    def open(self) -> Any:
        super().open()
        for name in self.disks:
            state = self.agents[name].folder / "state"
            state.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0755",
                            f"{self.prefix}-{name}", str(state)], check=True,
                           capture_output=True)
            self.mounted.append(state)
        return self

    def start(self, name: str, *, env: Mapping[str, str] | None = None) -> None:
        if name != self.clock:
            super().start(name, env=env)
            return
        # A fixed offset from the start: libfaketime 0.9.10 cannot step a running Python
        # (with monotonic time left real, its clock_nanosleep fails with EINVAL; stepping
        # through its timestamp file steps monotonic time too, which no kernel does). Given
        # to this agent alone: the soak's threads run programs meanwhile with this process's
        # environment, which stays as it is.
        super().start(name, env={**(env if env is not None else os.environ),
                                 "LD_PRELOAD": str(LIBFAKETIME),
                                 "FAKETIME": f"{self.clock_offset:+d}"})

    def node_ns(self, node: str) -> str:
        return self.agents[node].ns.name

    def close(self) -> None:
        for name in list(self.agents):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
        for ns in self.net.namespaces:
            for pid in ns_pids(ns.name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for state in self.mounted:
            subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)
        self.mounted.clear()
        super().close()


class ChaosLab(ChaosParts, AgentLab):
    """The web site's lab of namespaces: every node a `managed: false` machine with its own
    agent and services in its namespace."""

    def manifest_extra(self) -> str:
        secret = self.root / "db-password"
        if not secret.exists():
            secret.write_text("s3cret-for-chaos\n")
            secret.chmod(0o600)
        return (f"settings: {{app_port: {self.app_port}, balancer_port: 80, database_name: lab,\n"
                "           database_user: lab, database_password_ref: db}\n"
                f"secrets: {{db: {{file: {secret}}}}}\n")


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def service_pids(program: str, ns: str) -> list[int]:
    """The processes of one service in namespace `ns`, one per instance: nginx's masters only
    (its workers are the master's), MariaDB's and WEBrick's processes (zombies aside)."""
    found = []
    for pid in ns_pids(ns):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:  # gone, or a zombie
            continue
        cmd = _cmdline(pid)
        if program == "nginx":
            if cmd and cmd[0].startswith(b"nginx: master"):
                found.append(pid)
        elif program in Path(exe).name:
            found.append(pid)
    return found


def agent_pids(lab: AgentLab, name: str) -> list[int]:
    """Every process running the agent `name` (its settings file on its command line), a
    child it forked aside (between its fork and its exec, a service's process still shows
    the agent's command line)."""
    config = str(lab.agents[name].folder / "agent.yaml").encode()
    found = {}
    for pid in ns_pids(lab.agents[name].ns.name):
        cmd = _cmdline(pid)
        if config in cmd and any(c.endswith(b"/cloudd") for c in cmd[:2]):
            found[pid] = _ppid(pid)
    return sorted(pid for pid, parent in found.items() if parent not in found)


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


class Injector:
    """Makes and undoes the faults of a schedule on a `ChaosLab` (the VM kinds on a
    `chaos.vms.VmChaosLab`, which has what they need)."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        #: fault id -> what recover needs (pids stopped, rules added, processes started)
        self._undo: dict[int, Any] = {}
        #: members some fault holds now (operator commands go to another pool host)
        self.hit: dict[int, set[str]] = {}
        self.operator_files = 0
        #: the busy loops of `cpu_starve` faults in force (outside the lab's namespaces)
        self._loops: list[subprocess.Popen[bytes]] = []

    # -- helpers ------------------------------------------------------------------------
    def _iptables(self, ns: str, *rule: str, add: bool) -> str:
        argv = ["ip", "netns", "exec", ns, "iptables", "-I" if add else "-D", *rule]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return "" if done.returncode == 0 else f" ({' '.join(argv[4:])}: {done.stderr.strip()})"

    def operator_host(self) -> str:
        """A pool host no fault holds now, else any pool host."""
        held = set().union(*self.hit.values()) if self.hit else set()
        hosts = [n for n in self.lab.agents if n.startswith("pm")]
        return next((h for h in hosts if h not in held), hosts[0])

    def cli(self, *args: str) -> str:
        host = self.operator_host()
        try:
            done = self.lab.cli(host, *args, "--timeout", "15", timeout=30)
        except subprocess.TimeoutExpired:
            return f"`cloudd-cli {' '.join(args)}` on {host}: no answer within 30 s"
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
        return (f"`cloudd-cli {' '.join(args)}` on {host}: exit {done.returncode}: "
                f"{said[-1] if said else ''}")

    def manifest_file(self, *, ensure: str) -> Path:
        """The operator's copy of the manifest as the lab has it now, with `ensure`, beside
        its domain template (a numbered comment says which copy: no new generation by
        itself)."""
        self.operator_files += 1
        folder = self.lab.root / "operator"
        (folder / "templates").mkdir(parents=True, exist_ok=True)
        template = next(iter(self.lab.agents.values())).folder / "manifests" / "templates"
        shutil.copy(template / "domain.xml", folder / "templates" / "domain.xml")
        saved = self.lab.ensure
        self.lab.ensure = ensure
        try:
            text = self.lab.manifest(self.lab.members)
        finally:
            self.lab.ensure = saved
        path = folder / "lab.yaml"
        path.write_text(f"# operator's copy {self.operator_files}\n{text}")
        return path

    # -- faults -------------------------------------------------------------------------
    def inject(self, f: Fault) -> str:
        self.hit[f.id] = {t.split("/")[0] for t in f.target.split("|")}
        lab, target = self.lab, f.target
        if f.kind == "agent_kill":
            lab.kill(target)
            return f"agent {target} killed (SIGKILL)"
        if f.kind == "agent_stop":
            lab.freeze(target)
            return f"agent {target} stopped (SIGSTOP)"
        if f.kind in ("service_kill", "service_stop"):
            node, program = target.split("/")
            pids = service_pids(program, lab.node_ns(node))
            sig = signal.SIGKILL if f.kind == "service_kill" else signal.SIGSTOP
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            self._undo[f.id] = pids
            return f"{program} on {node}: {sig.name} to {pids or 'no process'}"
        if f.kind == "isolate":
            lab.cut(target)
            return f"{target}'s link down"
        if f.kind == "split":
            a, b = target.split("|")
            rules = [("INPUT", "-s", lab.agents[b].ns.ip, "-j", "DROP"),
                     ("OUTPUT", "-d", lab.agents[b].ns.ip, "-j", "DROP")]
            self._undo[f.id] = (a, rules)
            errors = "".join(self._iptables(lab.agents[a].ns.name, *r, add=True) for r in rules)
            return f"{a} and {b} cut from each other{errors}"
        if f.kind == "loss":
            rules = [(chain, "-m", "statistic", "--mode", "random", "--probability",
                      f"{f.arg}", "-j", "DROP") for chain in ("INPUT", "OUTPUT")]
            self._undo[f.id] = (target, rules)
            errors = "".join(self._iptables(lab.agents[target].ns.name, *r, add=True)
                             for r in rules)
            return f"{target} drops {f.arg:.0%} of its packets{errors}"
        if f.kind == "disk_full":
            return f"{target}'s state file system: {fill(lab.agents[target].folder / 'state')}"
        if f.kind == "clock_step":
            lab.clock_offset = int(f.arg)
            lab.restart(target)
            return f"{target}'s agent restarted with its clock {int(f.arg):+d} s off"
        if f.kind == "cpu_starve":
            return self._starve(f)
        if f.kind == "maintenance":
            return self.cli("maintenance", "on", *target.split("/")[1:])
        if f.kind == "generation":
            lab.app_port = 8081 if lab.app_port == 8080 else 8080
            said = self.cli("apply", str(self.manifest_file(ensure="running")))
            return f"web servers moved to port {lab.app_port}: {said}"
        if f.kind == "stop_start":
            return self.cli("stop", lab.cloud_name)
        if f.kind == "qemu_kill":
            return lab.kill_qemu(target.split("/")[0])
        if f.kind == "qemu_stop":
            said, self._undo[f.id] = lab.stop_qemu(target.split("/")[0])
            return said
        if f.kind == "libvirtd_restart":
            return lab.stop_libvirtd()
        raise ValueError(f"no such fault kind: {f.kind}")

    def recover(self, f: Fault) -> str:
        self.hit.pop(f.id, None)
        lab, target = self.lab, f.target
        undo = self._undo.pop(f.id, None)
        if f.kind == "agent_kill":
            lab.start(target)
            return f"agent {target} started"
        if f.kind == "agent_stop":
            proc = lab.agents[target].proc
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
            return f"agent {target} continued (SIGCONT)"
        if f.kind == "service_kill":
            return "nothing to undo: the node's agent restarts its service"
        if f.kind == "service_stop":
            for pid in undo or ():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return f"SIGCONT to {undo}"
        if f.kind == "isolate":
            lab.restore(target)
            return f"{target}'s link up"
        if f.kind in ("split", "loss"):
            member, rules = undo
            errors = "".join(self._iptables(lab.agents[member].ns.name, *r, add=False)
                             for r in rules)
            return f"{member}'s rules removed{errors}"
        if f.kind == "disk_full":
            (lab.agents[target].folder / "state" / FILL).unlink(missing_ok=True)
            return f"{target}'s state file system freed"
        if f.kind == "clock_step":
            lab.clock_offset = 0
            lab.restart(target)
            return f"{target}'s agent restarted with its clock right"
        if f.kind == "cpu_starve":
            return self._unstarve(undo)
        if f.kind == "maintenance":
            return self.cli("maintenance", "off", *target.split("/")[1:])
        if f.kind == "generation":
            return "nothing to undo: the generation stays"
        if f.kind == "stop_start":
            return self.cli("apply", str(self.manifest_file(ensure="running")))
        if f.kind == "qemu_kill":
            return "nothing to undo: the leader starts the domain again"
        if f.kind == "qemu_stop":
            return lab.continue_qemu(undo)
        if f.kind == "libvirtd_restart":
            return lab.start_libvirtd()
        raise ValueError(f"no such fault kind: {f.kind}")

    def _starve(self, f: Fault) -> str:
        proc = self.lab.agents[f.target].proc
        if proc is None or proc.poll() is not None:
            self._undo[f.id] = []
            return f"{f.target}'s agent is not running: nothing to starve"
        cpu = (os.cpu_count() or 1) - 1
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(proc.pid)],
                       capture_output=True, check=False)
        loops = [subprocess.Popen(["taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"],
                                  start_new_session=True) for _ in range(int(f.arg))]
        self._undo[f.id] = [proc.pid, *[p.pid for p in loops]]
        self._loops += loops
        return f"{f.target}'s agent pinned to CPU {cpu} beside {len(loops)} busy loops"

    def _unstarve(self, undo: list[int] | None) -> str:
        if not undo:
            return "nothing to undo"
        agent, *loops = undo
        for p in [p for p in self._loops if p.pid in loops]:
            p.kill()
            p.wait()
            self._loops.remove(p)
        cpus = f"0-{(os.cpu_count() or 1) - 1}"
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(agent)], capture_output=True,
                       check=False)
        return f"busy loops {loops} killed, agent back on CPUs {cpus}"

    def heal(self) -> list[str]:
        """Kill the busy loops still running: they live outside the lab's namespaces, so the
        lab's close would leave them (a soak stopped early leaves its other faults in force
        until the lab goes with its namespaces, mounts and agents)."""
        out = []
        for p in self._loops:
            p.kill()
            p.wait()
            out.append(f"busy loop {p.pid} killed")
        self._loops = []
        if hasattr(self.lab, "start_libvirtd"):  # a soak stopped while libvirtd was down
            out.append(self.lab.start_libvirtd())
        return out


def fill(folder: Path) -> str:
    """Fill the file system of `folder` with one file, as far as it goes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    try:
        fd = os.open(folder / FILL, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as e:
        return f"cannot fill: {e}"
    try:
        os.posix_fallocate(fd, 0, max(free, 1))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            return f"fill stopped: {e}"
    finally:
        os.close(fd)
    st = os.statvfs(folder)
    return f"filled ({free // 1024} KiB taken, {st.f_bavail * st.f_frsize // 1024} KiB left)"

