"""TORQUE for the image: which tarball, the build script's verdict, the copy and its check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloudd.images.packages import ImageBuildError
from cloudd.images.torque import LD_CONF, PREFIX, TorquePayload, default_source, install, prepare

STAMP = "tarball=abc123 script=1"


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "build-torque.sh").write_text("#!/bin/sh\n")
    return repo


def test_the_default_tarball_is_the_environment_s_else_the_one_beside_the_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDD_TORQUE_SOURCE", raising=False)
    assert default_source(tmp_path / "repo") == (
        tmp_path / "shared" / "third_party" / "torque-6.1.3.h5.tar.gz")
    assert default_source(None) is None
    monkeypatch.setenv("CLOUDD_TORQUE_SOURCE", "/srv/t.tar.gz")
    assert default_source(tmp_path / "repo") == Path("/srv/t.tar.gz")


def test_no_default_tarball_means_an_image_without_torque_that_says_why(tmp_path: Path) -> None:
    ran: list[list[str]] = []
    got = prepare(tmp_path / "none.tar.gz", checkout=_checkout(tmp_path), explicit=False,
                  prefix=tmp_path / "opt", run=lambda argv: ran.append(argv) or _done(0))
    assert got.prefix is None and got.stamp == "" and ran == []
    assert got.absent == (f"no TORQUE source tarball at {tmp_path / 'none.tar.gz'} (give "
                          "--torque-source or set CLOUDD_TORQUE_SOURCE)")


def test_a_tarball_given_that_is_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError) as err:
        prepare(tmp_path / "none.tar.gz", checkout=_checkout(tmp_path), explicit=True,
                prefix=tmp_path / "opt")
    assert str(err.value) == f"torque: no TORQUE source tarball at {tmp_path / 'none.tar.gz'}"


def _done(rc: int, stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], rc, "", stderr)


def test_the_script_builds_into_the_prefix_and_its_stamp_keys_the_image(tmp_path: Path) -> None:
    tarball, prefix, repo = tmp_path / "t.tar.gz", tmp_path / "opt", _checkout(tmp_path)
    tarball.write_bytes(b"tgz")
    ran: list[list[str]] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        prefix.mkdir()
        (prefix / ".cloudd-build").write_text(STAMP + "\n")
        return _done(0)

    got = prepare(tarball, checkout=repo, explicit=False, prefix=prefix, run=run)
    assert ran == [[str(repo / "scripts" / "build-torque.sh"), str(tarball), str(prefix)]]
    assert got == TorquePayload(prefix, stamp=STAMP)


def test_a_failed_build_is_one_sentence_with_the_end_of_its_output(tmp_path: Path) -> None:
    tarball = tmp_path / "t.tar.gz"
    tarball.write_bytes(b"tgz")
    with pytest.raises(ImageBuildError) as err:
        prepare(tarball, checkout=_checkout(tmp_path), explicit=True, prefix=tmp_path / "o",
                run=lambda argv: _done(1, "make: *** [all] Error 2\nbuild-torque: failed\n"))
    assert str(err.value) == ("torque: scripts/build-torque.sh failed (exit 1): make: *** "
                              "[all] Error 2 | build-torque: failed")


def _built(tmp_path: Path) -> Path:
    prefix = tmp_path / "built"
    (prefix / "sbin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "sbin" / "pbs_mom").write_bytes(b"\x7fELF" + b"\0" * 2044)
    (prefix / "lib" / "libtorque.so.2.0.0").write_bytes(b"\0" * 4096)
    (prefix / "lib" / "libtorque.so.2").symlink_to("libtorque.so.2.0.0")
    return prefix


def test_the_build_is_copied_in_named_to_the_linker_and_its_libraries_checked(
        tmp_path: Path) -> None:
    root, ran = tmp_path / "root", []
    root.mkdir()

    def chroot(argv: list[str]) -> str:
        ran.append(argv)
        return "\tlibtorque.so.2 => /opt/torque/lib/libtorque.so.2 (0x7f)\n"

    line = install(root, TorquePayload(_built(tmp_path), stamp=STAMP), chroot=chroot)
    inside = root / str(PREFIX).lstrip("/")
    assert (inside / "sbin" / "pbs_mom").is_file()
    assert (inside / "lib" / "libtorque.so.2").is_symlink()  # links stay links
    assert (root / LD_CONF.lstrip("/")).read_text().splitlines()[-1] == "/opt/torque/lib"
    assert ran[0] == ["ldconfig"] and ["ldd", "/opt/torque/sbin/pbs_mom"] in ran
    assert line.startswith(f"TORQUE from {tmp_path / 'built'} ({STAMP}), 0 MB in /opt/torque")


def test_a_library_the_image_lacks_fails_the_build_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    def chroot(argv: list[str]) -> str:
        return "\tlibxml2.so.2 => not found\n" if argv[-1].endswith("pbs_server") else ""

    with pytest.raises(ImageBuildError) as err:
        install(root, TorquePayload(_built(tmp_path), stamp=STAMP), chroot=chroot)
    assert str(err.value) == ("torque: libraries missing in the image (add their packages to "
                              "packages.TORQUE_RUNTIME): sbin/pbs_server: libxml2.so.2")


def test_an_image_without_torque_says_so_and_copies_nothing(tmp_path: Path) -> None:
    line = install(tmp_path, TorquePayload(None, absent="no TORQUE source tarball named"),
                   chroot=lambda argv: pytest.fail("nothing to run"))
    assert line == ("none: no TORQUE source tarball named; the torque role refuses on nodes "
                    "of this image")
    assert list(tmp_path.iterdir()) == []


def test_the_image_puts_torque_where_the_provider_runs_it() -> None:
    from cloudd.images import torque
    from cloudd.providers.torque import layout

    assert torque.PREFIX == layout.PREFIX
