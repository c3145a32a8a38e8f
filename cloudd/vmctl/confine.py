"""What a domain may reach on its host: files inside the host's folders, and nothing else.

A domain XML names host resources: disk files, shared folders, console log files, kernels,
the QEMU binary itself, host devices. libvirt (running as root) opens what the XML names and
hands it to the guest, so whoever writes the XML can read or overwrite any file on the host
and take its devices. A host defines only XML it rendered itself from the operator's
template (`cloudd.daemon.host.admission`); this module is the second wall, in case the
template itself asks for too much: `problem(xml, folders)` names the first thing the domain
may not have, in one sentence, or returns None.

The rules, as tables below:
- devices: only the kinds in DEVICES (no `<hostdev>`, `<smartcard>`, `<redirdev>`, `<tpm>`,
  `<shmem>`...); disks only of type file; interfaces only of the types in INTERFACES and
  without `<script>`; consoles and other character devices only of the types in CHARDEVS; a
  watchdog only with an action of WATCHDOG_ACTIONS (not `dump`, which writes the guest's
  memory to a file of the host, outside its folders);
- host paths: a disk, a shared folder, a kernel, an initrd, anything else named by a `file`,
  `dir`, `path` or `socket` attribute inside the host's image folders; a console or its log
  inside the log folders; the emulator, virtiofsd, firmware and random source from the fixed
  lists below. A path with `..` in it is refused whatever it would resolve to;
- no element of another XML namespace outside `<metadata>` (`<qemu:commandline>` passes
  arguments to QEMU unchecked), and no `<seclabel type='none'>` (QEMU unconfined);
- the host's `/` may be shared (the project's test guest runs the host's own Python over
  virtiofs) only when the host's settings say `libvirt.lab_allow_host_root_share`, a lab-only
  setting, off by default.

Pure: it parses the text and compares paths as strings; it never looks at the file system.
"""

from __future__ import annotations

import enum
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Device kinds a cloudd domain may have.
DEVICES = frozenset({
    "emulator", "disk", "filesystem", "interface", "serial", "console", "parallel", "channel",
    "input", "graphics", "video", "sound", "rng", "memballoon", "controller", "watchdog",
    "panic", "audio"})
#: What a watchdog may do when the guest stops feeding it: everything but `dump`.
WATCHDOG_ACTIONS = frozenset({"reset", "shutdown", "poweroff", "pause", "none", "inject-nmi"})
#: Interface types: the host's networks and bridges, macvtap, user-mode networking.
INTERFACES = frozenset({"network", "bridge", "direct", "user"})
#: Character device types (consoles, serial ports, channels): no host devices, pipes or
#: sockets, nothing that listens on the network.
CHARDEVS = frozenset({"pty", "file", "null", "vc"})
CHARDEV_TAGS = frozenset({"serial", "console", "parallel", "channel"})
#: QEMU binaries a domain may run (a distribution's, under their usual names).
EMULATOR_PREFIXES = ("/usr/bin/qemu-system-", "/usr/libexec/qemu-system-")
EMULATORS = frozenset({"/usr/bin/kvm", "/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"})
#: virtiofsd binaries (Debian's, and where other distributions put it).
VIRTIOFSD = frozenset({"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd",
                       "/usr/bin/virtiofsd"})
#: Folders of firmware images (read only, shipped by the distribution).
FIRMWARE_DIRS = ("/usr/share/OVMF", "/usr/share/ovmf", "/usr/share/qemu",
                 "/usr/share/seabios", "/usr/share/edk2")
#: libvirt's own folder of per-domain UEFI variable stores.
NVRAM_DIRS = ("/var/lib/libvirt/qemu/nvram",)
#: Host sources of randomness a virtio-rng may read.
RNG_SOURCES = frozenset({"/dev/urandom", "/dev/random", "/dev/hwrng"})
#: Attributes that name a host path, wherever they appear.
PATH_ATTRS = ("file", "dir", "path", "socket")
_QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


class Area(enum.Enum):
    """Where a host path of some element may be."""

    IMAGE = "the image folders"
    SHARE = "the image folders, or the host's / on a lab host"
    LOG = "the log folders"
    VIRTIOFSD = "the known virtiofsd binaries"
    EMULATOR = "the known QEMU binaries"
    FIRMWARE = "the firmware and image folders"
    NVRAM = "libvirt's nvram folder and the image folders"
    RNG = "the host's random sources"


