"""The test guest's real boots under libvirt: the minimal guest, then the test guest on a NetLab
bridge running the host's Python and the cloudd agent."""

from __future__ import annotations

import contextlib
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
from cloudd_lab.netlab import NetLab
from cloudd_lab.testguest import (
    GuestBoot,
    TestGuestDomain,
    build_minimal_guest,
    build_test_guest,
    domain_xml,
)
from shared.testguest_cache import CACHE

from cloudd.vmctl.template import node_mac

#: Fetch a URL and print the body (busybox-static's wget crashes on this host).
FETCH = ("import sys, urllib.request; "
         "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())")


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
