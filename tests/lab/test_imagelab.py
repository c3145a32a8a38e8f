"""ImageLab's way into its guests (a key pair of its own, the public key in the manifest), and
the image it boots."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml
from cloudd_lab import imagelab
from cloudd_lab.imagelab import ImageLab

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
