"""Where bootstrap's cloudd wheel comes from: a checkout, or the distribution installed here.

An installed distribution is made by hand here (a site folder with a RECORD, as pip leaves
it); tests/test_packaging.py does the same round trip with the real wheel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from cloudd.commands.bootstrap.target import BootstrapError, Options
from cloudd.commands.bootstrap.wheels import Checkout, Installed, build_wheels, running_source

INFO = "cloudd-0.1.0.dist-info"
METADATA = """\
Metadata-Version: 2.1
Name: cloudd
Version: 0.1.0
Requires-Dist: pyyaml>=6.0
Requires-Dist: uvloop>=0.19; platform_system == "Linux"
Provides-Extra: dev
Requires-Dist: pytest>=8; extra == "dev"
"""
#: What the wheel held, as pip installed it.
PACKAGED = {
    "cloudd/__init__.py": b'"""cloudd"""\n',
    "cloudd/providers/web/app.rb": b"# the app\n",
    f"{INFO}/METADATA": METADATA.encode(),
    f"{INFO}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{INFO}/entry_points.txt": b"[console_scripts]\ncloudd-cli = cloudd.cli:main\n",
}
#: What pip wrote beside it, which a rebuilt wheel must not hold.
INSTALLER_MADE = {
    "cloudd/__pycache__/__init__.cpython-311.pyc": b"\0bytecode",
    f"{INFO}/INSTALLER": b"pip\n",
    f"{INFO}/REQUESTED": b"",
    f"{INFO}/direct_url.json": b'{"url": "file:///tmp/cloudd-0.1.0-py3-none-any.whl"}',
    "../../bin/cloudd-cli": b"#!/usr/bin/python3\n",
}


def install(root: Path, *, direct_url: dict[str, object] | None = None,
            files: dict[str, bytes] | None = None) -> metadata.Distribution:
    """A distribution installed under root/lib/site, its RECORD listing every file."""
    site = root / "lib" / "site"
    written = {**PACKAGED, **INSTALLER_MADE, **(files or {})}
    if direct_url is not None:
        written[f"{INFO}/direct_url.json"] = json.dumps(direct_url).encode()
    for name, data in written.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    record = [f"{name},," for name in written] + [f"{INFO}/RECORD,,"]
    (site / INFO / "RECORD").write_text("\n".join(record) + "\n")
    return metadata.PathDistribution(site / INFO)


def test_requirements_are_the_dependencies_without_the_extras(tmp_path: Path) -> None:
    assert Installed(install(tmp_path)).requirements() == [
        "pyyaml>=6.0", 'uvloop>=0.19; platform_system == "Linux"']


def test_the_rebuilt_wheel_holds_what_the_wheel_held(tmp_path: Path) -> None:
    Installed(install(tmp_path)).build(tmp_path / "out")
    (wheel,) = (tmp_path / "out").iterdir()
    assert wheel.name == "cloudd-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        assert set(z.namelist()) == {*PACKAGED, f"{INFO}/RECORD"}
        assert all(z.read(name) == data for name, data in PACKAGED.items())
        record = z.read(f"{INFO}/RECORD").decode().splitlines()
    for line in record:
        name, digest, size = line.rsplit(",", 2)
        if name == f"{INFO}/RECORD":
            assert (digest, size) == ("", "")
            continue
        data = PACKAGED[name]
        want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (f"sha256={want}", len(data))
    # The same files make the same bytes: the wheel cache and the target's marker stay put.
    first = wheel.read_bytes()
    Installed(install(tmp_path)).build(tmp_path / "again")
    assert (tmp_path / "again" / wheel.name).read_bytes() == first


def test_pip_installs_the_rebuilt_wheel(tmp_path: Path) -> None:
    Installed(install(tmp_path)).build(tmp_path / "out")
    (wheel,) = (tmp_path / "out").iterdir()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-index", "--no-compile", "--target", str(tmp_path / "t"),
                           str(wheel)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t/cloudd/providers/web/app.rb").read_bytes() == b"# the app\n"
    assert (tmp_path / "t/bin/cloudd-cli").is_file()


def test_the_digest_follows_the_packaged_files_only(tmp_path: Path) -> None:
    first = Installed(install(tmp_path / "a")).digest()
    assert Installed(install(tmp_path / "b", files={
        f"{INFO}/INSTALLER": b"uv\n", "cloudd/__pycache__/x.pyc": b"1"})).digest() == first
    assert Installed(install(tmp_path / "c", files={
        "cloudd/__init__.py": b"x = 1\n"})).digest() != first


def test_the_checkout_digest_follows_the_packaged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cloudd").mkdir(parents=True)
    (src / "pyproject.toml").write_text("[project]\n")
    (src / "cloudd/__init__.py").write_text("")
    first = Checkout(src).digest()
    (src / "cloudd/__pycache__").mkdir()
    (src / "cloudd/__pycache__/x.pyc").write_bytes(b"\0")
    (src / "notes.txt").write_text("not packaged")
    assert Checkout(src).digest() == first
    (src / "cloudd/__init__.py").write_text("x = 1\n")
    assert Checkout(src).digest() != first


def test_the_running_source_is_the_checkout_of_an_editable_install(tmp_path: Path) -> None:
    editable = install(tmp_path / "e", direct_url={
        "url": "file:///src/my%20cloudd", "dir_info": {"editable": True}})
    assert running_source(editable) == Checkout(Path("/src/my cloudd"))
    from_wheel = install(tmp_path / "w", direct_url={
        "url": "file:///tmp/cloudd-0.1.0-py3-none-any.whl", "archive_info": {}})
    assert isinstance(running_source(from_wheel), Installed)
    from_index = install(tmp_path / "i")
    (tmp_path / "i/lib/site" / INFO / "direct_url.json").unlink()
    assert isinstance(running_source(from_index), Installed)


def test_a_source_trees_build_leftovers_do_not_hide_the_editable_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the checkout, `cloudd.egg-info` (left by a build) is found first on sys.path;
    the editable install's record still says where the checkout is."""
    leftover = tmp_path / "tree" / "cloudd.egg-info"
    leftover.mkdir(parents=True)
    (leftover / "PKG-INFO").write_text(METADATA)
    editable = install(tmp_path / "e", direct_url={
        "url": "file:///src/cloudd", "dir_info": {"editable": True}})
    monkeypatch.setattr(metadata, "distributions", lambda **kw: iter(
        [metadata.PathDistribution(leftover), editable]))
    assert running_source() == Checkout(Path("/src/cloudd"))


