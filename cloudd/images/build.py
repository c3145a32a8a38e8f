"""Building a node image, stage by stage, from Debian's packages and the agent's wheels.

Theory of operation. `build_image` takes the cache lock, makes the agent's wheels (they are
part of the key), and looks the image up by its key: found, it returns at once. Otherwise:

  tree        mmdebstrap (root mode, minbase, no recommends) makes the root tree as a tarball
              from this machine's Debian mirror; cached by the tree's own key, so a new agent
              does not download Debian again
  unpack      the tarball into a scratch folder
  agent       a virtualenv at the agent's path made by the tree's own python3 (chroot), the
              wheels installed into it with pip --no-index
  torque      TORQUE as built from source on this machine, copied to /opt/torque, its
              libraries checked with ldd inside the tree (`cloudd.images.torque`); or a line
              saying the image has none
  configure   the unit, the serial getty, no machine id, no host keys, root locked (`rootfs`)
  packages    `dpkg-query -W` inside the tree, kept beside the image
  kernel      the tree's cloud kernel and initramfs, kept beside the image for direct boot
  filesystem  `mkfs.ext4 -d` of the tree into a raw file: no loop device, no mount
  qcow2       `qemu-img convert`
  prune       the older images of the kind, but the last used and those under an overlay

Each stage reports one line with its seconds. Nothing is mounted by this code (mmdebstrap's
root mode mounts /proc and /dev inside its own scratch tree while packages install, and
unmounts them); it runs as root because chroot, mknod and the tree's file owners need it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudd.durable import replace_durable
from cloudd.images import rootfs, store, torque
from cloudd.images.packages import SUITE, ImageBuildError, ImageType, package_set, units_off
from cloudd.images.recipe import (
    Recipe,
    TreeRecipe,
    fallback_mirrors,
    filesystem_bytes,
    mirrors_from_sources,
    text_digest,
    wheels_digest,
)
from cloudd.images.store import Image
from cloudd.images.torque import TorquePayload

#: The programs the build runs, each with the Debian package that has it.
TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils",
         "chroot": "coreutils", "tar": "tar"}
#: dpkg leaves these out of the tree: a node's disk holds programs, not their manuals.
_DPKG_EXCLUDES = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                  "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
                  "path-exclude=/usr/share/locale/*",
                  "path-include=/usr/share/locale/locale.alias")
_CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
_MB = 1 << 20


@dataclass(frozen=True)
class Stage:
    """One stage as done: its name, its seconds, and what it made or found."""

    name: str
    seconds: float
    detail: str


Report = Callable[[Stage], None]


@dataclass(frozen=True)
class AgentPayload:
    """The agent an image carries: its wheels (dependencies and cloudd), made on demand and
    returned with whether any was made now, and the systemd unit that runs it from `venv`."""

    wheels: Callable[[], tuple[list[Path], bool]]
    unit: str
    venv: str = "/opt/cloudd/venv"


#: An image built without TORQUE because nobody asked for it (the tests of the build).
NO_TORQUE = TorquePayload(None, absent="not asked for")


def recipe(kind: ImageType, *, wheels: list[Path], unit: str, venv: str = "/opt/cloudd/venv",
           apt_dir: Path = Path("/etc/apt"), torque_stamp: str = "",
           ) -> tuple[Recipe, tuple[rootfs.Change, ...]]:
    """What an image of `kind` is made from, and the changes the build makes to its tree."""
    mirrors = mirrors_from_sources(_apt_sources(apt_dir), suite=SUITE)
    tree = TreeRecipe(kind.name, SUITE, mirrors or fallback_mirrors(SUITE), package_set(kind))
    changes = rootfs.changes(unit=unit, units_off=units_off(kind), venv=venv)
    digest = wheels_digest((w.name, _wheel_content(w)) for w in wheels)
    return Recipe(tree, wheels=digest, changes=text_digest(repr(changes)),
                  torque=torque_stamp), changes


def build_image(kind: ImageType, *, agent: AgentPayload, cache: Path, report: Report,
                torque_build: TorquePayload = NO_TORQUE, apt_dir: Path = Path("/etc/apt"),
                overlay_dirs: Sequence[Path] = (),
                clock: Callable[[], float] = time.monotonic) -> Image:
    """The image of `kind` in `cache`, built now unless the cache has it; a build removes the
    older images of `kind` but the last used and those an overlay in `overlay_dirs` (or in the
    cache) is made on (`store.prune`)."""
    with store.locked(cache) as waited:
        if waited >= 1.0:
            report(Stage("lock", waited, "waited for another build to finish"))
        start = clock()
        wheels, built = agent.wheels()
        report(Stage("wheels", clock() - start, f"{len(wheels)} wheels, "
                     + ("built now" if built else "cached")))
        plan, changes = recipe(kind, wheels=wheels, unit=agent.unit, venv=agent.venv,
                               apt_dir=apt_dir, torque_stamp=torque_build.stamp)
        image = Image(plan.name, cache)
        if image.exists():
            store.touch(image)
            report(Stage("cached", 0.0, str(image.qcow2)))
            return image
        _check_tools()
        store.sweep(cache)
        tarball = _tree(plan.tree, cache=cache, report=report, clock=clock)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            _stages(changes, agent, wheels, torque_build, tarball=tarball, work=work,
                    image=image, report=report, clock=clock)
            store.install(work, image)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        start = clock()
        removed = store.prune(cache, image, overlay_dirs=overlay_dirs)
        if removed:
            report(Stage("prune", clock() - start, f"removed the older {', '.join(removed)} "
                         f"(the cache keeps the {store.KEEP} last used, and those in use)"))
        return image


def _stages(changes: tuple[rootfs.Change, ...], agent: AgentPayload, wheels: list[Path],
            torque_build: TorquePayload, *, tarball: Path, work: Path, image: Image,
            report: Report, clock: Callable[[], float]) -> None:
    root = work / "root"
    out = Image(image.name, work)

    def stage(name: str, act: Callable[[], str]) -> None:
        start = clock()
        detail = act()
        report(Stage(name, clock() - start, detail))

    stage("unpack", lambda: _unpack(tarball, root))
    stage("agent", lambda: _agent(root, agent, wheels))
    stage("torque", lambda: torque.install(
        root, torque_build, chroot=lambda argv: _chroot(root, argv, what="torque")))
    stage("configure", lambda: _configure(root, changes))
    stage("packages", lambda: _packages(root, out.packages))
    stage("kernel", lambda: _kernel(root, out))
    raw = work / f"{image.name}.raw"
    stage("filesystem", lambda: _filesystem(root, raw, key=image.name))
    stage("qcow2", lambda: _qcow2(raw, out.qcow2))


def _tree(tree: TreeRecipe, *, cache: Path, report: Report, clock: Callable[[], float]) -> Path:
    """The tree's tarball, made with mmdebstrap unless the cache has it."""
    trees = cache / "trees"
    tarball = trees / f"{tree.name}.tar"
    start = clock()
    if tarball.is_file():
        report(Stage("tree", clock() - start, f"cached {tarball.name}"))
        return tarball
    trees.mkdir(parents=True, exist_ok=True)
    part = tarball.with_name(tarball.name + ".part")
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
            "--aptopt=APT::Install-Recommends \"false\"",
            *(f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES),
            "--include=" + ",".join(tree.packages), tree.suite, str(part), *tree.mirrors]
    try:
        _run(argv, what="tree", timeout=3600)
        replace_durable(part, tarball)  # a tarball there after a power cut is whole
    finally:
        part.unlink(missing_ok=True)
    for old in trees.glob(f"tree-{tree.kind}-*.tar"):
        if old != tarball:
            old.unlink()
    report(Stage("tree", clock() - start, f"{len(tree.packages)} packages and their "
                 f"dependencies from {tree.mirrors[0].split()[1]}, "
                 f"{tarball.stat().st_size // _MB} MB"))
    return tarball


