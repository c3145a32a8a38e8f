"""One SSH connection to the target host, with its key checked against known_hosts only.

Bootstrap trusts a host only through the operator's known_hosts file (no `~/.ssh/config`, no
trust on first use): an unknown or changed host key is refused before anything is sent, with
a sentence saying which. Over the connection, `Remote` runs commands (each with a timeout and
a one-line error naming what failed) and reads and writes files over SFTP, each write atomic,
durable (fsynced, and its folder synced after the rename) and private until it has its mode.
This is the one module of bootstrap that speaks asyncssh: an SSH failure leaves it as a
`BootstrapError`.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import asyncssh

from cloudd.commands.bootstrap.target import BootstrapError, Target

#: Seconds any one command on the target may take (apt and pip included).
COMMAND_TIMEOUT = 900.0
#: The end of the temporary names `put` writes beside a file.
_TMP = ".cloudd-tmp"


async def _fsync(f: asyncssh.SFTPClientFile) -> bool:
    """fsync an open remote file; False when the server does not offer it."""
    try:
        await f.fsync()
    except asyncssh.SFTPOpUnsupported:
        return False
    return True


class Remote:
    """One SSH connection to the target: commands, and files read and written over SFTP."""

    def __init__(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient, *,
                 host: str) -> None:
        self.conn, self.sftp, self.host = conn, sftp, host

    async def run(self, command: str, *, what: str, check: bool = True) -> str:
        try:
            done = await self.conn.run(command, check=False, timeout=COMMAND_TIMEOUT)
        except asyncssh.TimeoutError:
            raise BootstrapError(f"{what} on {self.host}: `{command}` did not finish in "
                                 f"{COMMAND_TIMEOUT:g} s") from None
        out = done.stdout if isinstance(done.stdout, str) else ""
        if check and done.exit_status != 0:
            err = done.stderr if isinstance(done.stderr, str) else ""
            tail = (err.strip() or out.strip() or "(no output)").splitlines()[-1]
            raise BootstrapError(f"{what} on {self.host}: `{command}` failed "
                                 f"(exit {done.exit_status}): {tail}")
        return out if done.exit_status == 0 or not check else ""

    async def ok(self, command: str) -> bool:
        try:
            done = await self.conn.run(command, check=False, timeout=COMMAND_TIMEOUT)
        except asyncssh.TimeoutError:
            raise BootstrapError(f"on {self.host}: `{command}` did not finish in "
                                 f"{COMMAND_TIMEOUT:g} s") from None
        return done.exit_status == 0

    async def read(self, path: str) -> bytes | None:
        try:
            async with self.sftp.open(path, "rb") as f:
                data: bytes = await f.read()
                return data
        except asyncssh.SFTPNoSuchFile:
            return None

    async def put(self, path: str, data: bytes, *, mode: int) -> bool:
        """Write `path` with `mode`, unless it already has both; True if written.

        Atomic and durable, as `cloudd.durable.write_durable` is on this machine: the bytes go
        to a fresh temporary name beside `path`, created exclusively and private (0600) until
        they are on the target's disk (SFTP fsync), then it gets `mode`, is renamed over `path`,
        and the folder is synced so that the rename survives a power cut: the target has the
        old file or the new one, never an empty one.
        """
        if await self.read(path) == data:
            attrs = await self.sftp.stat(path)
            if attrs.permissions is not None and attrs.permissions & 0o7777 == mode:
                return False
        folder, name = str(PurePosixPath(path).parent), PurePosixPath(path).name
        await self._sweep(folder, name)
        tmp = f"{folder}/.{name}.{secrets.token_hex(4)}{_TMP}"
        try:
            async with self.sftp.open(tmp, "xb", asyncssh.SFTPAttrs(permissions=0o600)) as f:
                await f.write(data)
                synced = await _fsync(f)
            if not synced:  # a server without the fsync extension: sync the file by name
                await self.run(f"sync -- {shlex.quote(tmp)}", what=f"writing {path}")
            await self.sftp.chmod(tmp, mode)
            await self.sftp.posix_rename(tmp, path)
        except BaseException:
            with contextlib.suppress(asyncssh.Error, OSError):
                await self.sftp.remove(tmp)
            raise
        await self.run(f"sync -- {shlex.quote(folder)}", what=f"writing {path}")
        return True

    async def _sweep(self, folder: str, name: str) -> None:
        """Remove what a broken earlier run left aside of `name` (each with its own mode)."""
        try:
            entries = await self.sftp.listdir(folder)
        except asyncssh.SFTPNoSuchFile:
            return
        for entry in entries:
            if entry.startswith(f".{name}.") and entry.endswith(_TMP):
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await self.sftp.remove(f"{folder}/{entry}")

    async def remove(self, path: str) -> None:
        await self.sftp.remove(path)


async def connect(target: Target) -> asyncssh.SSHClientConnection:
    """Open SSH with the host key checked against the operator's known_hosts only."""
    where = f"{target.address}:{target.port}"
    try:
        return await asyncssh.connect(
            target.address, port=target.port, username=target.user,
            known_hosts=str(target.known_hosts),
            client_keys=[str(target.identity)] if target.identity else (),
            config=None, connect_timeout=30)
    except asyncssh.HostKeyNotVerifiable:
        known = asyncssh.read_known_hosts(str(target.known_hosts))
        if known.match(target.address, target.address, target.port)[0]:
            raise BootstrapError(
                f"host key of {where} does not match the one in {target.known_hosts}: it "
                "changed, or this is not the host you meant; refusing to connect") from None
        raise BootstrapError(
            f"host key of {where} is unknown: {target.known_hosts} has no entry for it; "
            "verify the host's key and add it there first; refusing to connect") from None
    except asyncssh.PermissionDenied:
        raise BootstrapError(f"ssh to {where} as {target.user}: authentication refused "
                             f"(key {target.identity or 'default'})") from None
    except (OSError, asyncssh.Error) as exc:
        text = getattr(exc, "strerror", None) or str(exc)
        raise BootstrapError(f"cannot connect to {where}: {text}") from None


@contextlib.asynccontextmanager
async def open_remote(target: Target) -> AsyncIterator[Remote]:
    """`connect`, then SFTP over the same connection, closed on the way out. An SSH failure
    inside (connection lost, SFTP refused a path...) becomes a `BootstrapError` naming the
    host."""
    async with await connect(target) as conn:
        try:
            async with conn.start_sftp_client() as sftp:
                yield Remote(conn, sftp, host=target.name)
        except asyncssh.Error as exc:
            raise BootstrapError(f"on {target.name}: {exc}") from None
