"""Bootstrap's SSH connection against an in-process SSH server on 127.0.0.1 (no root needed).

The host key is checked against known_hosts only; over the connection, commands report their
failures in one line and files are written atomically with their mode. The whole bootstrap
runs against a real OpenSSH sshd in tests/real/commands/test_bootstrap_sshd.py (marker
`netns`).
"""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from cloudd import children
from cloudd.commands.bootstrap.remote import connect, open_remote
from cloudd.commands.bootstrap.target import BootstrapError, Target


class _OpenDoor(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this test is about the host key and the session


#: Every command the server ran, in order (one list per test: the fixture clears it).
COMMANDS: list[str] = []


async def _shell(process: asyncssh.SSHServerProcess[str]) -> None:
    """Each command runs in a local shell: stdout, stderr and exit status go back."""
    COMMANDS.append(process.command or "")
    proc = await asyncio.create_subprocess_shell(
        process.command or "true", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    async with children.ended(proc):  # the session closed under it: the command goes too
        out, err = await proc.communicate()
    process.stdout.write(out.decode())
    process.stderr.write(err.decode())
    process.exit(proc.returncode or 0)


@dataclass(frozen=True)
class Server:
    port: int
    root: Path
    """What SFTP sees as `/`."""
    known_hosts: Path

    def target(self, known_hosts: Path | None = None) -> Target:
        return Target(name="pm1", address="127.0.0.1", port=self.port,
                      known_hosts=known_hosts or self.known_hosts)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    COMMANDS.clear()
    key = asyncssh.generate_private_key("ssh-ed25519")
    root = tmp_path / "root"
    root.mkdir()
    acceptor = await asyncssh.create_server(
        _OpenDoor, "127.0.0.1", 0, server_host_keys=[key], process_factory=_shell,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root)))
    port = acceptor.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode()}")
    yield Server(port=port, root=root, known_hosts=known)
    acceptor.close()
    await acceptor.wait_closed()


async def test_an_unknown_or_changed_host_key_is_refused(server: Server,
                                                         tmp_path: Path) -> None:
    unknown = tmp_path / "unknown"
    unknown.write_text("")
    with pytest.raises(BootstrapError, match=r"host key of 127\.0\.0\.1:\d+ is unknown"):
        await connect(server.target(unknown))
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    changed = tmp_path / "changed"
    changed.write_text(f"[127.0.0.1]:{server.port} {other}")
    with pytest.raises(BootstrapError, match=r"does not match the one in .*refusing"):
        await connect(server.target(changed))


async def test_nothing_listening_is_one_sentence(server: Server, tmp_path: Path) -> None:
    closed = Target(name="pm1", address="127.0.0.1", port=1, known_hosts=server.known_hosts)
    with pytest.raises(BootstrapError, match=r"cannot connect to 127\.0\.0\.1:1: "):
        await connect(closed)


async def test_commands_answer_and_fail_in_one_line(server: Server) -> None:
    async with open_remote(server.target()) as remote:
        assert await remote.run("echo hello", what="greeting") == "hello\n"
        assert await remote.ok("true") and not await remote.ok("false")
        with pytest.raises(BootstrapError) as err:
            await remote.run("echo first >&2; echo why >&2; exit 3", what="testing")
        assert str(err.value) == ("testing on pm1: `echo first >&2; echo why >&2; exit 3` "
                                  "failed (exit 3): why")
        assert await remote.run("exit 3", what="x", check=False) == ""


async def test_files_are_written_with_their_mode_and_only_when_they_differ(
        server: Server) -> None:
    async with open_remote(server.target()) as remote:
        assert await remote.read("/key") is None
        assert await remote.put("/key", b"secret", mode=0o600)
        path = server.root / "key"
        assert path.read_bytes() == b"secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not await remote.put("/key", b"secret", mode=0o600)
        assert await remote.put("/key", b"secret", mode=0o644)  # same bytes, another mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert await remote.read("/key") == b"secret"
        assert [p.name for p in server.root.iterdir()] == ["key"]  # no temporary left
        await remote.remove("/key")
        assert not path.exists()


async def test_a_write_is_synced_to_disk_and_its_rename_too(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is fsynced over SFTP (the server offers the extension), then the
    folder is synced on the target after the rename (SFTP cannot fsync a folder)."""
    (server.root / "etc").mkdir()
    fsynced: list[str] = []
    real = asyncssh.SFTPServer.fsync

    def fsync(self: asyncssh.SFTPServer, file_obj: object) -> None:
        fsynced.append(Path(f"/proc/self/fd/{file_obj.fileno()}").readlink().name)  # type: ignore[attr-defined]
        real(self, file_obj)

    monkeypatch.setattr(asyncssh.SFTPServer, "fsync", fsync)
    async with open_remote(server.target()) as remote:
        COMMANDS.clear()
        assert await remote.put("/etc/agent.yaml", b"name: pm1\n", mode=0o600)
    assert [re.sub(r"\.[0-9a-f]{8}\.", ".X.", name) for name in fsynced] == [
        ".agent.yaml.X.cloudd-tmp"]
    assert COMMANDS == ["sync -- /etc"]
    assert (server.root / "etc" / "agent.yaml").read_bytes() == b"name: pm1\n"


async def test_a_write_uses_a_fresh_name_and_sweeps_what_a_broken_run_left(
        server: Server, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    # The name an earlier bootstrap always used, now a link; and a leftover of a broken run.
    (server.root / ".key.cloudd-tmp").symlink_to(victim)
    (server.root / ".key.0a1b2c3d.cloudd-tmp").write_bytes(b"half a k")
    (server.root / ".other.cloudd-tmp").write_bytes(b"not ours to sweep")
    async with open_remote(server.target()) as remote:
        assert await remote.put("/key", b"secret", mode=0o600)
    assert victim.read_text() == "untouched\n"
    assert sorted(p.name for p in server.root.iterdir()) == [".other.cloudd-tmp", "key"]


async def test_an_ssh_failure_inside_becomes_a_bootstrap_error(server: Server) -> None:
    with pytest.raises(BootstrapError, match=r"^on pm1: "):
        async with open_remote(server.target()) as remote:
            await remote.remove("/no/such/file")