def _unpack(tarball: Path, root: Path) -> str:
    root.mkdir()
    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball),
          "-C", str(root)], what="unpack")
    return f"{_tree_bytes(root) // _MB} MB"


def _agent(root: Path, agent: AgentPayload, wheels: list[Path]) -> str:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (root / f"usr/bin/python{here}").is_file():
        raise ImageBuildError(f"the tree has no python{here}, the Python the wheels are built "
                         "with here: build from a matching Python")
    drop = root / "tmp/cloudd-wheels"
    drop.mkdir(parents=True)
    for wheel in wheels:
        shutil.copyfile(wheel, drop / wheel.name)
    pip = f"{agent.venv}/bin/pip"
    _chroot(root, ["/usr/bin/python3", "-m", "venv", agent.venv], what="agent")
    _chroot(root, [pip, "install", "-q", "--no-index", "--no-cache-dir",
                   *(f"/tmp/cloudd-wheels/{w.name}" for w in wheels)], what="agent")
    shutil.rmtree(drop)
    cloudd = next((w.name for w in wheels if w.name.startswith("cloudd-")), "cloudd")
    return f"{cloudd.split('-')[1]} and {len(wheels) - 1} dependencies in {agent.venv}"


def _configure(root: Path, changes: tuple[rootfs.Change, ...]) -> str:
    for change in changes:
        match change:
            case rootfs.Write(path=where, text=text, mode=mode):
                path = _inside(root, where)
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    path.unlink()  # never write through a link the packages left
                path.write_text(text)
                path.chmod(mode)
            case rootfs.Link(path=where, target=target):
                path = _inside(root, where)
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink() or path.exists():
                    path.unlink()
                path.symlink_to(target)
            case rootfs.Remove(pattern=pattern):
                _inside(root, pattern)
                for found in root.glob(pattern.lstrip("/")):
                    if found.is_dir() and not found.is_symlink():
                        shutil.rmtree(found)
                    else:
                        found.unlink()
    shadow = root / "etc/shadow"
    shadow.write_text(rootfs.lock_root(shadow.read_text()))
    off = [c.pattern.removeprefix(rootfs.WANTS) for c in changes
           if isinstance(c, rootfs.Remove) and c.pattern.startswith(rootfs.WANTS)]
    return (f"cloudd.service and a ttyS0 getty enabled, {', '.join(off)} off, root locked, "
            "no machine id, no host keys")


