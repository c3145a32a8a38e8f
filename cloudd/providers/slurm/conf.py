"""Where a Slurm node keeps its files, and the slurm.conf it runs with, rendered purely.

Every path is below the node's root, so that several nodes can share a machine (tests run
them in `cloudd_lab.nodens` namespaces): munge's key, seed and pid in `munge/` (munge's,
0700: munged refuses a key others can read), its socket in `run/munge/` (munge's, 0755: every
local user reaches it), and Slurm's files in `slurm/`: slurm.conf, the controller's state
(`state/`, the slurm user's: the one folder slurmctld writes once it has dropped to that
user), the compute daemon's spool (`spool/`, root's: slurmd runs as root) and the pid files
(`run/`, root's: the daemons read them as root, see `SlurmPaths.slurm_run`).

slurm.conf names the controller and the partition, never the compute nodes: they join as
Slurm's dynamic nodes (`slurmd -Z`), each registering itself with the CPUs and memory it
has, so that a compute node comes and goes without touching the file or restarting anything
(Slurm 22.05, Debian 12's, cannot add or remove nodes on `scontrol reconfigure`). The file
is therefore the same on every node but for the node's own paths; `DebugFlags=NO_CONF_HASH`
says so to Slurm, which otherwise warns about files that differ.

Every value rendered here is checked on the way in (`cloudd.providers.values`): pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.providers import values
from cloudd.providers.slurm.spec import SlurmSettings

#: The controller's and the compute daemons' TCP ports (Slurm's defaults).
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
#: The user slurmctld drops to (Debian's package makes it, with the same uid everywhere).
SLURM_USER = "slurm"
#: The user munged runs as (Debian's munge package makes it).
MUNGE_USER = "munge"
#: munged refuses a shorter key (bytes).
MUNGE_KEY_MIN = 32
_CONF = "slurm.conf"


def slurm_settings(raw: Mapping[str, Any]) -> SlurmSettings:
    """Settings from the manifest's mapping; one precise error for the first bad value."""
    return values.settings(SlurmSettings, raw, kind="slurm")


@dataclass(frozen=True)
class SlurmPaths:
    """The paths of one node, below its (checked) root."""

    root: Path

    @classmethod
    def of(cls, root: Path, *, target: str = _CONF) -> SlurmPaths:
        return cls(values.path(root, what="node root", target=target))

    @property
    def log(self) -> Path:
        """The supervisor's logs of the node's services (root's alone)."""
        return self.root / "log"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def munge_key(self) -> Path:
        return self.munge / "munge.key"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def munge_run(self) -> Path:
        return self.run / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_run / "munge.socket.2"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def conf(self) -> Path:
        return self.slurm / "slurm.conf"

    @property
    def state(self) -> Path:
        """slurmctld's StateSaveLocation: jobs and dynamic nodes survive its restarts."""
        return self.slurm / "state"

    @property
    def spool(self) -> Path:
        return self.slurm / "spool"

    @property
    def slurm_run(self) -> Path:
        """The pid files: root's folder, never the slurm user's. slurmctld and slurmd open
        their pid file as root when they start (slurmctld before it drops to SlurmUser): in
        a folder the slurm user could write, that user could put a link there and have root
        create or truncate any file through it. (What keeps a stale pid file from naming a
        process root would kill is Slurm's own lock on it, not the folder.)"""
        return self.slurm / "run"


@dataclass(frozen=True)
class SlurmctldHost:
    """The head node as slurm.conf names it: its node name (its hostname) and address."""

    name: str
    address: values.IPAddress

    @classmethod
    def of(cls, name: Any, address: Any) -> SlurmctldHost:
        return cls(values.label(name, what="head node name", target=_CONF),
                   values.ip(address, what=f"address of {name}", target=_CONF))


def render_conf(*, cloud: str, settings: SlurmSettings, controller: SlurmctldHost,
                paths: SlurmPaths) -> str:
    """slurm.conf for one node of the cloud (the module docstring says what and why)."""
    cluster = settings.cluster_name or values.label(cloud, what="cloud name", target=_CONF)
    lines = [
        f"# slurm.conf of cloud {cluster}, rendered by cloudd: changes here are overwritten.",
        f"ClusterName={cluster}",
        f"SlurmctldHost={controller.name}({controller.address})",
        f"SlurmctldPort={SLURMCTLD_PORT}",
        f"SlurmdPort={SLURMD_PORT}",
        f"SlurmUser={SLURM_USER}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={paths.munge_socket}",
        f"StateSaveLocation={paths.state}",
        f"SlurmdSpoolDir={paths.spool}",
        f"SlurmctldPidFile={paths.slurm_run / 'slurmctld.pid'}",
        f"SlurmdPidFile={paths.slurm_run / 'slurmd.pid'}",
        # Without systemd's cgroups for the daemons: processes tracked by their parentage.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        # Dynamic nodes need cons_tres and room for them; jobs share a node by cores.
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        f"MaxNodeCount={settings.max_nodes}",
        # A DOWN node serves again once its slurmd registers with a valid configuration.
        "ReturnToService=2",
        f"SlurmdTimeout={settings.slurmd_timeout}",
        # Dynamic nodes are not in this file: messages go to each node directly.
        "TreeWidth=65533",
        "DebugFlags=NO_CONF_HASH",
    ]
    if controller.address.version == 6:
        lines.append("CommunicationParameters=EnableIPv6")
    lines.append(f"PartitionName={settings.partition} Nodes=ALL Default=YES "
                 f"MaxTime={settings.max_time} State=UP")
    return "\n".join(lines) + "\n"
