"""The image cache's files: whole images only, copies elsewhere, one build at a time."""

from __future__ import annotations

from pathlib import Path

from cloudd.images.store import SUFFIXES, Image, install, locked, publish, sweep


def _made(folder: Path, name: str = "node-web-0123456789abcdef") -> Image:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        (folder / f"{name}.{suffix}").write_text(suffix)
    return Image(name, folder)


def test_an_image_is_its_four_files_named_by_its_key(tmp_path: Path) -> None:
    image = Image("node-web-0123456789abcdef", tmp_path)
    assert image.qcow2 == tmp_path / "node-web-0123456789abcdef.qcow2"
    assert (image.kernel.suffix, image.initrd.suffix, image.packages.suffix) == (
        ".vmlinuz", ".initrd", ".packages")
    assert image.kernel_args == "root=/dev/vda console=ttyS0"
    assert not image.exists()
    _made(tmp_path)
    assert image.exists()
    image.initrd.unlink()
    assert not image.exists()


def test_install_moves_every_file_from_the_build_folder(tmp_path: Path) -> None:
    work = _made(tmp_path / ".build-x")
    image = Image(work.name, tmp_path / "cache")
    image.folder.mkdir()
    install(work.folder, image)
    assert image.exists() and not any(work.folder.iterdir())
    assert image.qcow2.read_text() == "qcow2"


def test_publish_links_into_another_folder_and_keeps_what_is_there(tmp_path: Path) -> None:
    image = _made(tmp_path / "cache")
    there = publish(image, tmp_path / "out")
    assert there == Image(image.name, tmp_path / "out") and there.exists()
    assert there.qcow2.stat().st_ino == image.qcow2.stat().st_ino  # same filesystem: a link
    there.packages.unlink()
    there.packages.write_text("kept")
    publish(image, tmp_path / "out")
    assert there.packages.read_text() == "kept"


def test_publish_to_the_cache_itself_is_the_image(tmp_path: Path) -> None:
    image = _made(tmp_path)
    assert publish(image, tmp_path) is image


def test_the_lock_is_taken_and_sweep_removes_killed_builds(tmp_path: Path) -> None:
    (tmp_path / ".build-dead" / "root").mkdir(parents=True)
    keep = _made(tmp_path)
    with locked(tmp_path) as waited:
        assert waited >= 0
        sweep(tmp_path)
    assert not (tmp_path / ".build-dead").exists() and keep.exists()
    assert (tmp_path / ".lock").is_file()
