"""The soak with VM nodes: the web site's servers and balancer as real VMs booted from the
shared node image, defined and started by the cloud's leader on the pool hosts, and faults
that only VMs have.

`VmChaosLab` is an `ImageLab` (pool host agents in namespaces on this machine's libvirtd, the
nodes' guests booted from `cloudd-cli image build`'s image, their agents under the guests'
systemd) with the soak's parts (`ChaosParts`: small state file systems, a clock to step, the
servers' port). The database stays a `managed: false` node in a namespace with its own agent
(`DATABASE`): a fourth TCG guest on two shared cores makes every recovery slower, and the
namespace database keeps the ledger's check as strict as the namespace soak's.

The VM faults, made on the machine as a failure would: kill -9 or SIGSTOP of a node's qemu
(its pid from libvirt's pid file), and a restart of libvirtd (SIGTERM, then `libvirtd -d`:
this machine has no systemd). The qemu processes keep running across a libvirtd restart.

`Domains` reads what the VM invariants need, from outside the cloud: the running domains whose
cloudd metadata names each node (libvirt's own view, through one connection that is opened
again after a restart), and the qemu processes running each domain (the machine's view, which
also sees a qemu libvirt lost track of).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt

from cloudd.vmctl.metadata import MetadataError, from_domain_xml
from cloudd_lab.chaos.faults import ChaosParts
from cloudd_lab.imagelab import WEB_SETTINGS, ImageLab
from cloudd_lab.vmlab import SYSTEM, qemu_pid

#: the node that stays a namespace node, with its own agent
DATABASE = "lab-database-1"
#: libvirtd's pid file (libvirtd -d writes it)
LIBVIRTD_PID = Path("/run/libvirtd.pid")
#: seconds for libvirtd to stop, and to answer again once started
LIBVIRTD_BOUND = 60.0


class VmChaosLab(ChaosParts, ImageLab):
    """Three pool hosts, the database in a namespace, the servers and the balancer in VMs."""

    def __init__(self, prefix: str, **kw: Any) -> None:
        super().__init__(prefix, agent_nodes=(DATABASE,), hosts_last_first=True,
                         cloud_name=prefix, **kw)
        self.own_fields[DATABASE] = "managed: false"

    def settings(self) -> dict[str, object]:
        return {**WEB_SETTINGS, "app_port": self.app_port, "balancer_port": 80}

    @property
    def vms(self) -> list[str]:
        """The nodes that are VMs (every node the lab runs no agent for)."""
        return [n for n in self.node_addresses if n not in self.agents]

    # -- faults ---------------------------------------------------------------------------
    def kill_qemu(self, node: str) -> str:
        domain = self.domain(node)
        pid = qemu_pid(domain)
        if pid is None:
            return f"{domain} has no qemu running: nothing killed"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"qemu {pid} of {domain} killed (SIGKILL)"

    def stop_qemu(self, node: str) -> tuple[str, int | None]:
        """SIGSTOP of the node's qemu: what was done, and the pid to continue."""
        domain = self.domain(node)
        pid = qemu_pid(domain)
        if pid is None:
            return f"{domain} has no qemu running: nothing stopped", None
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return f"qemu {pid} of {domain} gone before its SIGSTOP", None
        return f"qemu {pid} of {domain} stopped (SIGSTOP)", pid

    def continue_qemu(self, pid: int | None) -> str:
        if pid is None:
            return "nothing to continue"
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return f"qemu {pid} gone meanwhile (destroyed by the cloud)"
        return f"qemu {pid} continued (SIGCONT)"

    def stop_libvirtd(self) -> str:
        """libvirtd stopped as its service manager would (SIGTERM, waited for)."""
        try:
            pid = int(LIBVIRTD_PID.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError) as e:
            return f"libvirtd not stopped: {e}"
        end = time.monotonic() + LIBVIRTD_BOUND
        while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            return f"libvirtd {pid} got SIGTERM and still runs after {LIBVIRTD_BOUND:g} s"
        return f"libvirtd {pid} stopped (SIGTERM)"

    def start_libvirtd(self) -> str:
        """libvirtd started unless it runs, and waited for until it answers."""
        if libvirtd_answers():
            return "libvirtd runs"
        t = time.monotonic()
        subprocess.run(["libvirtd", "-d"], capture_output=True, check=False, timeout=60)
        while not libvirtd_answers():
            if time.monotonic() - t > LIBVIRTD_BOUND:
                return f"libvirtd started but not answering after {LIBVIRTD_BOUND:g} s"
            time.sleep(0.1)
        return f"libvirtd started, answering after {time.monotonic() - t:.1f} s"

    def close(self) -> None:
        # libvirtd must run for the domains to go (a soak stopped while it was down).
        self.start_libvirtd()
        super().close()


def libvirtd_answers() -> bool:
    return subprocess.run(["virsh", "-c", SYSTEM, "uri"], capture_output=True,
                          check=False, timeout=30).returncode == 0


def qemu_guest(cmdline: Sequence[str]) -> str | None:
    """The domain a qemu command line runs (`-name guest=NAME,...`), None for anything else."""
    if not cmdline or not Path(cmdline[0]).name.startswith("qemu-system"):
        return None
    for flag, value in itertools.pairwise(cmdline):
        if flag == "-name":
            for part in value.split(","):
                if part.startswith("guest="):
                    return part.removeprefix("guest=")
            return value.split(",")[0]
    return None


def qemu_processes() -> dict[str, list[int]]:
    """domain name -> the live qemu processes running it, on this machine (zombies have no
    command line and are left out)."""
    out: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        name = qemu_guest([a.decode(errors="replace") for a in raw.split(b"\0") if a])
        if name is not None:
            out.setdefault(name, []).append(int(entry))
    return out


class Domains:
    """The running domains of one cloud as libvirt has them, by the node their metadata names."""

    def __init__(self, cloud: str, *, uri: str = SYSTEM) -> None:
        self.cloud, self.uri = cloud, uri
        self._conn: Any = None
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

    def running(self) -> dict[str, list[str]] | None:
        """node -> the names of the running (or paused) domains whose cloudd metadata names
        it in this cloud; None when libvirt cannot tell now (restarting: no breach)."""
        try:
            if self._conn is None:
                self._conn = libvirt.open(self.uri)
            out: dict[str, list[str]] = {}
            for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    meta = from_domain_xml(dom.XMLDesc(0))
                except libvirt.libvirtError:
                    continue  # gone meanwhile
                if meta is not None and meta.cloud == self.cloud:
                    out.setdefault(meta.node, []).append(dom.name())
            return out
        except (libvirt.libvirtError, MetadataError):
            self.close()
            return None

    def close(self) -> None:
        """Safe to call twice."""
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
