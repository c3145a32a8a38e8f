"""What goes into the node image: Debian packages, TORQUE, and the units left off.

A node VM reaches no package index, so its image carries every package any role installs.
There is one image for every cloud type (`NODE`): web's servers, Slurm's daemons and, built
from source beside them, TORQUE (`cloudd.images.torque`). One image means one build, one
cache entry and one set of files to keep on the hosts, at the price of a few hundred MB that
a role does not use; qcow2 overlays share the base anyway. The providers' roles name their
packages too (`Role.packages`); a test checks that the image holds them all, so the lists
cannot drift apart.

Debian enables the units of the servers it installs (nginx, MariaDB, munge, slurmctld,
slurmd); on a node the agent runs those under its own supervisor with its own configuration,
so the image leaves them disabled lest systemd take their ports, sockets or keys first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cloudd.errors import PermanentError

#: Debian 12, whose python3 (3.11) is the one the agent's wheels are built for.
SUITE = "bookworm"

#: Every node image, whatever its type.
BASE: tuple[str, ...] = (
    # init, devices and the system bus
    "systemd", "systemd-sysv", "udev", "dbus",
    # Debian's cloud kernel; its initramfs mounts an ext4 root on virtio-blk; fsck for that root
    "linux-image-cloud-amd64", "initramfs-tools", "e2fsprogs",
    # the NoCloud seed; ifupdown is the network renderer cloud-init uses on Debian
    "cloud-init", "ifupdown", "netbase",
    # the agent's virtualenv (Debian's 3.11, as on the hosts that build the wheels)
    "python3", "python3-venv",
    # time from the hosts, a way in for an operator's key, addresses, TLS roots, ps/kill
    "chrony", "openssh-server", "iproute2", "ca-certificates", "procps",
)

#: Units a node does without: timers that fetch package lists (a node has no index to fetch
#: from); e2fsprogs' scrubbing of LVM snapshots (a node has no LVM, and its boot-time reaper
#: costs a booting guest a minute under TCG); weekly TRIM and daily backups of dpkg's database
#: (a node's packages come with its image, and nothing on its disk needs trimming).
BASE_UNITS_OFF: tuple[str, ...] = ("apt-daily.timer", "apt-daily-upgrade.timer",
                                   "dpkg-db-backup.timer", "e2scrub_all.timer",
                                   "e2scrub_reap.service", "fstrim.timer")


class ImageBuildError(PermanentError):
    """An image cannot be built: a bad request, a missing tool, or a stage that failed."""


@dataclass(frozen=True)
class ImageType:
    """The packages of the roles an image serves, and the units the agent runs itself."""

    name: str
    packages: tuple[str, ...]
    units_off: tuple[str, ...] = ()


#: Web: the balancer's nginx, the app servers' Ruby (WEBrick, the MySQL client library) and
#: the database's MariaDB.
WEB_PACKAGES = ("nginx", "ruby", "ruby-webrick", "ruby-mysql2", "mariadb-server",
                "mariadb-client")
#: Slurm 22.05 from Debian: munged on every node, slurmctld on the head, slurmd on compute
#: nodes, the clients (sbatch, sinfo, scontrol) everywhere.
SLURM_PACKAGES = ("munge", "slurm-client", "slurmctld", "slurmd")
#: What TORQUE's programs (built from source, not a package) load at run time: its own
#: libtorque comes with it; these come from Debian. The image build checks that every
#: library its programs need resolves in the tree (`torque.install`).
TORQUE_RUNTIME = ("libxml2", "zlib1g", "libstdc++6", "libgcc-s1")

#: The one node image, whatever the cloud's type.
NODE = ImageType(
    "shared",
    packages=(*WEB_PACKAGES, *SLURM_PACKAGES, *TORQUE_RUNTIME),
    units_off=("nginx.service", "mariadb.service", "munge.service", "slurmctld.service",
               "slurmd.service"))

#: The cloud types an image is built for: each has the one shared image. (AppScale's tools
#: are Python 2 code, which Debian 12 no longer has.)
TYPES: Mapping[str, ImageType] = {"web": NODE, "slurm": NODE, "torque": NODE}


def image_type(name: str) -> ImageType:
    """The image of cloud type `name` (the shared one); one sentence naming the known types
    otherwise."""
    try:
        return TYPES[name]
    except KeyError:
        known = ", ".join(sorted(TYPES))
        raise ImageBuildError(f"no image type {name!r} (known: {known})") from None


def package_set(kind: ImageType) -> tuple[str, ...]:
    """Every package to install for `kind`, sorted and once each (the cache key hashes it)."""
    return tuple(sorted({*BASE, *kind.packages}))


def units_off(kind: ImageType) -> tuple[str, ...]:
    """Every unit to leave disabled in `kind`'s image, sorted."""
    return tuple(sorted({*BASE_UNITS_OFF, *kind.units_off}))
