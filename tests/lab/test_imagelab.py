"""ImageLab's way into its guests (a key pair of its own, the public key in the manifest), and
the image it boots."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from cloudd_lab import imagelab
from cloudd_lab.imagelab import ImageLab
from cloudd_lab.vmlab import VmLab

from cloudd.config.sshkeys import check_public_key
from cloudd.images.store import Image


def test_the_labs_public_key_is_the_manifests_node_access() -> None:
    lab = ImageLab("h12t", hosts=1)
    try:
        assert "node_access" not in lab.manifest_extra()  # no key yet, no way in
        lab.make_ssh_key()
        public = lab.ssh_key.with_suffix(".pub").read_text().strip()
        extra = yaml.safe_load(lab.manifest_extra())
        assert extra["node_access"] == {"ssh_authorized_keys": [public]}
        assert check_public_key(public) == public
        assert stat.S_IMODE(lab.ssh_key.stat().st_mode) == 0o600
        assert stat.S_IMODE(lab.ssh_key.parent.stat().st_mode) == 0o700
        assert lab.ssh_key.is_relative_to(lab.root) and lab.time_servers
    finally:
        shutil.rmtree(lab.root)


def test_an_image_given_is_booted_as_is_and_not_looked_up_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> Image:
        raise AssertionError("ensure_image called for an image the lab was given")
    monkeypatch.setattr(imagelab, "ensure_image", no_build)
    image = Image("node-web-0123456789abcdef", tmp_path)
    lab = ImageLab("h12t", hosts=1, image=image)
    try:
        assert lab.boot_values() == {"kernel": str(image.kernel), "initrd": str(image.initrd)}
    finally:
        shutil.rmtree(lab.root)


def test_the_hosts_offer_the_image_cache_and_share_nothing_unlike_a_test_guests(
        tmp_path: Path) -> None:
    image = Image("node-web-0123456789abcdef", tmp_path / "cache")
    lab = ImageLab("h12t", hosts=1, image=image)
    guests = VmLab("h12g", hosts=1)
    try:
        lab.template_values = {"bridge": "h12tbr", **lab.boot_values()}
        assert json.loads(lab.libvirt_settings()) == {
            "uri": "qemu:///system",
            "image_dirs": ["/var/lib/cloudd/images", str(tmp_path / "cache")]}
        guests.template_values = {"kernel": "/var/tmp/g/vmlinuz", "initrd": "/var/tmp/g/i.gz"}
        assert json.loads(guests.libvirt_settings()) == {
            "uri": "qemu:///system", "image_dirs": ["/var/lib/cloudd/images", "/var/tmp/g"],
            "lab_allow_host_root_share": True}
    finally:
        shutil.rmtree(lab.root)
        shutil.rmtree(guests.root)
