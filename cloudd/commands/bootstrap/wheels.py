"""The wheels bootstrap installs: cloudd's own, and those of its dependencies.

The target needs no package index: wheels are made here once (a cache keyed by content) and
installed there with `pip install --no-index`; the target's Python must therefore have the
same major.minor as the one making them. cloudd's wheel comes from one of two sources:

- a `Checkout` (`--source DIR`, or the checkout an editable install points at): built with
  `pip wheel` from a copy of the files that go into the wheel;
- the `Installed` distribution this cloudd-cli runs from, when it was installed from a wheel:
  that wheel is put together again from the files its RECORD lists (the installed package and
  its metadata), so a host bootstraps others with exactly the cloudd it runs.

`running_source()` picks between them from the distribution's own metadata (PEP 610's
direct_url.json says whether it is an editable install of a checkout, and which).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from cloudd.commands.bootstrap.target import BootstrapError, Options

#: Files of an installed distribution that the installer wrote, not the wheel.
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"})
#: A fixed timestamp for every member of a rebuilt wheel: same files, same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _pip(args: list[str], *, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          check=False, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BootstrapError(f"building {what}: pip wheel failed: {tail}")


@dataclass(frozen=True)
class Checkout:
    """A cloudd source tree (pyproject.toml, cloudd/): its wheel is built with pip."""

    path: Path

    def check(self) -> None:
        if not (self.path / "pyproject.toml").is_file():
            raise BootstrapError(f"source {self.path}: no pyproject.toml, not a cloudd tree")

    def describe(self) -> str:
        return f"the checkout {self.path}"

    def requirements(self) -> list[str]:
        project = tomllib.loads((self.path / "pyproject.toml").read_text())["project"]
        return list(project["dependencies"])

    def files(self) -> list[Path]:
        """The files that go into the wheel: pyproject, README and the package."""
        src = self.path
        files = [src / "pyproject.toml"]
        if (src / "README.md").is_file():
            files.append(src / "README.md")
        files += sorted(p for p in (src / "cloudd").rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
        return files

    def digest(self) -> str:
        """sha256 over the files that go into the cloudd wheel (names and contents)."""
        h = hashlib.sha256()
        for path in self.files():
            h.update(str(path.relative_to(self.path)).encode() + b"\0" + path.read_bytes()
                     + b"\0")
        return h.hexdigest()

    def build(self, out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            # Build from a copy so that the checkout gets no build/ or egg-info litter.
            for path in self.files():
                dest = Path(tmp) / path.relative_to(self.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            _pip(["wheel", "-q", "--no-deps", "-w", str(out), tmp], what="the cloudd wheel")


@dataclass(frozen=True)
class Installed:
    """cloudd as installed from a wheel: the wheel is rebuilt from the files it installed."""

    dist: metadata.Distribution

    def check(self) -> None:
        if "cloudd/__init__.py" not in dict(self._members()):
            raise BootstrapError(
                f"the installed {self.dist.metadata['Name']} lists none of its files (an "
                "editable install whose checkout is gone?): give --source DIR")

    def describe(self) -> str:
        return f"the installed {self.dist.metadata['Name']} {self.dist.version}"

    def requirements(self) -> list[str]:
        # Extras (the dev tools) are for a developer's machine, not for a host.
        return [r for r in self.dist.requires or () if not re.search(r"\bextra\s*==", r)]

    def _members(self) -> list[tuple[str, metadata.PackagePath]]:
        """(name in the wheel, installed file), sorted: the package and its metadata, without
        the console scripts, bytecode and files the installer wrote (pip makes those)."""
        out = []
        for path in self.dist.files or ():
            parts = path.parts
            if (not parts or parts[0] == ".." or "__pycache__" in parts or path.suffix == ".pyc"
                    or (parts[0].endswith(".dist-info") and path.name in _INSTALLER_FILES)
                    or parts[0].startswith("__editable__")):
                continue
            out.append((path.as_posix(), path))
        return sorted(out, key=lambda member: member[0])

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, path in self._members():
            h.update(name.encode() + b"\0" + path.read_binary() + b"\0")
        return h.hexdigest()

    def build(self, out: Path) -> None:
        members = self._members()
        info = next(name.split("/")[0] for name, _ in members
                    if name.split("/")[0].endswith(".dist-info"))
        tags = [line.split(":", 1)[1].strip() for line in
                (self.dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag:")]
        tag = tags[0] if tags else "py3-none-any"
        stem = info.removesuffix(".dist-info")
        out.mkdir(parents=True, exist_ok=True)
        record = []
        with zipfile.ZipFile(out / f"{stem}-{tag}.whl", "w", zipfile.ZIP_DEFLATED) as whl:
            for name, path in members:
                data = path.read_binary()
                _add(whl, name, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                record.append(f"{name},sha256={digest.decode()},{len(data)}")
            record.append(f"{info}/RECORD,,")
            _add(whl, f"{info}/RECORD", ("\n".join(record) + "\n").encode())


def _add(whl: zipfile.ZipFile, name: str, data: bytes) -> None:
    member = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    member.external_attr = 0o644 << 16
    member.compress_type = zipfile.ZIP_DEFLATED
    whl.writestr(member, data)


Source = Checkout | Installed


def running_source(dist: metadata.Distribution | None = None) -> Source:
    """The cloudd this command runs from: the checkout of an editable install, else the
    installed distribution itself."""
    if dist is None:
        dists = list(metadata.distributions(name="cloudd"))
        if not dists:
            raise BootstrapError("cloudd is not installed in this Python (run from a source "
                                 "tree?): give --source DIR")
        # A source tree's own build leftovers (cloudd.egg-info, found first when the tree is
        # the working folder) are not the installation: prefer the one that says editable.
        dist = next((d for d in dists if _editable_path(d) is not None), dists[0])
    path = _editable_path(dist)
    return Checkout(path) if path is not None else Installed(dist)


def _editable_path(dist: metadata.Distribution) -> Path | None:
    """The checkout of an editable install (PEP 610's direct_url.json), if `dist` is one."""
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = urlparse(direct.get("url", ""))
    if direct.get("dir_info", {}).get("editable") and url.scheme == "file":
        return Path(unquote(url.path))
    return None


def build_wheels(options: Options) -> tuple[list[Path], bool]:
    """The wheels to install (dependencies, then cloudd) and whether any was made now."""
    source, house = options.source, options.wheelhouse
    reqs = source.requirements()
    deps = house / "deps"
    stamp = deps / ".requirements"
    wanted = "\n".join([sys.version.split()[0], *reqs])
    built = False
    if not stamp.is_file() or stamp.read_text() != wanted:
        deps.mkdir(parents=True, exist_ok=True)
        _pip(["wheel", "-q", "-w", str(deps), "--find-links", str(deps), *reqs],
             what="dependency wheels")
        stamp.write_text(wanted)
        built = True
    out = house / f"cloudd-{source.digest()[:16]}"
    if not list(out.glob("cloudd-*.whl")):
        for old in house.glob("cloudd-*"):
            shutil.rmtree(old, ignore_errors=True)
        source.build(out)
        built = True
    wheels = sorted(deps.glob("*.whl")) + sorted(out.glob("cloudd-*.whl"))
    return wheels, built
