"""The test guest: archive format and cache (fast), and real boots under libvirt (marker)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import random
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudd_lab import testguest
from cloudd_lab.netlab import NetLab
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

from cloudd.vmctl.template import node_mac

CACHE = Path("/var/tmp/cloudd-testguest-tests")
#: Fetch a URL and print the body (busybox-static's wget crashes on this host).
FETCH = ("import sys, urllib.request; "
         "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())")


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


# -- real boots -------------------------------------------------------------------------------

def wait_for(predicate, *, timeout: float, what: str,  # type: ignore[no-untyped-def]
             log: Path | None = None):
    """Poll `predicate` until it returns something true, or fail after `timeout` seconds
    (with the guest's console `log` in the message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    console = f"; console:\n{_console(log)}" if log else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{console}")


@pytest.fixture
def conn() -> Iterator[object]:
    import libvirt

    c = libvirt.open("qemu:///system")
    prefix = "cloudd-h7-"
    yield c
    leftovers = [d.name() for d in c.listAllDomains() if d.name().startswith(prefix)]
    c.close()
    assert leftovers == [], f"domains left behind: {leftovers}"


def _minimal_xml(name: str, image_kernel: Path, image_initrd: Path, log: Path) -> str:
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>192</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><kernel>{image_kernel}</kernel>
<initrd>{image_initrd}</initrd><cmdline>console=ttyS0 panic=-1</cmdline></os>
<on_reboot>destroy</on_reboot><devices><serial type='file'><source path='{log}'/>
<target port='0'/></serial><memballoon model='none'/></devices></domain>"""


@pytest.mark.libvirt
def test_minimal_guest_boots_and_keeps_running(conn) -> None:  # type: ignore[no-untyped-def]
    image = build_minimal_guest(CACHE)
    name = f"cloudd-h7-min-{uuid.uuid4().hex[:6]}"
    log = CACHE / f"{name}.log"
    dom = conn.defineXML(_minimal_xml(name, image.kernel, image.initrd, log))
    try:
        started = time.monotonic()
        dom.create()
        wait_for(lambda: log.exists() and "minimal guest up" in log.read_text(errors="replace"),
                 timeout=120, what="the minimal guest's init")
        print(f"\nminimal guest: userland after {time.monotonic() - started:.1f} s")
        assert dom.isActive()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        log.unlink(missing_ok=True)


# -- the real test guest on a NetLab bridge ---------------------------------------------------

@pytest.fixture
def lab() -> Iterator[NetLab]:
    prefix = "h7g" + uuid.uuid4().hex[:5]
    with NetLab(prefix, subnet=f"10.231.{random.randrange(100, 250)}.0/24") as net:
        yield net
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in links and prefix not in spaces


@contextlib.contextmanager
def guest(conn, lab: NetLab, *, command: str,  # type: ignore[no-untyped-def]
          extra_cmdline: str = "") -> Iterator[tuple[object, str, Path]]:
    """Define and start a test guest running `command`; destroy and undefine it afterwards."""
    image = build_test_guest(CACHE)
    name = f"cloudd-h7-{uuid.uuid4().hex[:6]}"
    address = lab.allocate()
    log = CACHE / f"{name}.log"
    spec = TestGuestDomain(
        name=name, image=image, bridge=lab.bridge, mac=node_mac("h7", name), serial_log=log,
        boot=GuestBoot(address=str(address), gateway=lab.host_ip, command=command,
                       hostname=name))
    xml = domain_xml(spec)
    if extra_cmdline:
        xml = xml.replace("</cmdline>", f" {extra_cmdline}</cmdline>")
    dom = conn.defineXML(xml)
    try:
        yield dom, str(address.ip), log
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        log.unlink(missing_ok=True)


def _console(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


@pytest.mark.libvirt
@pytest.mark.netns
def test_guest_runs_the_hosts_python_and_answers_on_the_bridge(conn, lab: NetLab,  # type: ignore[no-untyped-def]
                                                                ) -> None:
    probe = lab.add_netns("probe")
    port = 8000 + random.randrange(1000)
    with guest(conn, lab, command=f"python3 -m http.server {port}") as (dom, address, log):
        started = time.monotonic()
        dom.create()
        url = f"http://{address}:{port}/"

        def answered() -> str:
            if not dom.isActive():
                pytest.fail(f"guest stopped; console:\n{_console(log)}")
            done = lab.run(probe, [sys.executable, "-c", FETCH, url])
            return done.stdout if done.returncode == 0 else ""

        page = wait_for(answered, timeout=180, what=f"{url} from {probe.name}", log=log)
        booted = time.monotonic() - started
        assert "Directory listing for /" in page
        assert "usr/" in page  # the host's root, seen through virtiofs and the overlay
        with urllib.request.urlopen(url, timeout=10) as reply:  # and from the host's side
            assert reply.status == 200
        console = _console(log)
        print(f"\ntest guest: create -> Python answering in {booted:.1f} s\n{console}")
        for step in ("step mounts", "step modules", "step root", "step network", "step run"):
            assert step in console


@pytest.mark.libvirt
@pytest.mark.netns
def test_guest_writes_stay_in_the_guest(conn, lab: NetLab) -> None:  # type: ignore[no-untyped-def]
    marker = Path(f"/var/tmp/cloudd-h7-marker-{uuid.uuid4().hex[:6]}")
    # The project's own virtualenv and code run in the guest, from the host's disk.
    venv = Path(sys.prefix) / "bin" / "python"
    probe = "import cloudd_lab.testguest as t; print('imported', t.__name__)"
    command = (f"echo written > {marker} && cat {marker} && {venv} -c \"{probe}\" "
               "&& hostname && exit 7")
    with guest(conn, lab, command=command) as (dom, _address, log):
        dom.create()
        wait_for(lambda: not dom.isActive(), timeout=180, what="the guest to power off", log=log)
        console = _console(log)
        assert "written" in console
        assert "imported cloudd_lab.testguest" in console
        assert "\ncloudd-h7-" in console  # hostname from the kernel command line
        assert "command exited with status 7" in console
    assert not marker.exists()


@pytest.mark.libvirt
@pytest.mark.netns
def test_a_failing_step_is_reported_and_powers_the_guest_off(conn, lab: NetLab,  # type: ignore[no-untyped-def]
                                                              ) -> None:
    with guest(conn, lab, command="sleep 1000", extra_cmdline="cloudd.fs=notag") as (dom, _a, log):
        dom.create()
        wait_for(lambda: not dom.isActive(), timeout=180, what="the guest to power off", log=log)
        console = _console(log)
        assert "FAILED: mount virtiofs notag" in console
        assert "step run" not in console


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


@pytest.mark.libvirt
@pytest.mark.netns
def test_guest_runs_the_cloudd_agent_from_the_hosts_virtualenv(conn, lab: NetLab,  # type: ignore[no-untyped-def]
                                                                ) -> None:
    home = Path(f"/var/tmp/cloudd-h7-agent-{uuid.uuid4().hex[:6]}")
    (home / "manifests").mkdir(parents=True)
    try:
        (home / "agent.yaml").write_text(
            "kind: Agent\nprofile: local\nname: guest-1\n"
            f"manifest_dir: {home / 'manifests'}\nstate_dir: /var/lib/cloudd\n")
        agent = Path(sys.prefix) / "bin" / "cloudd"
        with guest(conn, lab, command=f"{agent} --config {home / 'agent.yaml'}") as (dom, _a, log):
            started = time.monotonic()
            dom.create()

            def agent_started() -> bool:
                if not dom.isActive():
                    pytest.fail(f"guest stopped; console:\n{_console(log)}")
                return '"event": "agent_started"' in _console(log)

            wait_for(agent_started, timeout=180, what="the agent in the guest to start", log=log)
            print(f"\ntest guest: create -> cloudd agent started in "
                  f"{time.monotonic() - started:.1f} s")
            assert '"node": "guest-1"' in _console(log)
            assert dom.isActive()
    finally:
        shutil.rmtree(home)
