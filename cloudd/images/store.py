"""The image cache: built images named by their key, one build at a time, copies where asked.

The cache folder (default /var/cache/cloudd/images, shared by the command, the tests and the
demo so that a machine builds each image once) holds the images, each as four files named by
its key, the root trees they were made from (`trees/`), the agent's wheels (`wheels/`) and a
lock file. A build holds the lock from its first look at the cache to its last rename, so two
builds of the same image (a test and the demo, say) make it once: the second waits and then
finds it. A build works in a `.build-*` folder and renames its files into place with the qcow2
last, each fsynced and its rename made durable before the next, so an image whose qcow2 is
there is whole, even after a power cut; a killed build's folder is swept by the next.

Every change to the agent makes a new image (its wheels are in the key), so a build removes
the older images of its type (`prune`), keeping the `KEEP` last used (a cache hit marks an
image used: `touch`) and every one whose qcow2 is the backing file of a qcow2 in the cache or
in the given folders (a node's overlay names its base image by path). A copy made with
`publish` is the operator's and is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudd.durable import replace_durable
from cloudd.images.rootfs import KERNEL_ARGS

DEFAULT_CACHE = Path("/var/cache/cloudd/images")
#: Suffixes of an image's files; the qcow2 is renamed into place last.
SUFFIXES = ("packages", "vmlinuz", "initrd", "qcow2")
#: Images of one type a build leaves in the cache, itself included, the last used first
#: (others as well while an overlay uses them): a few labs or checkouts may share the cache.
KEEP = 3
#: A qcow2 file's first bytes, and the most its backing file name may hold (qcow2 spec).
_QCOW2_MAGIC = b"QFI\xfb"
_MAX_BACKING_NAME = 1023


@dataclass(frozen=True)
class Image:
    """A built image: `folder/NAME.qcow2` beside its kernel, initramfs and package list."""

    name: str
    folder: Path

    def file(self, suffix: str) -> Path:
        return self.folder / f"{self.name}.{suffix}"

    @property
    def qcow2(self) -> Path:
        return self.file("qcow2")

    @property
    def kernel(self) -> Path:
        return self.file("vmlinuz")

    @property
    def initrd(self) -> Path:
        return self.file("initrd")

    @property
    def packages(self) -> Path:
        """`dpkg-query -W` of the image: one `package<TAB>version` a line."""
        return self.file("packages")

    @property
    def kernel_args(self) -> str:
        """The kernel command line's root and console words for direct kernel boot."""
        return KERNEL_ARGS

    def exists(self) -> bool:
        return all(self.file(s).is_file() for s in SUFFIXES)


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[float]:
    """Hold the cache's lock; yields the seconds spent waiting for another build."""
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sweep(cache: Path) -> None:
    """Remove what killed builds left (call with the lock held: no build is running)."""
    for stale in cache.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def install(work: Path, image: Image) -> None:
    """Rename the finished files from `work` into the cache, the qcow2 last, each made
    durable before the next: after a power cut an image whose qcow2 is there is whole."""
    for suffix in SUFFIXES:
        replace_durable(work / f"{image.name}.{suffix}", image.file(suffix))


def publish(image: Image, out: Path) -> Image:
    """The image in `out` too: hard links when on the same filesystem, else copies. Files
    already there are kept (their name is their content's key)."""
    if out.resolve() == image.folder.resolve():
        return image
    out.mkdir(parents=True, exist_ok=True)
    there = Image(image.name, out)
    for suffix in SUFFIXES:
        src, dest = image.file(suffix), there.file(suffix)
        if dest.is_file():
            continue
        tmp = dest.with_name(dest.name + ".part")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        replace_durable(tmp, dest)
    return there


def touch(image: Image) -> None:
    """Mark `image` used now (its package list's mtime is the cache's record of use)."""
    os.utime(image.packages)


def backing_file(path: Path) -> Path | None:
    """The backing file a qcow2 file names, resolved from the file's folder (None: not a
    qcow2, or one without a backing file). Read from its header: no lock of a running VM's."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != _QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not 0 < size <= _MAX_BACKING_NAME:
                return None
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    return (path.parent / name).resolve()


def prune(cache: Path, keep: Image, *, overlay_dirs: Sequence[Path] = ()) -> list[str]:
    """Remove the images of `keep`'s type from `cache` but the `KEEP` last used (`keep` among
    them) and those a qcow2 in the cache or in `overlay_dirs` has as backing file; the names
    removed. Call it with the lock held."""
    kind = keep.name.rpartition("-")[0]
    shape = re.compile(rf"{re.escape(kind)}-[0-9a-f]{{16}}")
    names = {p.name.partition(".")[0] for suffix in SUFFIXES
             for p in cache.glob(f"{kind}-*.{suffix}")}
    older = sorted((Image(n, cache) for n in names if n != keep.name and shape.fullmatch(n)),
                   key=_last_used, reverse=True)[KEEP - 1:]
    if not older:
        return []
    used = {backing for folder in (cache, *overlay_dirs) if folder.is_dir()
            for path in folder.glob("*.qcow2") if (backing := backing_file(path)) is not None}
    removed = []
    for image in older:
        if image.qcow2.resolve() in used:
            continue
        for suffix in SUFFIXES:
            image.file(suffix).unlink(missing_ok=True)
        removed.append(image.name)
    return removed


def _last_used(image: Image) -> float:
    for path in (image.packages, image.qcow2):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0
