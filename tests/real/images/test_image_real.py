"""The web node image, built for real and booted under QEMU (TCG) by direct kernel boot.

The build is cached in the machine's image cache (the one the command, the e2e suite and the
demo use), so a machine builds the image once; this test then boots it from a throwaway qcow2
overlay with a NoCloud seed cdrom whose user-data starts a probe. The probe waits for the boot
to finish and prints one line on the serial console: the system state, the agent's unit, the
units the agent runs itself, whether the agent's virtualenv runs, root's password state and
the machine id. The guest has no network.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from cloudd.commands.image import ensure_image
from cloudd.images.build import Stage
from cloudd.images.store import DEFAULT_CACHE, Image, backing_file

pytestmark = pytest.mark.libvirt  # QEMU as libvirt would run it; libvirtd itself is not used

REPO = Path(__file__).resolve().parents[3]
#: TCG boots take 20-60 s to a login prompt, cloud-init's stages as much again.
BOOT_TIMEOUT = 300.0

# Started by bootcmd (the image's cloud-init runs the init stage's modules only) as a
# transient unit, so that it outlives cloud-init and can wait for the whole boot to finish.
PROBE = r"""
systemctl is-system-running --wait >/dev/null 2>&1
show() { systemctl show -p "$2" --value "$1"; }
failed=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | paste -sd, -)
agent=$(/opt/cloudd/venv/bin/cloudd --help >/dev/null 2>&1 && echo ok || echo broken)
machineid=$(test -s /etc/machine-id && echo set || echo empty)
echo "PROBE system=$(systemctl is-system-running) \
multiuser=$(systemctl is-active multi-user.target) \
cloudd_load=$(show cloudd.service LoadState) cloudd_enabled=$(systemctl is-enabled cloudd.service) \
cloudd=$(show cloudd.service ActiveState) cloudd_assert=$(show cloudd.service AssertResult) \
nginx=$(systemctl is-enabled nginx.service) mariadb=$(systemctl is-enabled mariadb.service) \
e2scrub=$(systemctl is-enabled e2scrub_reap.service) \
cloudinit=$(cloud-init status 2>/dev/null | sed -n 's/^status: //p') \
agent=$agent root=$(passwd -S root | cut -d' ' -f2) machineid=$machineid \
failed=${failed:-none} uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
"""


@pytest.fixture(scope="module")
def image() -> tuple[Image, list[Stage]]:
    stages: list[Stage] = []
    built = ensure_image("web", cache=DEFAULT_CACHE, source=REPO, report=stages.append)
    for stage in stages:
        print(f"image: {stage.name:<10} {stage.seconds:6.1f} s  {stage.detail}")
    return built, stages


def _seed(folder: Path, marker: str) -> Path:
    """A NoCloud seed (as `identity.build_seed` makes one) whose user-data starts the probe."""
    files = {
        "meta-data": json.dumps({"instance-id": f"probe-{marker}",
                                 "local-hostname": "image-probe"}) + "\n",
        "user-data": "#cloud-config\n" + json.dumps({"bootcmd": [[
            "systemd-run", "--no-block", "--unit=cloudd-image-probe", "/bin/sh", "-c",
            PROBE.replace("PROBE", marker)]]}) + "\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    seed = folder / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata",
                    "-joliet", "-rock", *(str(folder / n) for n in files)], check=True)
    return seed


def _qemu(image: Image, *, overlay: Path, seed: Path, log: Path) -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "1",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", image.kernel_args,
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        # The cloud kernel has no AHCI driver (q35's own cdrom bus): the seed goes on
        # virtio-scsi, whose driver and sr_mod it has.
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={seed},if=none,id=seed,media=cdrom,format=raw,readonly=on",
        "-device", "scsi-cd,drive=seed,bus=scsi0.0",
        "-nic", "none", "-display", "none", "-monitor", "none", "-serial", f"file:{log}",
    ]


def _wait_for(marker: str, log: Path, proc: subprocess.Popen[bytes]) -> tuple[str, float]:
    start = time.monotonic()
    while time.monotonic() - start < BOOT_TIMEOUT:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            # the console is shared: getty's login prompt may be written just before it
            if marker + " " in line:
                return line[line.index(marker + " "):], time.monotonic() - start
        if proc.poll() is not None:
            pytest.fail(f"qemu exited ({proc.returncode}) before the probe printed; "
                        f"serial log ends:\n{text[-3000:]}")
        time.sleep(1.0)
    pytest.fail(f"no probe line within {BOOT_TIMEOUT:.0f} s; serial log ends:\n{text[-3000:]}")


def test_web_image_boots_to_multi_user_with_the_agent_unit_waiting_for_its_identity(
        image: tuple[Image, list[Stage]], tmp_path: Path, have) -> None:
    built, _ = image
    for program in ("qemu-system-x86_64", "qemu-img", "genisoimage"):
        have(program)
    overlay = tmp_path / "node.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(built.qcow2), str(overlay)], check=True)
    marker = f"CLOUDD-PROBE-{secrets.token_hex(4)}"
    seed, log = _seed(tmp_path, marker), tmp_path / "serial.log"
    proc = subprocess.Popen(_qemu(built, overlay=overlay, seed=seed, log=log),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        line, seconds = _wait_for(marker, log, proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        overlay.unlink(missing_ok=True)
    print(f"booted to the probe in {seconds:.1f} s: {line}")
    probe = dict(word.split("=", 1) for word in line.split()[1:])
    float(probe.pop("uptime"))  # the guest's seconds to a finished boot, printed above
    assert probe == {
        "system": "running", "multiuser": "active",
        # The unit is there and enabled (an absent unit also shows inactive, assert "no"),
        # but no identity yet (a node's seed brings /etc/cloudd/identity.json): the unit's
        # AssertPathExists fails cleanly and the agent is not started.
        "cloudd_load": "loaded", "cloudd_enabled": "enabled",
        "cloudd": "inactive", "cloudd_assert": "no",
        # The agent runs these itself under its supervisor.
        "nginx": "disabled", "mariadb": "disabled", "e2scrub": "disabled",
        # Its config and final stages run no module, but they run: cloud-init is done.
        "cloudinit": "done",
        "agent": "ok", "root": "L", "machineid": "set", "failed": "none",
    }, line


def test_a_second_build_finds_the_image_in_the_cache(image: tuple[Image, list[Stage]]) -> None:
    built, first = image
    stages: list[Stage] = []
    again = ensure_image("web", cache=DEFAULT_CACHE, source=REPO, report=stages.append)
    assert again == built
    # TORQUE's build, where the machine has one, is checked (never rebuilt) before each build.
    torque = ["torque-build"] if first[0].name == "torque-build" else []
    assert [s.name for s in stages] == [*torque, "wheels", "cached"]
    assert all(s.name != "torque-build" or "holds" in s.detail for s in stages), stages
    packages = dict(line.split("\t") for line in built.packages.read_text().splitlines())
    for name in ("systemd", "cloud-init", "python3", "nginx", "mariadb-server",
                 "ruby-webrick", "linux-image-cloud-amd64"):
        assert packages.get(name), name


def test_the_cache_reads_the_base_of_an_overlay_qemu_img_made(tmp_path: Path, have) -> None:
    """`store.backing_file`, which keeps an overlay's base image from pruning, reads what
    qemu-img writes, absolute or relative."""
    have("qemu-img")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    assert backing_file(base) is None
    for name, backing in (("abs.qcow2", str(base)), ("rel.qcow2", base.name)):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing,
                        str(tmp_path / name)], check=True)
        assert backing_file(tmp_path / name) == base
