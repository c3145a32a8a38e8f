"""Where a TORQUE node keeps its files, and what cloudd writes there, rendered purely.

TORQUE is built once per machine into `PREFIX` (`scripts/build-torque.sh`); its compiled-in
home (`PREFIX/spool`) is a pristine PBS_HOME that each node copies into a home of its own
(`Home`) below its assignment's root, so several nodes can share one machine in tests. Every
daemon gets that home with `-d`, every client the server's name with `PBS_DEFAULT`.

cloudd renders three files of a home: `server_name` (the head), `pbs_environment` (the
daemons' environment) and, on a compute node, `mom_priv/config` (`$pbsserver` = the head,
`$usecp` for the cloud's shared folders). The server's own settings (queue, scheduling) are
qmgr commands (`server_setup`), applied on the head by its `setup` action. Every value placed
in a file or a qmgr command is checked here first (`cloudd.providers.values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.errors import TemporaryError
from cloudd.providers import values
from cloudd.providers.base import Assignment, DirSpec, FileSpec, Rendered
from cloudd.providers.torque.spec import TorqueSettings

#: Where scripts/build-torque.sh installs TORQUE (a local fact of the machine, never a setting
#: from the wire: the agent runs these programs as root).
PREFIX = Path("/opt/torque")
#: TORQUE's own ports: pbs_server, pbs_mom (jobs), pbs_mom (manager, momctl), pbs_sched.
SERVER_PORT, MOM_PORT, MOM_MANAGER_PORT, SCHED_PORT = 15001, 15002, 15003, 15004
#: trqauthd's socket, compiled in: one per machine (per mount namespace in tests).
TRQAUTHD_SOCKET = "/tmp/trqauthd-unix"
_MOM_CONFIG = "pbs_mom's mom_priv/config"
#: Seconds between two status reports of a pbs_mom to pbs_server (TORQUE's default, 45, is
#: sized for thousands of nodes): a node that reported `down` (a pbs_mom started before its
#: node was created, or a restarted pbs_server) is `free` again within about this long.
STATUS_UPDATE_TIME = 10
#: Seconds between two scheduling cycles that no job event started (a node that turned free
#: takes a queued job within this long).
SCHEDULER_ITERATION = 10


def torque_settings(raw: Mapping[str, Any]) -> TorqueSettings:
    """Settings from the manifest's mapping; one precise error for the first bad value."""
    return values.settings(TorqueSettings, raw, kind="torque")


def program(kind: str, name: str) -> str:
    """The path of one of TORQUE's programs (`sbin` daemons, `bin` clients)."""
    return str(PREFIX / kind / name)


@dataclass(frozen=True)
class Home:
    """One node's PBS_HOME and the folders cloudd keeps beside it."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "torque"

    @property
    def log(self) -> Path:
        """The daemons' standard output: root's folder, never a TORQUE user's."""
        return self.root / "log"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def server_db(self) -> Path:
        return self.home / "server_priv" / "serverdb"

    @property
    def mom_config(self) -> Path:
        return self.home / "mom_priv" / "config"


def home_of(a: Assignment, target: str) -> Home:
    return Home(values.path(a.root, what="node root", target=target))


def head_of(a: Assignment, target: str) -> str:
    """The name of the cloud's head as this node sees it (itself, on the head)."""
    if a.role == "head":
        return values.label(a.node, what="node name", target=target)
    heads = a.peers_of("head")
    if not heads:
        raise TemporaryError(f"{a.node} has no TORQUE head to report to yet", delay=5.0)
    return values.label(heads[0].node, what="head name", target=target)


def environment(head: str) -> tuple[tuple[str, str], ...]:
    """What every TORQUE program of a node needs in its environment: the server's name."""
    return (("PBS_DEFAULT", head),)


def _home_dirs(home: Home, *, compute: bool) -> tuple[DirSpec, ...]:
    # The modes TORQUE's own install gives these folders (its daemons check them).
    dirs = [DirSpec(home.root), DirSpec(home.log), DirSpec(home.state, mode=0o700),
            DirSpec(home.home)]
    if compute:
        dirs.append(DirSpec(home.home / "mom_priv", mode=0o751))
    return tuple(dirs)


def _common_files(home: Home, head: str) -> tuple[FileSpec, ...]:
    return (FileSpec(home.home / "server_name", f"{head}\n"),
            FileSpec(home.home / "pbs_environment", "PATH=/bin:/usr/bin\nLANG=C\n"))


def mom_config(head: str, shared_paths: tuple[str, ...], *, node: str) -> str:
    """pbs_mom's configuration: its server, its logging, and the folders copied with cp."""
    lines = [f"# pbs_mom of {node}, written by cloudd from the cloud's manifest.",
             f"$pbsserver {head}", "$logevent 0x1ff",
             f"$status_update_time {STATUS_UPDATE_TIME}"]
    for path in shared_paths:
        shared = values.path(path, what="shared path", target=_MOM_CONFIG)
        lines.append(f"$usecp *:{shared} {shared}")
    return "\n".join(lines) + "\n"


def render_head(a: Assignment) -> Rendered:
    home = home_of(a, "the head's PBS_HOME")
    head = head_of(a, "server_name")
    return Rendered(dirs=_home_dirs(home, compute=False), files=_common_files(home, head))


def render_compute(a: Assignment) -> Rendered:
    s = torque_settings(a.settings)
    home = home_of(a, _MOM_CONFIG)
    head = head_of(a, _MOM_CONFIG)
    node = values.label(a.node, what="node name", target=_MOM_CONFIG)
    config = FileSpec(home.mom_config, mom_config(head, tuple(s.shared_paths), node=node),
                      mode=0o644, reload=("pbs_mom",))
    return Rendered(dirs=_home_dirs(home, compute=True),
                    files=(*_common_files(home, head), config))


def server_setup(settings: TorqueSettings, *, queues: tuple[str, ...]) -> tuple[str, ...]:
    """The qmgr commands that give a fresh or running server the cloud's settings.

    Idempotent: `set` commands repeat harmlessly, and the queue is created only when the
    server does not list it yet (`queues`)."""
    queue = values.identifier(settings.queue, what="queue name", target="qmgr")
    commands = [] if queue in queues else [f"create queue {queue} queue_type=execution"]
    commands += [
        f"set queue {queue} enabled = True",
        f"set queue {queue} started = True",
        f"set server default_queue = {queue}",
        f"set server scheduling = {settings.scheduler}",
        # Users may submit from any node of the cloud, not only from the head.
        "set server allow_node_submit = True",
        # np follows what each pbs_mom reports, unless the manifest fixes it.
        f"set server auto_node_np = {settings.np is None}",
        # A pbs_mom silent for this long is `down`: three of its status reports missed
        # (TORQUE's 150 s goes with its 45 s reports).
        f"set server node_check_rate = {3 * STATUS_UPDATE_TIME}",
        # pbs_server calls pbs_sched on a job's arrival or end, not when a node turns free
        # (one added, one back after its VM was replaced): without a job event, queued jobs
        # wait for the timed cycle (TORQUE's 600 s).
        f"set server scheduler_iteration = {SCHEDULER_ITERATION}",
    ]
    return tuple(commands)


def node_np(settings: TorqueSettings) -> int:
    """The np a compute node is created with (auto_node_np corrects it when unset)."""
    return settings.np if settings.np is not None else 1
