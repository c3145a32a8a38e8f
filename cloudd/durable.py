"""The one durable write: every state and manifest file cloudd keeps goes through here.

A file written with `write_durable` is either its old content or its new content after a
crash or a power cut, never empty or half written: the bytes go to a temporary file in the
same folder (created exclusively, never following a symlink), are fsynced, renamed over the
target, and the folder is fsynced so that the rename itself survives. Files are private by
default (0600), and a folder created on the way is 0700. `write_at` is the same write into a
folder the caller holds open (the role files a node renders, reached without following links).

`TermFile` is the one way to keep a term across restarts, used both by the election (the
highest term this agent proposed or followed) and by the host agent (the highest term it has
obeyed, its fencing token). It lives here, below vmctl and the daemon, so that both can.

A state file that cannot be read at start (empty, garbage, a broken database) never stops the
agent: `set_aside` moves it beside itself as `NAME.corrupt-<UTC stamp>` (kept for the
operator, never read again), logs `state_file_set_aside`, and the caller starts from what it
can prove without it. `private_dir` keeps the state folders private on every start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cloudd import log
from cloudd.errors import PermanentError

_log = log.get("state")

#: How a term file that must be relearned begins (`TermFile`).
UNPROVEN = "unproven"
#: Files that live and die with a state file (SQLite's write-ahead log and its index).
COMPANIONS = ("-wal", "-shm", "-journal")


class CorruptStateFile(PermanentError):
    """A state file holds something its reader cannot use; `set_aside` it and go on."""


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
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_at(fd, path.name, data, mode=mode, owner=owner)
    finally:
        os.close(fd)


def write_at(folder: int, name: str, data: bytes | str, *, mode: int = 0o600,
             owner: tuple[int, int] | None = None) -> None:
    """`write_durable` of `name` in the folder open as descriptor `folder` (for callers that
    pinned a folder they reached without following links): whatever was at `name`, a link
    included, is replaced by the rename, never written through."""
    payload = data.encode() if isinstance(data, str) else data
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=folder)
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
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise
    os.fsync(folder)


def replace_durable(tmp: Path, path: Path) -> None:
    """Put a finished temporary file or folder (one a tool wrote: qemu-img, genisoimage, an
    SFTP copy, mariadb-install-db) in place of `path` the way `write_durable` does: fsync it,
    rename it, fsync the folder.
    `tmp` must be on `path`'s filesystem (in its folder, or a work folder beside it)."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def private_dir(folder: Path, *, mode: int = 0o700) -> None:
    """Make `folder` (and missing parents, with the same mode) and give it `mode`, also when it
    exists already with a looser one (made by an older agent or by hand)."""
    missing = []
    here = folder
    while not here.exists():
        missing.append(here)
        here = here.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):
            made.mkdir(mode=mode)
    if stat.S_IMODE(folder.stat().st_mode) != mode:
        os.chmod(folder, mode)


def set_aside(path: Path, *, reason: str, now: dt.datetime | None = None,
              replace_with: bytes | None = None) -> Path | None:
    """Move a state file that cannot be used out of the way, with its companions (SQLite's
    `-wal`, `-shm`, `-journal`), as `NAME.corrupt-<UTC stamp>`; logs `state_file_set_aside`
    (path, moved_to, reason) and returns where it went.

    With `replace_with`, `path` then holds those bytes instead (written durably), so that the
    loss itself survives a restart (a term file says it must be relearned): the old file is
    linked to its new name first (no room needed), and when the new content cannot be written
    it stays where it was, to be set aside at the next start that can. None when it could not
    be moved (a read-only or failing disk): logged too, and the caller starts without it."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    moved_to = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        if replace_with is None:
            os.replace(path, moved_to)
            for suffix in COMPANIONS:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path.with_name(path.name + suffix),
                               moved_to.with_name(moved_to.name + suffix))
            fsync_dir(path.parent)
        else:
            os.link(path, moved_to, follow_symlinks=False)
            try:
                write_durable(path, replace_with)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(moved_to)
                raise
    except FileNotFoundError:
        return None  # nothing there any more: nothing to keep
    except OSError as e:
        _log.error("state_file_set_aside", path=str(path), moved_to=None,
                   reason=f"{reason}; could not move it: {e.strerror or e}")
        return None
    _log.warning("state_file_set_aside", path=str(path), moved_to=str(moved_to), reason=reason)
    return moved_to


@dataclass(frozen=True)
class StoredTerm:
    """What a term file says: a term, and whether it is one (`proven`) or only the highest
    term heard since the file was lost and set aside, a floor to relearn the rest above."""

    term: int
    proven: bool = True


class TermFile:
    """A term kept in one file as a decimal integer and a newline, written durably.

    A missing file is term 0 (a new agent). A file that holds anything but a term (empty,
    garbage, negative) is refused with CorruptStateFile rather than read as 0: forgetting a
    term could let a deposed leader's orders through. `recover` is the agent's way to start:
    such a file is set aside and replaced by `unproven 0`, a term file that says its term was
    lost, so that a restart before the term is relearned (`cloudd.election.recovery`) does not
    take the missing file for a new agent's. Until then saves write `unproven N` (N: the
    highest term heard meanwhile); the first proven save writes a plain term again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> StoredTerm:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return StoredTerm(0)
        except (OSError, ValueError) as e:  # unreadable, or not text
            raise CorruptStateFile(f"{self.path}: unreadable: {e}") from None
        words = text.split()
        proven = not (len(words) == 2 and words[0] == UNPROVEN)
        try:
            if len(words) != (1 if proven else 2):
                raise ValueError(text)
            term = int(words[-1])
        except ValueError:
            raise CorruptStateFile(
                f"{self.path}: not a term number: {text.strip()[:40]!r}") from None
        if term < 0:
            raise CorruptStateFile(f"{self.path}: negative term {term}")
        return StoredTerm(term, proven)

    def load(self) -> int:
        """The term; CorruptStateFile also when it is still to be relearned."""
        stored = self.read()
        if not stored.proven:
            raise CorruptStateFile(f"{self.path}: a term lost and not relearned yet "
                                   f"(at least {stored.term})")
        return stored.term

    def recover(self) -> StoredTerm:
        """What the file says; a file that says nothing usable is set aside and the term is
        unproven (at least 0)."""
        try:
            return self.read()
        except CorruptStateFile as e:
            set_aside(self.path, reason=str(e), replace_with=f"{UNPROVEN} 0\n".encode())
            return StoredTerm(0, proven=False)

    def save(self, term: int, *, proven: bool = True) -> None:
        """Persist `term` before anything that depends on it leaves this agent."""
        write_durable(self.path, f"{term}\n" if proven else f"{UNPROVEN} {term}\n")
