"""What each image type holds: the base, the type's packages, the units left off."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.images.packages import (
    BASE,
    TYPES,
    ImageBuildError,
    image_type,
    package_set,
    units_off,
)
from cloudd.providers.base import Assignment
from cloudd.providers.web.provider import PROVIDER


def test_the_base_boots_a_node_and_runs_its_agent() -> None:
    for name in ("systemd", "systemd-sysv", "udev", "cloud-init", "python3", "python3-venv",
                 "linux-image-cloud-amd64", "initramfs-tools", "e2fsprogs", "chrony",
                 "openssh-server", "iproute2", "ca-certificates"):
        assert name in BASE, name


def test_the_web_image_holds_every_package_its_roles_install() -> None:
    # The provider installs what is missing at run time; a VM has no index to install from.
    kind = image_type("web")
    assert kind.name == "web"
    for role in PROVIDER.roles:
        a = Assignment(cloud="w", node=f"w-{role}-1", role=role, address="10.1.0.2",
                       root=Path("/srv"), secrets_dir=Path("/etc/cloudd/secrets"),
                       settings={}, peers=())
        for package in PROVIDER.role(role).packages(a):
            assert package in package_set(kind), (role, package)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_a_package_set_is_sorted_once_each_and_holds_the_base(name: str) -> None:
    packages = package_set(image_type(name))
    assert list(packages) == sorted(set(packages))
    assert set(BASE) <= set(packages)


def test_the_web_image_leaves_the_servers_the_agent_runs_and_the_base_units_off() -> None:
    assert units_off(image_type("web")) == (
        "apt-daily-upgrade.timer", "apt-daily.timer", "dpkg-db-backup.timer",
        "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "mariadb.service",
        "nginx.service")


def test_an_unknown_type_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ImageBuildError) as err:
        image_type("torque")
    assert str(err.value) == "no image type 'torque' (known: web)"
