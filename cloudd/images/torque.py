"""TORQUE in the node image: built from its source tarball on the building machine, copied in.

No Debian release carries TORQUE, so the image cannot install it as a package. The build
takes the TORQUE 6.1.3.h5 source tarball (`--torque-source`, else `$CLOUDD_TORQUE_SOURCE`,
else `../shared/third_party/torque-6.1.3.h5.tar.gz` beside the checkout, as
scripts/build-torque.sh finds it), has scripts/build-torque.sh build it into /opt/torque (the
script returns at once when /opt/torque's stamp names that tarball and the script's version),
and copies /opt/torque into the tree at the same path, where the TORQUE provider runs it from.
The stamp (`PREFIX/.cloudd-build`) is part of the image's key: another tarball or another way
of building makes another image.

TORQUE's programs find its libtorque through the RUNPATH libtool gives them; the image also
names `PREFIX/lib` in /etc/ld.so.conf.d (and runs ldconfig) so that a program linked without
it still runs. After the copy, `ldd` inside the tree must resolve every library of every
TORQUE daemon: a missing one fails the build, not a node at boot.

Without a tarball, the image is built without TORQUE (even where /opt/torque was built
before: the tarball is what the image's key names) and its stage line says so; the TORQUE
provider refuses on such a node with one sentence. An installed cloudd, which has no
scripts/build-torque.sh, takes /opt/torque as it was built when its stamp is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudd.images.packages import ImageBuildError

#: Where TORQUE lives, on the building machine and in the image alike
#: (`cloudd.providers.torque.layout.PREFIX`).
PREFIX = Path("/opt/torque")
#: The stamp scripts/build-torque.sh writes last: "tarball=SHA256 script=VERSION".
STAMP = ".cloudd-build"
#: The tarball's name where scripts/build-torque.sh looks for it beside the checkout.
TARBALL = "torque-6.1.3.h5.tar.gz"
#: Names the library folder for the dynamic linker of the image.
LD_CONF = "/etc/ld.so.conf.d/cloudd-torque.conf"
#: The programs the roles run: each must find every library it needs inside the image.
DAEMONS = ("sbin/pbs_server", "sbin/pbs_sched", "sbin/pbs_mom", "sbin/trqauthd",
           "bin/qsub", "bin/qstat", "bin/pbsnodes", "bin/qmgr", "sbin/momctl")
_MB = 1 << 20


@dataclass(frozen=True)
class TorquePayload:
    """TORQUE for the image: a built prefix and its stamp, or why the image has none."""

    #: The built TORQUE to copy in (None: the image has no TORQUE).
    prefix: Path | None
    #: The build's stamp (part of the image's key); empty without TORQUE.
    stamp: str = ""
    #: Why the image has no TORQUE, for its stage line.
    absent: str = ""


def default_source(checkout: Path | None) -> Path | None:
    """The tarball scripts/build-torque.sh would take: `$CLOUDD_TORQUE_SOURCE`, else the one
    beside the checkout's folder (None when neither is known)."""
    env = os.environ.get("CLOUDD_TORQUE_SOURCE")
    if env:
        return Path(env)
    if checkout is None:
        return None
    return checkout.resolve().parent / "shared" / "third_party" / TARBALL


def prepare(source: Path | None, *, checkout: Path | None, explicit: bool,
            prefix: Path = PREFIX,
            run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
            ) -> TorquePayload:
    """TORQUE built from `source` into `prefix` (scripts/build-torque.sh of `checkout`, which
    returns at once when the stamp matches), or the reason there is none. A tarball given
    (`explicit`) that is missing, or a build that fails, is an error; a default tarball that
    is missing means an image without TORQUE."""
    run = run or _run_script
    stamp_file = prefix / STAMP
    if source is None or not source.is_file():
        if explicit:
            raise ImageBuildError(f"torque: no TORQUE source tarball at {source}")
        where = f"at {source}" if source is not None else "named"
        return TorquePayload(None, absent=f"no TORQUE source tarball {where} (give "
                             "--torque-source or set CLOUDD_TORQUE_SOURCE)")
    script = checkout / "scripts" / "build-torque.sh" if checkout is not None else None
    if script is None or not script.is_file():
        # An installed cloudd has no scripts/: use the prefix as built, if it was.
        if stamp_file.is_file():
            return TorquePayload(prefix, stamp=stamp_file.read_text().strip())
        raise ImageBuildError(f"torque: {prefix} is not built and no scripts/build-torque.sh "
                              "is at hand to build it (give --source CHECKOUT)")
    done = run([str(script), str(source), str(prefix)])
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise ImageBuildError("torque: scripts/build-torque.sh failed (exit "
                              f"{done.returncode}): " + (" | ".join(tail[-3:])[-500:]
                                                         or "no output"))
    if not stamp_file.is_file():
        raise ImageBuildError(f"torque: scripts/build-torque.sh left no {stamp_file}")
    return TorquePayload(prefix, stamp=stamp_file.read_text().strip())


def _run_script(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # A first build takes about ten minutes on two cores.
    return subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)


def install(root: Path, payload: TorquePayload, *,
            chroot: Callable[[list[str]], str]) -> str:
    """Copy `payload`'s prefix into the tree at `PREFIX`, name its libraries to the dynamic
    linker, and check that every daemon's libraries resolve; the stage's line."""
    if payload.prefix is None:
        return f"none: {payload.absent}; the torque role refuses on nodes of this image"
    dest = root / str(PREFIX).lstrip("/")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(payload.prefix, dest, symlinks=True)
    conf = root / LD_CONF.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"# TORQUE, built from source into {PREFIX} (cloudd-cli image build)\n"
                    f"{PREFIX}/lib\n")
    chroot(["ldconfig"])
    missing: list[str] = []
    for name in DAEMONS:
        listing = chroot(["ldd", f"{PREFIX}/{name}"])
        missing += [f"{name}: {line.split()[0]}" for line in listing.splitlines()
                    if "not found" in line]
    if missing:
        raise ImageBuildError("torque: libraries missing in the image (add their packages "
                              f"to packages.TORQUE_RUNTIME): {'; '.join(missing)}")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and not f.is_symlink())
    return (f"TORQUE from {payload.prefix} ({payload.stamp}), {size // _MB} MB in {PREFIX}, "
            f"{len(DAEMONS)} programs' libraries resolve")
