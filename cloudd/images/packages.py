"""What goes into a node image, per cloud type: Debian packages, and the units left off.

A node VM reaches no package index, so its image carries every package any role of its cloud
type installs (one image per type keeps builds few; a role uses what it needs). The provider's
roles name their packages too (`Role.packages`); a test checks that each type's image holds
them all, so the two lists cannot drift apart.

Debian enables the units of the servers it installs (nginx, MariaDB); on a node the agent runs
those under its own supervisor with its own configuration, so the image leaves them disabled
lest systemd take their ports first.
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
    """The packages of one cloud type's roles, and the units the agent runs itself."""

    name: str
    packages: tuple[str, ...]
    units_off: tuple[str, ...] = ()


#: One entry per cloud type an image can be built for.
TYPES: Mapping[str, ImageType] = {
    "web": ImageType(
        "web",
        packages=("nginx", "ruby", "ruby-webrick", "ruby-mysql2",
                  "mariadb-server", "mariadb-client"),
        units_off=("nginx.service", "mariadb.service")),
    # The batch and AppScale types go here when their providers exist, e.g.
    #   "slurm": ImageType("slurm", packages=("slurm-wlm", "munge"),
    #                      units_off=("slurmctld.service", "slurmd.service", "munge.service")),
    # TORQUE has no Debian package: its image type will add the wheels-like payload of a
    # TORQUE built from source rather than a package name. AppScale's tools are Python 2 code.
}


def image_type(name: str) -> ImageType:
    """The type called `name`; one sentence naming the known ones otherwise."""
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
