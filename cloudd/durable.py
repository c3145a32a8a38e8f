"""The one durable write: every state and manifest file cloudd keeps goes through here.

A file written with `write_durable` is either its old content or its new content after a
crash or a power cut, never empty or half written: the bytes go to a temporary file in the
same folder (created exclusively, never following a symlink), are fsynced, renamed over the
target, and the folder is fsynced so that the rename itself survives. Files are private by
default (0600), and a folder created on the way is 0700.

`TermFile` is the one way to keep a term across restarts, used both by the election (the
highest term this agent proposed or followed) and by the host agent (the highest term it has
obeyed, its fencing token). It lives here, below vmctl and the daemon, so that both can.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cloudd.errors import PermanentError


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes | str, *, mode: int = 0o600,
                  owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` atomically and durably (OSError if the disk refuses).

    `owner` (uid, gid) and `mode` are set before the first byte goes in, so a secret is never
    readable by others, even for an instant."""
    payload = data.encode() if isinstance(data, str) else data
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after the chown, which may clear set-id bits
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


def replace_durable(tmp: Path, path: Path) -> None:
    """Put a finished temporary file (one a tool wrote: qemu-img, genisoimage, an SFTP copy)
    in place of `path` the way `write_durable` does: fsync it, rename it, fsync the folder.
    `tmp` must be in `path`'s folder."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class TermFile:
    """A term kept in one file as a decimal integer and a newline, written durably.

    A missing file is term 0 (a new agent). A file that holds anything but a term is refused
    with PermanentError rather than read as 0: forgetting a term could let a deposed leader's
    orders through.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        try:
            term = int(text.strip())
        except ValueError:
            raise PermanentError(
                f"{self.path}: not a term number: {text.strip()[:40]!r}") from None
        if term < 0:
            raise PermanentError(f"{self.path}: negative term {term}")
        return term

    def save(self, term: int) -> None:
        """Persist `term` before anything that depends on it leaves this agent."""
        write_durable(self.path, f"{term}\n")