def _packages(root: Path, dest: Path) -> str:
    listing = _chroot(root, ["dpkg-query", "-W"], what="packages")
    lines = sorted(line for line in listing.splitlines() if line.strip())
    dest.write_text("\n".join(lines) + "\n")
    return f"{len(lines)} packages recorded"


def _kernel(root: Path, out: Image) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"kernel: the tree has {len(kernels)} kernels in /boot, not one")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageBuildError(f"kernel: the tree has no initramfs for {version}")
    for src, dest in ((kernels[0], out.kernel), (initrd, out.initrd)):
        shutil.copyfile(src, dest)
        dest.chmod(0o644)
    return f"linux {version}, initramfs {initrd.stat().st_size // _MB} MB"


def _filesystem(root: Path, raw: Path, *, key: str) -> str:
    used = _tree_bytes(root)
    size = filesystem_bytes(used)
    with open(raw, "wb") as f:
        f.truncate(size)
    fs_uuid = str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))
    _run(["mkfs.ext4", "-q", "-F", "-L", rootfs.ROOT_LABEL, "-U", fs_uuid, "-d", str(root),
          str(raw)], what="filesystem")
    return f"{used // _MB} MB in a {size / (1 << 30):.2f} GiB ext4 ({rootfs.ROOT_LABEL})"


def _qcow2(raw: Path, dest: Path) -> str:
    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)],
         what="qcow2")
    return f"{dest.stat().st_size // _MB} MB"


# -- helpers -----------------------------------------------------------------------------------

def _check_tools() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building an image needs root (mmdebstrap's root mode, chroot and "
                         "the owners of the tree's files)")
    for program, package in TOOLS.items():
        if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/sbin") \
                is None:
            raise ImageBuildError(f"{program} is not installed (apt-get install {package})")


def _apt_sources(apt_dir: Path) -> list[tuple[str, str]]:
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    return [(f.name, f.read_text()) for f in files if f.is_file()]


def _inside(root: Path, path: str) -> Path:
    """`path` (absolute inside the image) under `root`, refused if a link leads it out."""
    target = root / path.lstrip("/")
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise ImageBuildError(f"configure: {path} leads out of the tree")
    return target


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def _wheel_content(path: Path) -> str:
    """sha256 of a wheel's members, names and bytes, not of its zip file: the same files
    made into a wheel again later give other zip timestamps but the same content (and key)."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as whl:
            for name in sorted(whl.namelist()):
                h.update(name.encode() + b"\0" + whl.read(name) + b"\0")
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageBuildError(f"wheels: {path.name} is not a readable wheel: {exc}") from None
    return h.hexdigest()


def _chroot(root: Path, argv: list[str], *, what: str) -> str:
    return _run(["chroot", str(root), *argv], what=what, env=_CHROOT_ENV)


def _run(argv: list[str], *, what: str, timeout: float = 900,
         env: dict[str, str] | None = None) -> str:
    if env is None:  # the tools live in sbin, which a caller's PATH may lack
        env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what}: {argv[0]} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise ImageBuildError(f"{what}: {Path(argv[0]).name} failed (exit {done.returncode}): "
                         + (" | ".join(tail[-3:])[-500:] or "no output"))
    return done.stdout
