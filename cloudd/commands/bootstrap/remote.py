"""One SSH connection to the target host, with its key checked against known_hosts only.

Bootstrap trusts a host only through the operator's known_hosts file (no `~/.ssh/config`, no
trust on first use): an unknown or changed host key is refused before anything is sent, with
a sentence saying which. Over the connection, `Remote` runs commands (each with a timeout and
a one-line error naming what failed) and reads and writes files over SFTP, each write atomic
and with its mode set before any content is there. This is the one module of bootstrap that
speaks asyncssh: an SSH failure leaves it as a `BootstrapError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import asyncssh

from cloudd.commands.bootstrap.target import BootstrapError, Target

#: Seconds any one command on the target may take (apt and pip included).
COMMAND_TIMEOUT = 900.0


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
        """Write `path` atomically with `mode`, unless it already has both; True if written."""
        if await self.read(path) == data:
            attrs = await self.sftp.stat(path)
            if attrs.permissions is not None and attrs.permissions & 0o7777 == mode:
                return False
        parent = str(PurePosixPath(path).parent)
        tmp = f"{parent}/.{PurePosixPath(path).name}.cloudd-tmp"
        # Mode before content: a key must never exist, even aside, readable by others (a
        # leftover of a broken run would keep its own mode, so it goes first).
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await self.sftp.remove(tmp)
        async with self.sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
            await f.write(data)
        await self.sftp.chmod(tmp, mode)
        await self.sftp.posix_rename(tmp, path)
        return True

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
