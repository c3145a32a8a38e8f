"""The image cache's files: whole images only, copies elsewhere, one build at a time, older
images removed unless recently used or under an overlay."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from cloudd.images.store import (
    KEEP,
    SUFFIXES,
    Image,
    backing_file,
    install,
    locked,
    prune,
    publish,
    sweep,
    touch,
)


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


def _trace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsyncs (of files and folders) and renames, in order, by path."""
    trace: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        trace.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dest: str | Path) -> None:
        trace.append(("rename", str(dest)))
        real_replace(src, dest)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return trace


def test_install_makes_each_file_durable_before_the_next_the_qcow2_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _made(tmp_path / "cache" / ".build-x")
    image = Image(work.name, tmp_path / "cache")
    trace = _trace(monkeypatch)
    install(work.folder, image)
    cache = str(image.folder)
    expected = []
    for suffix in SUFFIXES:
        # the data on disk, then the rename, then the folder that holds the new name
        expected += [("fsync", str(work.file(suffix))), ("rename", str(image.file(suffix))),
                     ("fsync", cache)]
    assert trace == expected
    assert SUFFIXES[-1] == "qcow2"


def test_publish_makes_each_copy_durable(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    image = _made(tmp_path / "cache")
    trace = _trace(monkeypatch)
    there = publish(image, tmp_path / "out")
    assert [op for op in trace if op[0] == "rename"] == [
        ("rename", str(there.file(s))) for s in SUFFIXES]
    assert trace.count(("fsync", str(there.folder))) == len(SUFFIXES)


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


def _qcow2(path: Path, backing: str | None = None) -> Path:
    """A qcow2 header as qemu-img writes it (version 3), naming `backing` at byte 512."""
    offset, name = (512, backing.encode()) if backing else (0, b"")
    head = b"QFI\xfb" + struct.pack(">IQI", 3, offset, len(name))
    path.write_bytes(head.ljust(512, b"\0") + name)
    return path


def test_the_backing_file_is_read_from_the_header_relative_to_the_overlay(
        tmp_path: Path) -> None:
    assert backing_file(_qcow2(tmp_path / "a.qcow2", "/srv/base.qcow2")) == Path(
        "/srv/base.qcow2")
    assert backing_file(_qcow2(tmp_path / "b.qcow2", "base.qcow2")) == tmp_path / "base.qcow2"
    assert backing_file(_qcow2(tmp_path / "base.qcow2")) is None
    (tmp_path / "raw.img").write_bytes(b"\0" * 1024)
    assert backing_file(tmp_path / "raw.img") is None
    assert backing_file(tmp_path / "absent.qcow2") is None


def _aged(cache: Path, key: str, used: float, kind: str = "web") -> Image:
    image = _made(cache, f"node-{kind}-{key}")
    os.utime(image.packages, (used, used))
    return image


def test_prune_keeps_the_last_used_and_those_an_overlay_names(tmp_path: Path) -> None:
    cache, overlays = tmp_path / "cache", tmp_path / "images"
    new = _aged(cache, "f" * 16, 900)
    recent = _aged(cache, "e" * 16, 500)
    second = _aged(cache, "d" * 16, 400)
    based_on = _aged(cache, "c" * 16, 100)
    old = [_aged(cache, "b" * 16, 300), _aged(cache, "a" * 16, 200)]
    other_type = _aged(cache, "0" * 16, 1, kind="slurm")
    (cache / "node-web-notakey.qcow2").write_text("not an image of the cache's")
    overlays.mkdir()
    _qcow2(overlays / "shop-web-1.qcow2", str(based_on.qcow2))
    removed = prune(cache, new, overlay_dirs=[overlays, tmp_path / "absent"])
    assert sorted(removed) == sorted(i.name for i in old)
    assert KEEP == 3 and all(i.exists() for i in (new, recent, second, based_on, other_type))
    assert not any(f.exists() for i in old for f in map(i.file, SUFFIXES))
    assert (cache / "node-web-notakey.qcow2").exists()
    touch(based_on)  # used now: among the last used, with no overlay needed
    (overlays / "shop-web-1.qcow2").unlink()
    assert prune(cache, new) == [second.name]
