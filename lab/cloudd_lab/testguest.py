"""The project's own test guest: a kernel and an initramfs built from what the host has.

Real libvirt tests need domains that really boot, and cloudd's end-to-end tests need guests
that run the host's own `cloudd`. Instead of downloading cloud images, the guest is made of:

- the host's Debian cloud kernel (`/boot/vmlinuz-*-cloud-amd64`), booted directly;
- an initramfs (cpio newc, gzip) holding busybox-static, a few kernel modules and `/init`.

`build_minimal_guest` gives an initramfs whose /init only mounts proc/sys/dev and sleeps: a
domain that runs, for lifecycle tests. `build_test_guest` gives the real one (guest/init.sh):
it mounts the host's `/` over virtiofs as the lower layer of an overlay with a tmpfs upper,
configures the virtio NIC from the kernel command line and runs a command in that root (see
`kernel_cmdline`). Both are cached in `workdir` under a hash of their content, so rebuilding
is instant; the archive is written deterministically (fixed mtimes and owners) for that reason.
QEMU runs unprivileged: `workdir` and its parents must be searchable by others (so not under a
0700 pytest tmp_path). `domain_xml` fills templates/testguest.xml for one guest.

Its files (guest/*.sh, templates/testguest.xml) are the lab's package data, found through
`cloudd_lab.paths.resource`. Build a guest from the shell with
`python -m cloudd_lab.testguest build [--out DIR] [--minimal]`: it prints the kernel and initrd
paths for a domain template.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import os
import stat
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cloudd.errors import PermanentError
from cloudd.vmctl.template import RawXml, render
from cloudd_lab.paths import resource

#: The guest's /init scripts (package data).
_GUEST = resource("guest")
#: The domain template of the test guest (package data).
TEMPLATE = resource("templates", "testguest.xml")
#: Bumped when the archive layout changes in a way the content hash would not see.
_FORMAT = b"cloudd-testguest-1"
#: The modules the real guest loads, in load order (dependencies first, as in modules.dep).
GUEST_MODULES: tuple[str, ...] = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/fs/fuse/fuse.ko",
    "kernel/fs/fuse/virtiofs.ko",
    "kernel/fs/overlayfs/overlay.ko",
)
#: The virtiofs tag the template gives the host's `/` (`<target dir=.../>`).
HOSTROOT_TAG = "hostroot"


#: x86's COMMAND_LINE_SIZE is 2048 including the terminating NUL; longer lines are cut.
MAX_CMDLINE = 2047
#: The kernel command line keys guest/init.sh reads.
INIT_KEYS: tuple[str, ...] = (
    "cloudd.ip", "cloudd.gw", "cloudd.hostname", "cloudd.tmpfs", "cloudd.cmd64", "cloudd.fs")


class GuestBuildError(PermanentError):
    """The host lacks something the test guest is made of (kernel, busybox, a module)."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable test guest: direct kernel boot of `kernel` with `initrd`."""

    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class HostParts:
    """Where the guest's parts come from on this host."""

    kernel: Path
    modules: Path
    busybox: Path = Path("/bin/busybox")


