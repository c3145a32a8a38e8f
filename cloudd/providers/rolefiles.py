"""Files root writes in a node's role folders, never through a link someone else planted.

Why it exists: a role's services run as their own users (mysql, www-data), and some folders of
a node belong to them (MariaDB's socket folder, its own error log's folder). What is in such a
folder is that user's to change at any moment, so a path that runs through it may have become
a symbolic link by the time root opens it; root following it appends to /etc/shadow or chowns
/etc to the user. That is CVE-2016-6664: mysqld_safe, as root, appended to an error log in the
mysql-owned log folder.

Theory of operation. A folder is *trusted* when only root (or the agent's own user) can change
its entries: it belongs to one of them and neither its group nor others may write it.
`folder(path)` walks the path from `/` one component at a time, each opened relative to the
folder before it. A link is followed only when root alone could have made it (the link is
root's, in a trusted folder); any other link where a folder is expected is refused with one
sentence, and in a folder that is not trusted nothing is followed at all (O_NOFOLLOW). The
descriptor it yields pins the folder: every later step (mkdir, chown, chmod, open, rename,
fsync) is done relative to it, so a rename of anything above changes nothing.

A rendered file is a regular file of its own: `look` reads what is there without following a
link, and `cloudd.durable.write_at` writes it relative to the folder's descriptor (a new
temporary file created O_EXCL|O_NOFOLLOW, owner and mode before the first byte, fsync, a rename
over whatever was there, so a link is replaced and never followed, then fsync of the folder).
A service's log (`open_log`) is opened only in a folder that nobody but the agent can write,
never through a link and never into a file with a second name.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudd.errors import PermanentError

_DIR = os.O_DIRECTORY | os.O_CLOEXEC
#: Errors of an O_NOFOLLOW open that met a link (ELOOP) or a non-folder (ENOTDIR).
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR)


class RoleFileRefused(PermanentError):
    """Root refused a path that someone other than root could have redirected."""


def _ours(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def trusted(st: os.stat_result) -> bool:
    """Whether only root or the agent can add, remove or rename entries of this folder."""
    return _ours(st) and not st.st_mode & 0o022


def _parts(path: Path) -> tuple[str, ...]:
    if not path.is_absolute() or ".." in path.parts:
        raise RoleFileRefused(f"{path}: a role's paths are absolute, without '..'")
    return path.parts[1:]


def _refusal(parent: int, name: str, where: Path, exc: OSError) -> Exception:
    """The one sentence for an open that did not reach a folder (or `exc` itself)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return exc
    if stat.S_ISLNK(st.st_mode):
        return RoleFileRefused(f"{where} is a symbolic link where a folder is expected, one "
                               "someone other than root could have made: refused, not followed")
    return RoleFileRefused(f"{where} is not a folder")


def _open_dir(parent: int, name: str, where: Path, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _NOT_FOLLOWED:
            raise _refusal(parent, name, where, exc) from None
        raise


def _child(parent: int, name: str, where: Path, *, flags: int, create: int | None) -> int:
    """Open folder `name` in `parent`; a missing one is made with mode `create` first, unless
    that is None. A link is followed only when root alone could have made it: the link is
    root's, in a folder only root can change. (One a user planted while the folder was still
    theirs stays theirs, whoever owns the folder now.)"""
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        if create is None:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create, dir_fd=parent)
        st = None
    # In a trusted folder nobody but root changes the entry between that look and the open.
    follow = trusted(os.fstat(parent)) and (st is None or not stat.S_ISLNK(st.st_mode)
                                            or _ours(st))
    return _open_dir(parent, name, where, flags if follow else flags | os.O_NOFOLLOW)


@contextlib.contextmanager
def folder(path: Path, *, create: bool = False) -> Iterator[int]:
    """A read-only descriptor of folder `path`, reached as the module docstring says; missing
    folders are made on the way (0755, the agent's) when `create` is set."""
    fd = os.open("/", os.O_PATH | _DIR)
    try:
        where = Path("/")
        for name in _parts(path):
            where = where / name
            step = _child(fd, name, where, flags=os.O_PATH | _DIR,
                          create=0o755 if create else None)
            os.close(fd)
            fd = step
        real = os.open(".", os.O_RDONLY | _DIR, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        yield real
    finally:
        os.close(real)


def ensure_folder(path: Path, *, mode: int, owner: tuple[int, int]) -> None:
    """Make folder `path` (and missing parents) and give it `owner` and `mode`, through its
    own descriptor: a link planted in its place is refused, never chowned through."""
    with folder(path.parent, create=True) as parent:
        fd = _child(parent, path.name, path, flags=os.O_RDONLY | _DIR, create=0o700)
        try:
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after the chown, which may clear set-id bits
        finally:
            os.close(fd)


class Kind(enum.Enum):
    MISSING = "missing"
    FILE = "file"
    LINK = "link"
    OTHER = "other"


@dataclass(frozen=True)
class Found:
    """What is at a rendered file's place, looked at without following a link."""

    kind: Kind
    mode: int = 0
    owner: tuple[int, int] = (-1, -1)
    data: bytes = b""

    def same(self, data: bytes, *, mode: int, owner: tuple[int, int]) -> bool:
        return (self.kind, self.mode, self.owner, self.data) == (Kind.FILE, mode, owner, data)


def look(parent: int, name: str) -> Found:
    """What `name` in folder `parent` is; a regular file's content is read (O_NONBLOCK: a
    FIFO planted there cannot hold the agent)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=parent)
    except FileNotFoundError:
        return Found(Kind.MISSING)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Found(Kind.LINK)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Found(Kind.OTHER)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return Found(Kind.FILE, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid), b"".join(chunks))


def open_log(path: Path) -> int:
    """A descriptor appending to service log `path` (made 0640 when missing), for a service's
    stdout and stderr. Refused unless its folder is writable by nobody but the agent, and
    refused when `path` is not a regular file (a link is never followed)."""
    with folder(path.parent) as parent:
        st = os.fstat(parent)
        if not trusted(st):
            raise RoleFileRefused(
                f"service log {path}: its folder is writable by others than the agent (owner "
                f"uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): role services log into "
                "a folder only root writes")
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC)
        try:
            fd = os.open(path.name, flags, 0o640, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RoleFileRefused(f"service log {path} is a symbolic link: refused, not "
                                      "followed") from None
            raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link"
        raise RoleFileRefused(f"service log {path} is {what}: refused")
    os.set_blocking(fd, True)
    return fd
