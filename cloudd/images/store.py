"""The image cache: built images named by their key, one build at a time, copies where asked.

The cache folder (default /var/cache/cloudd/images, shared by the command, the tests and the
demo so that a machine builds each image once) holds the images, each as four files named by
its key, the root trees they were made from (`trees/`), the agent's wheels (`wheels/`) and a
lock file. A build holds the lock from its first look at the cache to its last rename, so two
builds of the same image (a test and the demo, say) make it once: the second waits and then
finds it. A build works in a `.build-*` folder and renames its files into place with the qcow2
last, so an image whose qcow2 is there is whole; a killed build's folder is swept by the next.

Older images are kept: a node's overlay names its base image by path, and a running VM may
still use one (remove them by hand when no VM does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudd.images.rootfs import KERNEL_ARGS

DEFAULT_CACHE = Path("/var/cache/cloudd/images")
#: Suffixes of an image's files; the qcow2 is renamed into place last.
SUFFIXES = ("packages", "vmlinuz", "initrd", "qcow2")


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
    """Rename the finished files from `work` into the cache, the qcow2 last."""
    for suffix in SUFFIXES:
        os.replace(work / f"{image.name}.{suffix}", image.file(suffix))


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
        os.replace(tmp, dest)
    return there