def find_host_parts(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules"),
                    ) -> HostParts:
    """The newest cloud kernel in `boot` and its modules directory."""
    kernels = sorted(boot.glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        raise GuestBuildError(
            f"no cloud kernel in {boot} (vmlinuz-*-cloud-amd64): "
            "install linux-image-cloud-amd64")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    return HostParts(kernel=kernel, modules=modules_root / version)


# -- the archive ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _cpio_newc(entries: Iterable[_Entry]) -> bytes:
    """A cpio "newc" archive of `entries` (owner root, mtime 0), as the kernel unpacks it."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int, rdev: tuple[int, int]) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for ino, entry in enumerate(entries, start=1):
        put(entry.path, entry.mode, entry.data, ino, entry.rdev)
    put("TRAILER!!!", 0, b"", 0, (0, 0))
    return out.getvalue()


def _dirs(*paths: str) -> list[_Entry]:
    return [_Entry(p, stat.S_IFDIR | 0o755) for p in paths]


def _base_entries(busybox: Path, init: bytes) -> list[_Entry]:
    if not busybox.is_file():
        raise GuestBuildError(f"{busybox} is missing: install busybox-static")
    return [
        *_dirs("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib", "mnt"),
        # The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        _Entry("init", stat.S_IFREG | 0o755, init),
    ]


def _write_cached(workdir: Path, stem: str, entries: Sequence[_Entry], kernel: Path,
                  ) -> GuestImage:
    """Write kernel and initrd into `workdir` under names carrying their content hash."""
    digest = hashlib.sha256(_FORMAT)
    for e in entries:
        digest.update(f"{e.path}\0{e.mode}\0{e.rdev}\0{len(e.data)}\0".encode())
        digest.update(e.data)
    kernel_bytes = kernel.read_bytes()
    kernel_tag = hashlib.sha256(kernel_bytes).hexdigest()[:16]
    workdir.mkdir(parents=True, exist_ok=True)
    # QEMU may run as an unprivileged user: it must reach and read both files.
    os.chmod(workdir, 0o755)
    image = GuestImage(kernel=workdir / f"vmlinuz-{kernel_tag}",
                       initrd=workdir / f"{stem}-{digest.hexdigest()[:16]}.cpio.gz")
    if not image.kernel.exists():
        _atomic_write(image.kernel, kernel_bytes)
    if not image.initrd.exists():
        archive = gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)
        _atomic_write(image.initrd, archive)
    return image


def _atomic_write(path: Path, data: bytes) -> None:
    # Several test processes may build the same image at once: never expose a partial file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def build_minimal_guest(workdir: Path, *, parts: HostParts | None = None) -> GuestImage:
    """A guest whose /init mounts proc, sys and dev, then sleeps forever (a domain that runs)."""
    parts = parts or find_host_parts()
    init = (_GUEST / "minimal-init.sh").read_bytes()
    return _write_cached(workdir, "minimal", _base_entries(parts.busybox, init), parts.kernel)


def build_test_guest(workdir: Path, *, parts: HostParts | None = None) -> GuestImage:
    """The real test guest (guest/init.sh): host root over virtiofs, network, one command."""
    parts = parts or find_host_parts()
    entries = _base_entries(parts.busybox, (_GUEST / "init.sh").read_bytes())
    entries += _dirs("lib/modules", "lower", "upper", "newroot")
    order = []
    for rel in GUEST_MODULES:
        source = parts.modules / rel
        if not source.is_file():
            raise GuestBuildError(f"kernel module {source} is missing")
        name = Path(rel).name
        entries.append(_Entry(f"lib/modules/{name}", stat.S_IFREG | 0o644, source.read_bytes()))
        order.append(name)
    entries.append(_Entry("etc/modules", stat.S_IFREG | 0o644, "\n".join(order).encode() + b"\n"))
    return _write_cached(workdir, "testguest", entries, parts.kernel)


# -- the kernel command line ------------------------------------------------------------------

@dataclass(frozen=True)
class GuestBoot:
    """What the test guest's /init reads from the kernel command line.

    `address` is the NIC's address with its prefix ("10.231.0.10/24"); `command` runs with
    `/bin/sh -c` in the overlay root; `tmpfs` are extra directories of that root that get an
    empty tmpfs (the guest always gets a fresh /run, never the host's). `params` are
    more `key=value` words for the command to read from /proc/cmdline (e.g. a node's identity,
    `cloudd.node=...`); they may not reuse the keys /init reads.
    """

    address: str
    command: str
    gateway: str | None = None
    hostname: str = "testguest"
    tmpfs: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()


def kernel_cmdline(boot: GuestBoot, *, console: str = "ttyS0") -> str:
    """The kernel command line for `boot`.

    Keys are `cloudd.ip`, `cloudd.gw`, `cloudd.hostname`, `cloudd.tmpfs` (comma-separated) and
    `cloudd.cmd64`, the command in base64 (the kernel command line has no quoting that busybox
    could read back safely). The kernel keeps dotted keys away from init's environment; /init
    reads /proc/cmdline, and so can the agent it starts.
    """
    checked = [(boot.address, "address"), (boot.gateway or "", "gateway"),
               (boot.hostname, "hostname"), (",".join(boot.tmpfs), "tmpfs")]
    for key, value in boot.params:
        if not key or "=" in key or key in INIT_KEYS:
            raise GuestBuildError(f"guest parameter key {key!r} is empty, has '=' or is "
                                  f"one of /init's own ({', '.join(INIT_KEYS)})")
        checked += [(key, "parameter key"), (value, f"parameter {key}")]
    for value, what in checked:
        if any(c.isspace() or c in "\"'" for c in value):
            raise GuestBuildError(f"guest {what} {value!r} must not contain spaces or quotes")
    if "/" not in boot.address:
        raise GuestBuildError(f"guest address {boot.address!r} needs a prefix length (/24)")
    for path in boot.tmpfs:
        if not path.startswith("/") or "," in path:
            raise GuestBuildError(f"guest tmpfs {path!r} must be an absolute path without commas")
    words = [f"console={console}", "loglevel=4", "panic=-1", f"cloudd.ip={boot.address}"]
    if boot.gateway:
        words.append(f"cloudd.gw={boot.gateway}")
    words.append(f"cloudd.hostname={boot.hostname}")
    if boot.tmpfs:
        words.append("cloudd.tmpfs=" + ",".join(boot.tmpfs))
    words += [f"{key}={value}" for key, value in boot.params]
    words.append("cloudd.cmd64=" + base64.b64encode(boot.command.encode()).decode())
    line = " ".join(words)
    if len(line) > MAX_CMDLINE:
        raise GuestBuildError(f"guest kernel command line is {len(line)} bytes, more than the "
                              f"kernel's {MAX_CMDLINE} (shorten the command or parameters)")
    return line


# -- the domain -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestGuestDomain:
    """One test guest domain: `boot` on `image`, its NIC on `bridge`, its console in a file.

    `metadata` is a whole `<metadata>` element (cloudd.vmctl.metadata.metadata_xml) or "".
    """

    __test__ = False  # not a pytest test class, despite the name

    name: str
    image: GuestImage
    boot: GuestBoot
    bridge: str
    mac: str
    serial_log: Path
    memory_mib: int = 512
    vcpus: int = 1
    metadata: str = ""


def domain_xml(spec: TestGuestDomain, *, template: Path = TEMPLATE) -> str:
    """The libvirt domain XML of `spec`, from `template` (testguest.xml's placeholders)."""
    values: dict[str, str | int | RawXml] = {
        "name": spec.name,
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cloudd-testguest:{spec.name}")),
        "memory_kib": spec.memory_mib * 1024,
        "vcpus": spec.vcpus,
        "kernel": str(spec.image.kernel),
        "initrd": str(spec.image.initrd),
        "cmdline": kernel_cmdline(spec.boot),
        "mac": spec.mac,
        "bridge": spec.bridge,
        "serial_log": str(spec.serial_log),
        "metadata": RawXml(spec.metadata),
    }
    return render(template.read_text(), values, source=str(template))


# -- python -m cloudd_lab.testguest build ------------------------------------------------------

#: Where `build` puts the files by default: with the other images cloudd's domains boot from.
DEFAULT_OUT = Path("/var/lib/cloudd/images/testguest")
PROG = "python -m cloudd_lab.testguest"


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Build the test guest (or the minimal one) and print its kernel and initrd paths."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = sub.add_parser(
        "build", help="the test guest: the host's cloud kernel and a busybox initramfs",
        description="Build the test guest (kernel + initramfs) and print their paths. It "
                    "boots the host's / over virtiofs and runs the command given on its "
                    "kernel command line; --minimal only boots and sleeps. The files are "
                    "cached by content hash in DIR, so running it again is instant.")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                       help=f"directory for the files (default {DEFAULT_OUT})")
    build.add_argument("--minimal", action="store_true",
                       help="the minimal guest: mounts proc, sys and dev, then sleeps")
    args = parser.parse_args(argv)
    target: Path = args.out
    if target.exists() and not target.is_dir():
        print(f"{PROG} build: --out {target} exists and is not a directory", file=err)
        return 2
    make = build_minimal_guest if args.minimal else build_test_guest
    try:
        image = make(target)
    except (GuestBuildError, OSError) as exc:
        print(f"{PROG} build: {exc}", file=err)
        return 1
    print(f"kernel: {image.kernel}", file=out)
    print(f"initrd: {image.initrd}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
