"""The wheel `pip wheel .` builds: the product and its package data, and nothing of the lab.

The checkout is copied first (building writes build/ and *.egg-info beside the sources) and
built the way bootstrap builds it, with pip's isolated build environment: this venv's own
setuptools cannot make wheels without it. The same wheel, installed into a folder, is then
put back together by bootstrap's `Installed` source, which must give the same wheel: that is
how an installed cloudd-cli ships itself to a new host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

from cloudd.commands.bootstrap.wheels import Installed, running_source

REPO = Path(__file__).resolve().parents[1]
#: The lab's modules: none of them may be in the product's wheel, under any package.
LAB_MODULES = {"cloudd_lab", "agentlab", "vmlab", "demo", "netlab", "testguest", "labfence"}
#: Folders of the checkout that are not sources (caches, environments, build output).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "*.egg-info",
                                     "build", ".*_cache", ".hypothesis", ".pytest_cache")


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    shutil.copytree(REPO, tmp / "src", ignore=NOT_SOURCES)
    _pip("wheel", "-q", "--no-deps", "-w", str(tmp / "out"), str(tmp / "src"))
    (built,) = (tmp / "out").glob("cloudd-*.whl")
    return built


def _names(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return z.namelist()


def test_the_wheel_holds_no_lab(wheel: Path) -> None:
    names = _names(wheel)
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops == {"cloudd", "cloudd-0.1.0.dist-info"}, tops
    lab = [n for n in names if LAB_MODULES & {PurePosixPath(p).stem
                                              for p in PurePosixPath(n).parts}]
    assert lab == []


def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    # Templates, Ruby, SQL and config templates, the unit bootstrap installs, py.typed...
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "cloudd").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    data = {n for n in sources if not n.endswith(".py")}
    assert {"cloudd/providers/web/app.rb", "cloudd/providers/web/nginx.conf.tmpl",
            "cloudd/commands/bootstrap/cloudd.service", "cloudd/py.typed"} <= data
    assert sources - set(_names(wheel)) == set()


def test_an_installed_wheel_is_put_back_into_the_same_wheel(wheel: Path,
                                                            tmp_path: Path) -> None:
    _pip("install", "-q", "--no-deps", "--no-index", "--no-compile", "--target",
         str(tmp_path / "site"), str(wheel))
    dist = metadata.PathDistribution(tmp_path / "site" / "cloudd-0.1.0.dist-info")
    source = running_source(dist)
    assert isinstance(source, Installed)
    source.check()
    source.build(tmp_path / "again")
    (again,) = (tmp_path / "again").iterdir()
    assert again.name == wheel.name
    with zipfile.ZipFile(wheel) as z, zipfile.ZipFile(again) as y:
        record = "cloudd-0.1.0.dist-info/RECORD"
        assert sorted(y.namelist()) == sorted(z.namelist())
        assert all(y.read(n) == z.read(n) for n in z.namelist() if n != record)
        assert sorted(y.read(record).splitlines()) == sorted(z.read(record).splitlines())
