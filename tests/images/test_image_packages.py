"""What each image type holds: the base, the type's packages, the units left off."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.images.packages import (
    BASE,
    NODE,
    TYPES,
    ImageBuildError,
    image_type,
    package_set,
    units_off,
)
from cloudd.providers.base import Assignment
from cloudd.providers.slurm.provider import PROVIDER as SLURM
from cloudd.providers.torque.provider import PROVIDER as TORQUE
from cloudd.providers.web.provider import PROVIDER as WEB


def test_the_base_boots_a_node_and_runs_its_agent() -> None:
    for name in ("systemd", "systemd-sysv", "udev", "cloud-init", "python3", "python3-venv",
                 "linux-image-cloud-amd64", "initramfs-tools", "e2fsprogs", "chrony",
                 "openssh-server", "iproute2", "ca-certificates"):
        assert name in BASE, name


@pytest.mark.parametrize("provider", [WEB, SLURM, TORQUE], ids=lambda p: p.cloud_type)
def test_the_one_image_holds_every_package_of_every_provider_s_roles(provider) -> None:  # type: ignore[no-untyped-def]
    # The provider installs what is missing at run time; a VM has no index to install from.
    kind = image_type(provider.cloud_type)
    assert kind is NODE and kind.name == "shared"
    assert provider.roles
    for role in provider.roles:
        a = Assignment(cloud="w", node=f"w-{role}-1", role=role, address="10.1.0.2",
                       root=Path("/srv"), secrets_dir=Path("/etc/cloudd/secrets"),
                       settings={}, peers=())
        for package in provider.role(role).packages(a):
            assert package in package_set(kind), (provider.cloud_type, role, package)


def test_every_type_shares_the_one_image() -> None:
    assert sorted(TYPES) == ["slurm", "torque", "web"]
    assert {id(kind) for kind in TYPES.values()} == {id(NODE)}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_a_package_set_is_sorted_once_each_and_holds_the_base(name: str) -> None:
    packages = package_set(image_type(name))
    assert list(packages) == sorted(set(packages))
    assert set(BASE) <= set(packages)


def test_the_image_leaves_the_servers_the_agent_runs_and_the_base_units_off() -> None:
    assert units_off(NODE) == (
        "apt-daily-upgrade.timer", "apt-daily.timer", "dpkg-db-backup.timer",
        "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "mariadb.service",
        "munge.service", "nginx.service", "slurmctld.service", "slurmd.service")


def test_an_unknown_type_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ImageBuildError) as err:
        image_type("appscale")
    assert str(err.value) == "no image type 'appscale' (known: slurm, torque, web)"
