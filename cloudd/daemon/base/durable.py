"""The one durable write: every state and manifest file cloudd keeps goes through here.

A file written with `write_durable` is either its old content or its new content after a
crash or a power cut, never empty or half written: the bytes go to a temporary file in the
same folder (created exclusively, never following a symlink), are fsynced, renamed over the
target, and the folder is fsynced so that the rename itself survives. Files are private by
default (0600), and a folder created on the way is 0700.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably (OSError if the disk refuses)."""
    payload = data.encode() if isinstance(data, str) else data
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits off
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