def test_an_installed_cloudd_without_its_files_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site" / INFO
    site.mkdir(parents=True)
    (site / "METADATA").write_text(METADATA)
    (site / "RECORD").write_text(f"__editable__.cloudd-0.1.0.pth,,\n{INFO}/METADATA,,\n")
    with pytest.raises(BootstrapError, match=r"lists none of its files.*give --source DIR"):
        Installed(metadata.PathDistribution(site)).check()
    Installed(install(tmp_path / "whole")).check()


def test_the_cloudd_wheel_is_made_once_per_content(tmp_path: Path) -> None:
    source = Installed(install(tmp_path / "a"))
    house = tmp_path / "house"
    # Dependencies already made for these requirements: only cloudd's wheel is built here.
    (house / "deps").mkdir(parents=True)
    (house / "deps" / ".requirements").write_text(
        "\n".join([sys.version.split()[0], *source.requirements()]))
    options = Options(source=source, wheelhouse=house)
    wheels, built = build_wheels(options)
    assert built and [w.name for w in wheels] == ["cloudd-0.1.0-py3-none-any.whl"]
    assert build_wheels(options) == (wheels, False)
    changed = Installed(install(tmp_path / "b", files={"cloudd/__init__.py": b"x = 2\n"}))
    again, built = build_wheels(Options(source=changed, wheelhouse=house))
    assert built and again != wheels and not wheels[0].exists()
