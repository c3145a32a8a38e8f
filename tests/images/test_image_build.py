"""The build's shell without its tools: the cache hit, and the changes applied to a tree."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from cloudd.images import build
from cloudd.images.build import AgentPayload, Stage, _configure, build_image, recipe
from cloudd.images.packages import ImageBuildError, image_type
from cloudd.images.recipe import TreeRecipe
from cloudd.images.rootfs import changes
from cloudd.images.store import SUFFIXES, Image

UNIT = "[Service]\nExecStart=/opt/cloudd/venv/bin/cloudd\n"


def _agent(tmp_path: Path) -> AgentPayload:
    house = tmp_path / "wheels"
    house.mkdir()
    wheels = [house / "dep-1.0-py3-none-any.whl", house / "cloudd-0.1.0-py3-none-any.whl"]
    for w in wheels:
        _wheel(w, b"first")
    return AgentPayload(wheels=lambda: (wheels, False), unit=UNIT)


def _wheel(path: Path, content: bytes, *, when: tuple[int, ...] = (1980, 1, 1, 0, 0, 0)) -> None:
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(zipfile.ZipInfo("pkg/__init__.py", date_time=when), content)


def _apt(tmp_path: Path) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://m.example/debian bookworm main\n")
    return apt


def test_a_second_build_with_the_same_inputs_returns_the_cached_image(tmp_path: Path) -> None:
    agent, apt, cache = _agent(tmp_path), _apt(tmp_path), tmp_path / "cache"
    plan, _ = recipe(image_type("web"), wheels=agent.wheels()[0], unit=UNIT, apt_dir=apt)
    assert plan.tree.mirrors == ("deb http://m.example/debian bookworm main",)
    cache.mkdir()
    for suffix in SUFFIXES:
        (cache / f"{plan.name}.{suffix}").write_text(suffix)
    os.utime(cache / f"{plan.name}.packages", (1, 1))
    stages: list[Stage] = []
    image = build_image(image_type("web"), agent=agent, cache=cache, report=stages.append,
                        apt_dir=apt, clock=lambda: 5.0)
    assert image == Image(plan.name, cache)
    assert stages == [Stage("wheels", 0.0, "2 wheels, cached"),
                      Stage("cached", 0.0, str(image.qcow2))]
    assert image.packages.stat().st_mtime > 1  # marked used: the last pruned


def test_new_wheels_or_unit_name_another_image_the_same_wheel_made_again_does_not(
        tmp_path: Path) -> None:
    agent, apt = _agent(tmp_path), _apt(tmp_path)
    wheels = agent.wheels()[0]
    plan, _ = recipe(image_type("web"), wheels=wheels, unit=UNIT, apt_dir=apt)
    assert recipe(image_type("web"), wheels=wheels, unit=UNIT + "#", apt_dir=apt)[0] != plan
    _wheel(wheels[1], b"first", when=(2030, 1, 1, 0, 0, 0))  # made again: the same content
    assert recipe(image_type("web"), wheels=wheels, unit=UNIT, apt_dir=apt)[0] == plan
    _wheel(wheels[1], b"a new cloudd")
    assert recipe(image_type("web"), wheels=wheels, unit=UNIT, apt_dir=apt)[0].name != plan.name


def test_a_wheel_that_is_no_zip_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "cloudd-0.1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ImageBuildError, match=r"any\.whl is not a readable wheel"):
        recipe(image_type("web"), wheels=[bad], unit=UNIT, apt_dir=_apt(tmp_path))


def _tree(root: Path) -> Path:
    for folder in ("etc/ssh", "etc/systemd/system/multi-user.target.wants", "var/lib/dbus",
                   "root/.ssh", "lib/systemd/system"):
        (root / folder).mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:20790:0:99999:7:::\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("# kept\n")
    (root / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA")
    (root / "etc/systemd/system/multi-user.target.wants/nginx.service").symlink_to(
        "/lib/systemd/system/nginx.service")
    return root


def test_the_changes_are_applied_under_the_tree_and_never_through_a_link(
        tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    outside = tmp_path / "host-resolv.conf"
    outside.write_text("nameserver 192.0.2.1\n")
    (root / "etc/resolv.conf").symlink_to(outside)
    detail = _configure(root, changes(unit=UNIT, units_off=("nginx.service",)))
    assert outside.read_text() == "nameserver 192.0.2.1\n"
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/shadow").read_text() == "root:!*:20790:0:99999:7:::\n"
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").is_symlink()
    assert sorted(os.listdir(root / "etc/ssh")) == ["sshd_config"]
    assert not (root / "root/.ssh").exists()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(os.listdir(wants)) == ["cloudd.service"]
    assert os.readlink(wants / "cloudd.service") == "/etc/systemd/system/cloudd.service"
    assert (root / "etc/systemd/system/cloudd.service").read_text() == UNIT
    assert "nginx.service off" in detail


def test_a_change_whose_folder_links_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    (tmp_path / "elsewhere").mkdir()
    (root / "etc/cloud").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageBuildError, match="leads out of the tree"):
        _configure(root, changes(unit=UNIT, units_off=()))
    assert not any((tmp_path / "elsewhere").rglob("*"))


def test_the_tree_tarball_is_fsynced_and_renamed_durably(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """mmdebstrap writes `.tar.part`; only a tarball on disk in full takes the cached name."""
    def mmdebstrap(argv: list[str], **_: object) -> str:
        part = next(a for a in argv if a.endswith(".tar.part"))
        Path(part).write_bytes(b"tar")
        return ""

    calls: list[tuple[Path, Path]] = []
    real = build.replace_durable

    def durable(tmp: Path, path: Path) -> None:
        calls.append((tmp, path))
        real(tmp, path)

    monkeypatch.setattr(build, "_run", mmdebstrap)
    monkeypatch.setattr(build, "replace_durable", durable)
    tree = TreeRecipe("web", "bookworm", ("deb http://m.example/debian bookworm main",),
                      ("nginx",))
    tarball = build._tree(tree, cache=tmp_path, report=lambda _: None, clock=lambda: 0.0)
    assert calls == [(tarball.with_name(tarball.name + ".part"), tarball)]
    assert tarball.read_bytes() == b"tar"
    assert sorted(p.name for p in (tmp_path / "trees").iterdir()) == [tarball.name]
