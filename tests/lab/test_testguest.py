"""The test guest: archive format and cache, kernel command line, domain XML, the build command
(its real boots under libvirt are in tests/real/lab/test_testguest_real.py)."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from cloudd_lab import testguest
from cloudd_lab.testguest import (
    GUEST_MODULES,
    GuestBoot,
    GuestBuildError,
    HostParts,
    TestGuestDomain,
    build_minimal_guest,
    build_test_guest,
    domain_xml,
    find_host_parts,
    kernel_cmdline,
)
from shared.testguest_cache import CACHE


def _listing(initrd: Path) -> list[str]:
    # The system's cpio reads the archive back: the format is checked by someone else's parser.
    out = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
                         capture_output=True, check=True)
    return out.stdout.decode().split()


def test_minimal_guest_archive_has_init_busybox_and_console() -> None:
    image = build_minimal_guest(CACHE)
    names = _listing(image.initrd)
    assert {"init", "bin/busybox", "dev/console", "proc", "sys", "dev"} <= set(names)
    assert image.kernel.read_bytes() == find_host_parts().kernel.read_bytes()


def test_rebuild_reuses_the_cached_files(tmp_path: Path) -> None:
    first = build_minimal_guest(tmp_path)
    stamp = first.initrd.stat().st_mtime_ns, first.kernel.stat().st_mtime_ns
    second = build_minimal_guest(tmp_path)
    assert second == first
    assert (second.initrd.stat().st_mtime_ns, second.kernel.stat().st_mtime_ns) == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.kernel.name, first.initrd.name])


def test_the_archive_is_deterministic(tmp_path: Path) -> None:
    a = build_test_guest(tmp_path / "a")
    b = build_test_guest(tmp_path / "b")
    assert a.initrd.name == b.initrd.name
    assert a.initrd.read_bytes() == b.initrd.read_bytes()


def test_test_guest_carries_its_modules_in_load_order() -> None:
    image = build_test_guest(CACHE)
    names = _listing(image.initrd)
    for rel in GUEST_MODULES:
        assert f"lib/modules/{Path(rel).name}" in names
    assert "etc/modules" in names


def test_missing_module_is_one_precise_error(tmp_path: Path) -> None:
    real = find_host_parts()
    parts = HostParts(kernel=real.kernel, modules=tmp_path / "nomodules")
    with pytest.raises(GuestBuildError, match=r"kernel module .*virtio_ring.ko is missing"):
        build_test_guest(tmp_path / "out", parts=parts)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_kernel_is_one_precise_error(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match=r"no cloud kernel in .*linux-image-cloud-amd64"):
        find_host_parts(boot=tmp_path)


def test_kernel_cmdline_carries_identity_and_the_command_in_base64() -> None:
    line = kernel_cmdline(GuestBoot(address="10.231.0.10/24", gateway="10.231.0.1",
                                    command="python3 -m http.server 8000 'x y'",
                                    hostname="n1", tmpfs=("/var/lib/cloudd",),
                                    params=(("cloudd.node", "web-1"),)))
    words = dict(w.split("=", 1) for w in line.split())
    assert words["console"] == "ttyS0"
    assert words["cloudd.ip"] == "10.231.0.10/24"
    assert words["cloudd.gw"] == "10.231.0.1"
    assert words["cloudd.hostname"] == "n1"
    assert words["cloudd.tmpfs"] == "/var/lib/cloudd"
    assert words["cloudd.node"] == "web-1"
    assert base64.b64decode(words["cloudd.cmd64"]).decode() == "python3 -m http.server 8000 'x y'"


@pytest.mark.parametrize(("boot", "message"), [
    (GuestBoot(address="10.231.0.10", command="true"), "needs a prefix length"),
    (GuestBoot(address="10.231.0.10/24", command="true", hostname="a b"), "hostname 'a b'"),
    (GuestBoot(address="10.231.0.10/24", command="true", tmpfs=("rel",)), "tmpfs 'rel'"),
    (GuestBoot(address="10.231.0.10/24", command="true", params=(("cloudd.ip", "x"),)),
     "key 'cloudd.ip' .* one of /init's own"),
    (GuestBoot(address="10.231.0.10/24", command="true", params=(("k", "a b"),)),
     "parameter k 'a b' must not contain spaces"),
    (GuestBoot(address="10.231.0.10/24", command="x" * 1600), "more than the kernel's 2047"),
])
def test_kernel_cmdline_refuses_bad_values(boot: GuestBoot, message: str) -> None:
    with pytest.raises(GuestBuildError, match=message):
        kernel_cmdline(boot)


# -- python -m cloudd_lab.testguest build ------------------------------------------------------

def test_build_prints_the_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert testguest.main(["build", "--out", str(tmp_path / "img")]) == 0
    first = capsys.readouterr().out
    kernel, initrd = (line.split(": ", 1)[1] for line in first.splitlines())
    assert Path(kernel).is_file() and Path(initrd).is_file()
    assert "lib/modules/virtiofs.ko" in _listing(Path(initrd))
    assert testguest.main(["build", "--out", str(tmp_path / "img")]) == 0
    assert capsys.readouterr().out == first
    assert testguest.main(["build", "--minimal", "--out", str(tmp_path / "img")]) == 0
    assert "minimal-" in capsys.readouterr().out


def test_build_runs_as_a_module(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cloudd_lab.testguest", "build", "--minimal",
                           "--out", str(tmp_path / "img")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [line.split(": ")[0] for line in done.stdout.splitlines()] == ["kernel", "initrd"]


def test_build_refuses_an_out_that_is_a_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    assert testguest.main(["build", "--out", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"python -m cloudd_lab.testguest build: --out {target} "
                                    "exists and is not a directory")
    assert captured.out == ""
    assert target.read_text() == "keep"


def test_domain_xml_fills_every_placeholder_and_carries_the_metadata(tmp_path: Path) -> None:
    from xml.etree import ElementTree as ET

    from cloudd.vmctl.metadata import CloudMeta, from_domain_xml, metadata_xml

    image = build_minimal_guest(CACHE)
    meta = CloudMeta(cloud="lab", node="n1", role="server", term=3)
    spec = TestGuestDomain(name="lab-n1", image=image, bridge="h7xbr", mac="52:54:00:00:00:01",
                           serial_log=tmp_path / "console.log", memory_mib=384, vcpus=2,
                           metadata=metadata_xml(meta),
                           boot=GuestBoot(address="10.231.0.5/24", command="echo a<b & c"))
    xml = domain_xml(spec)
    root = ET.fromstring(xml)
    assert "${" not in xml
    assert root.get("type") == "qemu"
    assert root.findtext("memory") == str(384 * 1024)
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == str(image.kernel)
    assert root.findtext("os/cmdline") == kernel_cmdline(spec.boot)
    assert root.find("devices/interface/source").get("bridge") == "h7xbr"  # type: ignore[union-attr]
    assert root.find("devices/filesystem/target").get("dir") == "hostroot"  # type: ignore[union-attr]
    assert from_domain_xml(xml) == meta
