"""What the build changes in the root tree once Debian's packages are in: files, links, removals.

An image is shared by every node booted from it, so it must hold nothing that belongs to one
machine or that would let anyone in: the machine id is empty (systemd makes one per VM at its
first boot), the SSH host keys Debian's postinst made here are removed (cloud-init makes new
ones per instance), root's password is locked, and no key is baked in. The agent's unit is
enabled, and so is a getty on the serial console, which is all an operator has of a VM with no
network yet. Units of servers the agent runs itself are disabled (`packages.units_off`).

Pure: the changes are data (`Write`, `Link`, `Remove`) that `build` applies under the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudd.images.packages import ImageBuildError

#: The root filesystem's label (mkfs.ext4 -L), by which /etc/fstab finds it whatever its bus.
ROOT_LABEL = "cloudd-root"
#: Kernel arguments for direct kernel boot: the image is a bare ext4 on the first virtio disk.
KERNEL_ARGS = "root=/dev/vda console=ttyS0"
#: Where the agent's unit goes in the image.
UNIT_PATH = "/etc/systemd/system/cloudd.service"
#: The links that enable units; removing a unit's disables it.
WANTS = "/etc/systemd/system/*.wants/"

#: The node image's drop-in that lifts two of the agent unit's restrictions (`JOBS_DROP_IN`).
JOBS_DROP_IN_PATH = UNIT_PATH + ".d/20-node-jobs.conf"

#: Where a node's identity lands: cloud-init writes it from the node's own NoCloud seed
#: (`cloudd.vmctl.identity.seed_files`), with its certificates in `pki/` beside it.
IDENTITY = "/etc/cloudd/identity.json"


def drop_in(venv: str) -> str:
    """The node image's change to the agent's unit: the agent starts from the identity its
    seed brings (never from a settings file a node does not have), once cloud-init has
    written it."""
    return f"""\
# A node image: the agent's identity and credentials come with the node's own NoCloud seed,
# which cloud-init writes in cloud-init.service; wait for it, so the agent never starts on a
# half-written seed. Without a seed (a VM booted bare) the agent is not started at all.
[Unit]
After=cloud-init.service
AssertPathExists=
AssertPathExists={IDENTITY}

[Service]
ExecStart=
ExecStart={venv}/bin/cloudd --from-identity {IDENTITY}
# A guest under TCG sharing its host's cores with others may take minutes to import Python
# while it boots: a start timeout there only restarts it, which costs the same again.
TimeoutStartSec=300s
"""


#: The agent's unit (cloudd/commands/bootstrap/cloudd.service) sets NoNewPrivileges and
#: RestrictSUIDSGID, and every process it supervises inherits them: on a node those are the
#: schedulers' daemons (slurmd, pbs_mom) and so the users' jobs they start. Under
#: no_new_privs the kernel ignores the setuid/setgid bits and file capabilities of what a job
#: runs (ping, sudo, passwd, MPI launchers); RestrictSUIDSGID refuses setting those bits on
#: files and folders, which users of a cluster do for shared group folders (chmod g+s). A node
#: is a tenant's machine: the node image lifts the two there. A pool host keeps its unit.
JOBS_DROP_IN = """\
# A node image: the users' jobs run under this agent (slurmd and pbs_mom are its children and
# their jobs are theirs), and would inherit its no_new_privs (setuid programs and file
# capabilities ignored: ping, sudo, passwd, MPI launchers) and its refusal to set setuid or
# setgid bits (a group's shared folder made with chmod g+s). Both are lifted on a node, a
# tenant's machine; a pool host's agent keeps the unit's hardening.
[Service]
NoNewPrivileges=no
RestrictSUIDSGID=no
"""

_CLOUD_CFG = """\
# A node learns who it is from its NoCloud seed (a cdrom labelled cidata) and from nowhere
# else: probing other clouds' metadata services would cost minutes of timeouts in a VM that
# has no route out. None lets a VM without a seed boot all the same.
datasource_list: [NoCloud, None]
# A seed needs only the init stage's modules: its files (identity, credentials, chrony's
# servers, root's keys), the host name, root's locked password and the SSH host keys, and
# bootcmd for whoever makes a seed of their own. The config and final stages run no module
# (they still run, so `cloud-init status` says done); under TCG each module costs seconds of
# a booting node.
cloud_init_modules: [bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts,
                     users_groups, ssh]
cloud_config_modules: []
cloud_final_modules: []
"""

#: cloud-init's config and final stages, which run no module here (above), still start Python
#: twice; at the idle CPU class they wait for whatever else the guest is doing (the agent
#: starting, its role's services) instead of halving its share of a TCG vCPU.
IDLE_STAGES = ("cloud-config.service", "cloud-final.service")

_IDLE = """\
# cloudd node image: this stage runs no module; it waits for the guest to be idle.
[Service]
CPUSchedulingPolicy=idle
IOSchedulingClass=idle
Nice=19
"""

_FSTAB = f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"


@dataclass(frozen=True)
class Write:
    """Write `text` to `path` (absolute inside the image) with `mode`."""

    path: str
    text: str
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    """A symbolic link at `path` pointing at `target` (both as seen inside the image)."""

    path: str
    target: str


@dataclass(frozen=True)
class Remove:
    """Remove whatever matches the glob `pattern` (absolute inside the image)."""

    pattern: str


Change = Write | Link | Remove


def changes(*, unit: str, units_off: tuple[str, ...], venv: str = "/opt/cloudd/venv",
            hostname: str = "cloudd-node") -> tuple[Change, ...]:
    """Every change to the packaged tree, in the order they are applied."""
    out: list[Change] = [
        Write(UNIT_PATH, unit),
        Write(UNIT_PATH + ".d/10-node-image.conf", drop_in(venv)),
        Write(JOBS_DROP_IN_PATH, JOBS_DROP_IN),
        Link("/etc/systemd/system/multi-user.target.wants/cloudd.service", UNIT_PATH),
        Link("/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
             "/lib/systemd/system/serial-getty@.service"),
    ]
    out += [Remove(WANTS + name) for name in units_off]
    out += [Write(f"/etc/systemd/system/{stage}.d/10-idle.conf", _IDLE) for stage in IDLE_STAGES]
    out += [
        # Empty, not absent: systemd then makes the id at first boot and writes it back.
        Write("/etc/machine-id", "", mode=0o444),
        Remove("/var/lib/dbus/machine-id"),
        Remove("/var/lib/systemd/random-seed"),
        Remove("/etc/ssh/ssh_host_*"),
        # munge's postinst made a key: every node of every cloud booted from this image would
        # share it. A node's munged uses the key its cloud's leader sends (the Slurm role).
        Remove("/etc/munge/munge.key"),
        Remove("/root/.ssh"),
        Write("/etc/fstab", _FSTAB),
        Write("/etc/hostname", hostname + "\n"),
        # mmdebstrap copies this machine's resolver; a node has none of its own yet.
        Write("/etc/resolv.conf", ""),
        Write("/etc/cloud/cloud.cfg.d/90_cloudd.cfg", _CLOUD_CFG),
    ]
    return tuple(out)


def lock_root(shadow: str) -> str:
    """/etc/shadow with root's password locked as `passwd -l` does (a leading `!`)."""
    lines = shadow.splitlines(keepends=True)
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 2:
            if not fields[1].startswith("!"):
                fields[1] = "!" + fields[1]
            lines[i] = ":".join(fields)
            return "".join(lines)
    raise ImageBuildError("the tree's /etc/shadow has no root entry")
