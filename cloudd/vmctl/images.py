"""Node disk images on a host: the base image present, a per-node copy-on-write overlay.

A node's base image (the manifest's `image`) must exist on the host that runs it. When it is
missing and another pool host has it, it is copied over SFTP (asyncssh) with the peer's host
key checked against a known_hosts file the operator provides: an unknown or changed key
refuses the copy. The copy goes to a temporary name and is renamed only when complete, so a
broken transfer never leaves a half image that a later check would take for a good one.
`CopySettings` (the agent settings' `images` group) says which user, key, known_hosts file
and port the copying host uses, and how long one copy may take.

Each node then runs on its own overlay, `qemu-img create -f qcow2 -F qcow2 -b BASE OVERLAY`,
so that the base is shared and never written, and a respawn can start from a fresh overlay.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cloudd import children
from cloudd.config.agent import Images
from cloudd.durable import replace_durable
from cloudd.errors import PermanentError, TemporaryError


class ImageError(PermanentError):
    """An image is missing with nowhere to copy it from, or an overlay is not what we expect."""


@dataclass(frozen=True)
class SftpSource:
    """Where to fetch a missing image from: another pool host, over SFTP."""

    host: str
    port: int
    username: str
    #: private key files for our side
    client_keys: tuple[Path, ...]
    #: the operator's known_hosts file: the peer's host key must be in it
    known_hosts: Path
    #: the image's path on that host (the same path as here, unless stated otherwise)
    remote_path: str = ""


@dataclass(frozen=True)
class CopySettings:
    """How this host copies images from source hosts (the agent settings' `images` group)."""

    username: str = "root"
    key: Path = Path("/etc/cloudd/ssh/id_ed25519")
    known_hosts: Path = Path("/etc/cloudd/ssh/known_hosts")
    port: int = 22
    #: seconds one copy may take
    limit: float = 1800.0

    @classmethod
    def of(cls, images: Images) -> CopySettings:
        return cls(username=images.ssh_user, key=images.ssh_key,
                   known_hosts=images.known_hosts, port=images.ssh_port,
                   limit=images.copy_limit)

    def source(self, address: str, remote_path: str = "") -> SftpSource:
        return SftpSource(host=address, port=self.port, username=self.username,
                          client_keys=(self.key,), known_hosts=self.known_hosts,
                          remote_path=remote_path)


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    async with children.ended(proc):  # cancelled: its session is killed
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def backing_file(image: Path, *, qemu_img: str = "qemu-img") -> str | None:
    """The backing file an image refers to, or None for a standalone image."""
    rc, out, err = await _run(qemu_img, "info", "--output=json", "-U", str(image))
    if rc != 0:
        raise ImageError(f"qemu-img info {image}: {err.strip()[:300]}")
    info = json.loads(out)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    return str(backing) if backing else None


def _overlay_plan(base: Path, overlay: Path) -> tuple[Path, bool]:
    """Blocking checks (run off the loop): the resolved base, and whether the overlay exists."""
    if not base.is_file():
        raise ImageError(f"base image {base} does not exist on this host")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    return base.resolve(), overlay.exists()


async def ensure_overlay(base: Path, overlay: Path, *, qemu_img: str = "qemu-img") -> bool:
    """Create `overlay` on top of `base`; False when it already exists on that base."""
    real_base, exists = await asyncio.to_thread(_overlay_plan, base, overlay)
    if exists:
        backing = await backing_file(overlay, qemu_img=qemu_img)
        real_backing = None if backing is None else await asyncio.to_thread(
            os.path.realpath, backing)
        if real_backing != str(real_base):
            raise ImageError(
                f"overlay {overlay} exists on another base ({backing}), not on {base}")
        return False
    tmp = overlay.with_name(f".{overlay.name}.{os.getpid()}.tmp")
    rc, _, err = await _run(qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2",
                            "-b", str(real_base), str(tmp))
    if rc != 0:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        raise ImageError(f"qemu-img create overlay {overlay} on {base}: {err.strip()[:300]}")
    await asyncio.to_thread(replace_durable, tmp, overlay)
    return True


def _finish_copy(tmp: Path, local: Path, expected: int | None) -> bool:
    """Blocking (run off the loop): rename a complete copy into place; False if incomplete."""
    if expected is not None and tmp.stat().st_size != expected:
        return False
    replace_durable(tmp, local)
    return True


async def fetch_image(local: Path, source: SftpSource, *, limit: float = 600.0) -> None:
    """Copy an image from `source` to `local` over SFTP, checking the peer's host key.

    `limit` bounds the whole copy, in seconds."""
    if not await asyncio.to_thread(source.known_hosts.is_file):
        raise ImageError(f"known_hosts file {source.known_hosts} does not exist")
    # Imported here, not with the module: a node's agent never copies images, and asyncssh
    # with its cryptography costs a booting guest seconds of its start under TCG.
    import asyncssh

    remote = source.remote_path or str(local)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
    await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)
    try:
        async with asyncio.timeout(limit):
            async with asyncssh.connect(
                    source.host, port=source.port, username=source.username,
                    client_keys=[str(k) for k in source.client_keys],
                    known_hosts=str(source.known_hosts), agent_path=None,
                    config=[]) as conn, conn.start_sftp_client() as sftp:
                size = (await sftp.stat(remote)).size
                await sftp.get(remote, str(tmp))
        if not await asyncio.to_thread(_finish_copy, tmp, local, size):
            raise TemporaryError(f"copy of {remote} from {source.host} is incomplete",
                                 delay=5.0)
    except asyncssh.HostKeyNotVerifiable as e:
        raise ImageError(f"host key of {source.host}:{source.port} is not in "
                         f"{source.known_hosts}: {e.reason}") from None
    except asyncssh.SFTPNoSuchFile:
        raise ImageError(f"{source.host} has no image {remote}") from None
    except (OSError, asyncssh.Error, TimeoutError) as e:
        raise TemporaryError(f"copying {remote} from {source.host}:{source.port} failed: "
                             f"{e}", delay=5.0) from None
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)


async def ensure_image(local: Path, *, source: SftpSource | None = None,
                       limit: float = 600.0) -> bool:
    """Make sure the base image exists here; True when it had to be copied (within `limit`
    seconds)."""
    if await asyncio.to_thread(local.is_file):
        return False
    if source is None:
        raise ImageError(f"image {local} is missing on this host and no source host is known")
    await fetch_image(local, source, limit=limit)
    return True