#: Elements whose text is a host path, and where that path may be.
_TEXT_PATHS = {"kernel": Area.IMAGE, "initrd": Area.IMAGE, "dtb": Area.IMAGE,
               "table": Area.IMAGE, "loader": Area.FIRMWARE, "nvram": Area.NVRAM,
               "emulator": Area.EMULATOR, "backend": Area.RNG}


@dataclass(frozen=True)
class Folders:
    """Where the domains of this host may keep their files."""

    images: tuple[str, ...]
    """The host's image folders (`libvirt.image_dirs`): disks, shared folders, kernels."""
    logs: tuple[str, ...]
    """Where console logs may be written (libvirt's own log folder)."""
    host_root_share: bool = False
    """`libvirt.lab_allow_host_root_share`: the host's `/` may be a shared folder."""


def inside(path: str, roots: Iterable[str]) -> bool:
    """Whether absolute `path` (without `..`) is one of `roots` or below one of them."""
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        return False
    norm = posixpath.normpath(path)
    for root in roots:
        r = posixpath.normpath(root)
        if norm == r or norm.startswith(r.rstrip("/") + "/"):
            return True
    return False


def problem(xml: str, folders: Folders) -> str | None:
    """The first thing `xml` (a whole domain) may not have on this host, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return f"the domain XML does not parse: {e}"
    if root.tag != "domain":
        return f"the document is a <{root.tag}>, not a <domain>"
    return _walk(root, folders, parents=())


def _walk(elem: ET.Element, folders: Folders, *, parents: tuple[str, ...]) -> str | None:
    for child in elem:
        if not isinstance(child.tag, str):
            continue  # a comment or processing instruction
        if child.tag == "metadata" and parents == ():
            continue  # cloudd's own element and other tools' metadata: never read by QEMU
        why = _element(child, folders, parents=parents)
        if why is None:
            why = _walk(child, folders, parents=(*parents, child.tag))
        if why is not None:
            return why
    return None


def _element(elem: ET.Element, folders: Folders, *, parents: tuple[str, ...]) -> str | None:
    tag = elem.tag
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        prefix = "qemu:" if ns == _QEMU_NS else f"{{{ns}}}"
        return f"<{prefix}{local}> is not allowed (it reaches past libvirt's own checks)"
    owner = parents[-1] if parents else ""
    if owner == "devices" and tag not in DEVICES:
        return f"device <{tag}> is not allowed (it hands the guest a part of the host)"
    kind = elem.get("type", "")
    if owner == "devices":
        rule = _DEVICE_RULES.get(tag)
        why = rule(elem, kind) if rule is not None else None
        if why is not None:
            return why
    if tag == "script":
        return "<script> is not allowed (libvirt would run it on the host as root)"
    if tag == "seclabel" and kind == "none":
        return "<seclabel type='none'> is not allowed (QEMU would run unconfined)"
    area = _area(parents, tag)
    for attr in PATH_ATTRS:
        value = elem.get(attr)
        if value is not None and not (attr == "dir" and owner == "filesystem" and
                                      tag == "target"):
            why = _path(value, area, folders, where=f"<{tag} {attr}>")
            if why is not None:
                return why
    if tag == "nvram" and elem.get("template") is not None:
        why = _path(elem.get("template", ""), Area.FIRMWARE, folders, where="<nvram template>")
        if why is not None:
            return why
    text_area = _TEXT_PATHS.get(tag)
    if text_area is not None and (tag != "backend" or owner == "rng"):
        return _path((elem.text or "").strip(), text_area, folders, where=f"<{tag}>")
    return None


def _area(parents: tuple[str, ...], tag: str) -> Area:
    """Where a path attribute of `tag` (under `parents`) must be."""
    if any(p in CHARDEV_TAGS for p in parents) or tag in CHARDEV_TAGS:
        return Area.LOG
    if parents and parents[-1] == "filesystem" and tag == "source":
        return Area.SHARE
    if parents and parents[-1] == "filesystem" and tag == "binary":
        return Area.VIRTIOFSD
    return Area.IMAGE


def _emulator(value: str) -> bool:
    if value in EMULATORS:
        return True
    return (value.startswith(EMULATOR_PREFIXES) and inside(value, ("/usr",))
            and "/" not in value.rsplit("qemu-system-", 1)[-1])


_ALLOWED: dict[Area, Callable[[str, Folders], bool]] = {
    Area.IMAGE: lambda v, f: inside(v, f.images),
    Area.SHARE: lambda v, f: inside(v, f.images) or (f.host_root_share and v == "/"),
    Area.LOG: lambda v, f: inside(v, f.logs),
    Area.VIRTIOFSD: lambda v, f: v in VIRTIOFSD,
    Area.EMULATOR: lambda v, f: _emulator(v),
    Area.FIRMWARE: lambda v, f: inside(v, FIRMWARE_DIRS) or inside(v, f.images),
    Area.NVRAM: lambda v, f: inside(v, NVRAM_DIRS) or inside(v, f.images),
    Area.RNG: lambda v, f: v in RNG_SOURCES,
}

_WHERE: dict[Area, Callable[[Folders], str]] = {
    Area.IMAGE: lambda f: f"this host's image folders ({_list(f.images)})",
    Area.SHARE: lambda f: f"this host's image folders ({_list(f.images)})",
    Area.LOG: lambda f: f"this host's log folders ({_list(f.logs)})",
    Area.VIRTIOFSD: lambda f: f"the known virtiofsd binaries ({_list(sorted(VIRTIOFSD))})",
    Area.EMULATOR: lambda f: "the known QEMU binaries (/usr/bin/qemu-system-*, "
                             f"{_list(sorted(EMULATORS))})",
    Area.FIRMWARE: lambda f: f"the firmware and image folders ({_list(FIRMWARE_DIRS)}, "
                             f"{_list(f.images)})",
    Area.NVRAM: lambda f: f"libvirt's nvram folder and the image folders "
                          f"({_list(NVRAM_DIRS)}, {_list(f.images)})",
    Area.RNG: lambda f: f"the host's random sources ({_list(sorted(RNG_SOURCES))})",
}


def _path(value: str, area: Area, folders: Folders, *, where: str) -> str | None:
    if _ALLOWED[area](value, folders):
        return None
    if area is Area.SHARE and value == "/":
        return ("a shared folder of the host's / is allowed only with the lab-only setting "
                "libvirt.lab_allow_host_root_share")
    return f"{where} {value!r} is outside {_WHERE[area](folders)}"


def _list(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def _disk(elem: ET.Element, kind: str) -> str | None:
    if kind != "file":
        return (f"a disk of type {kind or '(none)'} is not allowed (only image files inside "
                "the image folders)")
    return None


def _filesystem(elem: ET.Element, kind: str) -> str | None:
    if kind not in ("", "mount"):
        return f"a shared folder of type {kind} is not allowed (only type mount)"
    return None


def _interface(elem: ET.Element, kind: str) -> str | None:
    if kind not in INTERFACES:
        return (f"an interface of type {kind or '(none)'} is not allowed "
                f"(only {_list(sorted(INTERFACES))})")
    return None


def _chardev(elem: ET.Element, kind: str) -> str | None:
    if kind not in CHARDEVS:
        return (f"a <{elem.tag}> of type {kind or '(none)'} is not allowed "
                f"(only {_list(sorted(CHARDEVS))})")
    return None


def _rng(elem: ET.Element, kind: str) -> str | None:
    backend = elem.find("backend")
    if backend is not None and backend.get("model") != "random":
        return (f"an <rng> backend of model {backend.get('model')!r} is not allowed "
                "(only random)")
    return None


def _watchdog(elem: ET.Element, kind: str) -> str | None:
    action = elem.get("action", "reset")
    if action not in WATCHDOG_ACTIONS:
        return (f"a <watchdog> action {action!r} is not allowed "
                f"(only {_list(sorted(WATCHDOG_ACTIONS))})")
    return None


_DEVICE_RULES = {"disk": _disk, "filesystem": _filesystem, "interface": _interface,
                 "rng": _rng, "watchdog": _watchdog, **{t: _chardev for t in CHARDEV_TAGS}}
