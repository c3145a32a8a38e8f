"""Images: qcow2 overlays with the real qemu-img; SFTP copy against a real sshd on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudd.errors import TemporaryError
from cloudd.vmctl.images import (
    ImageError,
    SftpSource,
    backing_file,
    ensure_image,
    ensure_overlay,
)


def make_base(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True,
                   timeout=30)
    return path


async def test_overlay_is_created_once_on_its_base(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.qcow2")
    overlay = tmp_path / "nodes" / "n1.qcow2"
    assert await ensure_overlay(base, overlay)
    assert await backing_file(overlay) == str(base)
    assert not await ensure_overlay(base, overlay)
    other = make_base(tmp_path / "other.qcow2")
    with pytest.raises(ImageError, match="exists on another base"):
        await ensure_overlay(other, overlay)


async def test_overlay_on_a_missing_base_changes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"base image .*nope.qcow2 does not exist"):
        await ensure_overlay(tmp_path / "nope.qcow2", tmp_path / "n1.qcow2")
    # a missing base creates nothing (not even the overlay's directory)
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 -- a test may block


async def test_missing_image_without_a_source(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no source host is known"):
        await ensure_image(tmp_path / "x.qcow2")


# -- a real sshd of our own on 127.0.0.1 -------------------------------------------------------

@dataclass
class Sshd:
    port: int
    host_pub: str
    client_key: Path
    known_hosts: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)


@dataclass(frozen=True)
class Running:
    """A real sshd on 127.0.0.1 for the tests, and what a client needs to reach it."""

    port: int
    host_pub: str
    client_key: Path
    known_hosts: Path


@contextlib.contextmanager
def run_sshd(d: Path, binary: str, *, chroot: Path | None = None) -> Iterator[Running]:
    """sshd with its own host key, one authorized client key, SFTP (in `chroot` if given),
    until the block ends."""
    keygen(d / "host_key")
    keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
{f"ChrootDirectory {chroot}" if chroot else ""}
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("sshd did not start listening within 30 s")
                time.sleep(0.05)
        kind, key = (d / "host_key.pub").read_text().split()[:2]
        known = d / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
        yield Running(port=port, host_pub=f"{kind} {key}", client_key=d / "client_key",
                      known_hosts=known)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def sshd(tmp_path: Path, have) -> Iterator[Sshd]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("needs root: sshd runs with its privilege separation directory")
    d = tmp_path / "sshd"
    d.mkdir()
    with run_sshd(d, have("sshd")) as running:
        yield Sshd(port=running.port, host_pub=running.host_pub,
                   client_key=running.client_key, known_hosts=running.known_hosts)


def source_for(sshd: Sshd, remote: Path, known_hosts: Path | None = None) -> SftpSource:
    return SftpSource(host="127.0.0.1", port=sshd.port, username="root",
                      client_keys=(sshd.client_key,),
                      known_hosts=known_hosts or sshd.known_hosts, remote_path=str(remote))


async def test_missing_image_is_copied_over_sftp(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    remote = make_base(tmp_path / "remote" / "base.qcow2")
    local = tmp_path / "local" / "base.qcow2"
    assert await ensure_image(local, source=source_for(sshd, remote))
    assert local.read_bytes() == remote.read_bytes()
    assert sorted(p.name for p in local.parent.iterdir()) == ["base.qcow2"]
    assert not await ensure_image(local, source=source_for(sshd, remote))
    # and the copy is usable as a base
    assert await ensure_overlay(local, tmp_path / "local" / "n1.qcow2")


async def test_unknown_host_key_refuses_the_copy(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    remote = make_base(tmp_path / "remote" / "base.qcow2")
    keygen(tmp_path / "impostor")
    impostor = (tmp_path / "impostor.pub").read_text().split()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    local = tmp_path / "local" / "base.qcow2"
    with pytest.raises(ImageError, match=f"host key of 127.0.0.1:{sshd.port} is not in"):
        await ensure_image(local, source=source_for(sshd, remote, wrong))
    assert not local.exists()
    assert list(local.parent.iterdir()) == []


async def test_missing_remote_image(sshd: Sshd, tmp_path: Path) -> None:
    local = tmp_path / "local" / "base.qcow2"
    with pytest.raises(ImageError, match="has no image"):
        await ensure_image(local, source=source_for(sshd, tmp_path / "nope.qcow2"))
    assert not local.exists()


async def test_unreachable_source_is_temporary(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    key = tmp_path / "k"
    keygen(key)
    src = SftpSource(host="127.0.0.1", port=free_port(), username="root", client_keys=(key,),
                     known_hosts=known, remote_path="/x")
    with pytest.raises(TemporaryError, match="failed"):
        await ensure_image(tmp_path / "l.qcow2", source=src)
