"""What a domain may reach on its host: every hostile element refused with one sentence, and
the project's own templates (examples and the lab's test guests) accepted as rendered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.vmctl.confine import Folders, inside, problem
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

REPO = Path(__file__).resolve().parents[2]
IMAGES = "/var/lib/cloudd/images"
GUEST = "/var/tmp/cloudd-e2e-guest"
FOLDERS = Folders(images=(IMAGES,), logs=("/var/log/libvirt/qemu",))
LAB = Folders(images=(IMAGES, GUEST), logs=("/var/log/libvirt/qemu",), host_root_share=True)
META = CloudMeta(cloud="shop", node="web-1", role="server", term=3)


def domain(devices: str = "", *, os: str = "<type>hvm</type>", extra: str = "") -> str:
    return (f"<domain type='qemu'><name>shop-web-1</name><memory>65536</memory>"
            f"<metadata><cloudd:domain xmlns:cloudd='https://cloudd.example/xmlns/domain/1' "
            f"cloud='shop' node='web-1' role='server' term='3'/></metadata>"
            f"<os>{os}</os>{extra}<devices>"
            f"<emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>")


def disk(source: str, kind: str = "file") -> str:
    attr = "file" if kind == "file" else "dev"
    return (f"<disk type='{kind}' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source {attr}='{source}'/><target dev='vda' bus='virtio'/></disk>")


def share(source: str) -> str:
    return ("<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
            "<binary path='/usr/lib/qemu/virtiofsd'/>"
            f"<source dir='{source}'/><target dir='hostroot'/></filesystem>")


def serial(path: str, kind: str = "file") -> str:
    return f"<serial type='{kind}'><source path='{path}'/><target port='0'/></serial>"


ACCEPTED = [
    domain(disk(f"{IMAGES}/web1.qcow2")),
    domain(disk(f"{IMAGES}/seeds/web1.iso")),
    domain(serial("/var/log/libvirt/qemu/shop-web-1.serial.log")
           + "<console type='pty'><target type='serial' port='0'/></console>"),
    domain("<interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>"
           "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"),
    domain(os=f"<type>hvm</type><kernel>{IMAGES}/vmlinuz</kernel>"
              f"<initrd>{IMAGES}/initrd.gz</initrd><cmdline>cloudd.pki=/etc/cloudd</cmdline>"),
    domain(os="<type>hvm</type><loader type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
              "<nvram>/var/lib/libvirt/qemu/nvram/shop-web-1.fd</nvram>"),
    domain(share(f"{IMAGES}/shared")),
    domain("<watchdog model='i6300esb' action='reset'/><panic model='isa'/>"),
    domain("<watchdog model='itco'/>"),
]


@pytest.mark.parametrize("xml", ACCEPTED)
def test_what_a_domain_may_have(xml: str) -> None:
    assert problem(xml, FOLDERS) is None


REFUSED = [
    (domain(disk("/dev/sda", "block")),
     "a disk of type block is not allowed (only image files inside the image folders)"),
    (domain(disk("/etc/shadow")),
     "<source file> '/etc/shadow' is outside this host's image folders "
     "(/var/lib/cloudd/images)"),
    (domain(disk(f"{IMAGES}/../../../etc/shadow")),
     "<source file> '/var/lib/cloudd/images/../../../etc/shadow' is outside this host's image "
     "folders (/var/lib/cloudd/images)"),
    (domain(disk(f"{IMAGES}-evil/x.qcow2")),
     "<source file> '/var/lib/cloudd/images-evil/x.qcow2' is outside this host's image "
     "folders (/var/lib/cloudd/images)"),
    (domain(share("/")),
     "a shared folder of the host's / is allowed only with the lab-only setting "
     "libvirt.lab_allow_host_root_share"),
    (domain(share("/root")),
     "<source dir> '/root' is outside this host's image folders (/var/lib/cloudd/images)"),
    (domain("<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' "
            "slot='0' function='0'/></source></hostdev>"),
     "device <hostdev> is not allowed (it hands the guest a part of the host)"),
    (domain("<tpm model='tpm-tis'><backend type='passthrough'>"
            "<device path='/dev/tpm0'/></backend></tpm>"),
     "device <tpm> is not allowed (it hands the guest a part of the host)"),
    (domain(extra="<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                  "<qemu:arg value='-drive'/></qemu:commandline>"),
     "<qemu:commandline> is not allowed (it reaches past libvirt's own checks)"),
    (domain(serial("/etc/cron.d/evil")),
     "<source path> '/etc/cron.d/evil' is outside this host's log folders "
     "(/var/log/libvirt/qemu)"),
    (domain("<console type='file'><source path='/var/log/libvirt/qemu/x.log'/>"
            "<log file='/etc/motd'/></console>"),
     "<log file> '/etc/motd' is outside this host's log folders (/var/log/libvirt/qemu)"),
    (domain(serial("/dev/ttyS0", "dev")),
     "a <serial> of type dev is not allowed (only file, null, pty, vc)"),
    (domain("<channel type='unix'><source mode='bind' path='/run/evil.sock'/></channel>"),
     "a <channel> of type unix is not allowed (only file, null, pty, vc)"),
    (domain("<interface type='ethernet'><script path='/tmp/x.sh'/></interface>"),
     "an interface of type ethernet is not allowed (only bridge, direct, network, user)"),
    (domain("<interface type='bridge'><source bridge='br0'/><script path='/tmp/x.sh'/>"
            "</interface>"),
     "<script> is not allowed (libvirt would run it on the host as root)"),
    (domain(os=f"<type>hvm</type><kernel>{IMAGES}/vmlinuz</kernel>"
               "<initrd>/etc/ssh/ssh_host_ed25519_key</initrd>"),
     "<initrd> '/etc/ssh/ssh_host_ed25519_key' is outside this host's image folders "
     "(/var/lib/cloudd/images)"),
    (domain("<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>"),
     "<backend> '/etc/shadow' is outside the host's random sources "
     "(/dev/hwrng, /dev/random, /dev/urandom)"),
    (domain("<rng model='virtio'><backend model='egd' type='tcp'/></rng>"),
     "an <rng> backend of model 'egd' is not allowed (only random)"),
    (domain().replace("/usr/bin/qemu-system-x86_64", "/bin/sh"),
     "<emulator> '/bin/sh' is outside the known QEMU binaries (/usr/bin/qemu-system-*, "
     "/usr/bin/kvm, /usr/bin/qemu-kvm, /usr/libexec/qemu-kvm)"),
    (domain().replace("qemu-system-x86_64", "qemu-system-../../../tmp/x"),
     "<emulator> '/usr/bin/qemu-system-../../../tmp/x' is outside the known QEMU binaries "
     "(/usr/bin/qemu-system-*, /usr/bin/kvm, /usr/bin/qemu-kvm, /usr/libexec/qemu-kvm)"),
    (domain(share(f"{IMAGES}/shared").replace("/usr/lib/qemu/virtiofsd", "/tmp/virtiofsd")),
     "<binary path> '/tmp/virtiofsd' is outside the known virtiofsd binaries "
     "(/usr/bin/virtiofsd, /usr/lib/qemu/virtiofsd, /usr/libexec/virtiofsd)"),
    (domain(extra="<seclabel type='none'/>"),
     "<seclabel type='none'> is not allowed (QEMU would run unconfined)"),
    (domain(os="<type>hvm</type><nvram template='/etc/shadow'>"
               "/var/lib/libvirt/qemu/nvram/x.fd</nvram>"),
     "<nvram template> '/etc/shadow' is outside the firmware and image folders "
     "(/usr/share/OVMF, /usr/share/ovmf, /usr/share/qemu, /usr/share/seabios, "
     "/usr/share/edk2, /var/lib/cloudd/images)"),
    (domain("<graphics type='vnc' socket='/run/evil.sock'/>"),
     "<graphics socket> '/run/evil.sock' is outside this host's image folders "
     "(/var/lib/cloudd/images)"),
    ("<domain><name>x</name>", "the domain XML does not parse: no element found: "
                               "line 1, column 22"),
    ("<network/>", "the document is a <network>, not a <domain>"),
    (domain("<watchdog model='i6300esb' action='dump'/>"),
     "a <watchdog> action 'dump' is not allowed (only inject-nmi, none, pause, poweroff, "
     "reset, shutdown)"),
]


@pytest.mark.parametrize(("xml", "why"), REFUSED)
def test_what_a_domain_may_not_have(xml: str, why: str) -> None:
    assert problem(xml, FOLDERS) == why


def test_the_host_root_share_is_a_lab_setting() -> None:
    assert problem(domain(share("/")), LAB) is None
    # ...for `/` only: the setting is no licence for any other folder
    assert problem(domain(share("/etc")), LAB) is not None


@pytest.mark.parametrize(("path", "roots", "ok"), [
    ("/a/b", ("/a",), True),
    ("/a", ("/a",), True),
    ("/a/", ("/a/",), True),
    ("/ab", ("/a",), False),
    ("/a/../etc", ("/a",), False),
    ("a/b", ("a",), False),
    ("/a/b\0", ("/a",), False),
    ("/a//b", ("/a",), True),
    ("/x", (), False),
])
def test_inside(path: str, roots: tuple[str, ...], ok: bool) -> None:
    assert inside(path, roots) is ok


def render(template: Path, extra: dict[str, str]) -> str:
    return render_domain(template.read_text(), NodeDomain(
        meta=META, memory_mib=128, vcpus=1, image=f"{IMAGES}/shop-web-1.qcow2",
        cmdline="cloudd.cloud=shop cloudd.node=web-1", extra=extra))


@pytest.mark.parametrize("template", sorted((REPO / "manifests" / "templates").glob("*.xml")),
                         ids=lambda p: p.name)
def test_the_example_templates_pass(template: Path) -> None:
    """The shipped templates boot a node image from the image folders, share nothing."""
    cache = "/var/cache/cloudd/images"
    xml = render(template, {
        "kernel": f"{cache}/node-web-0123.vmlinuz", "initrd": f"{cache}/node-web-0123.initrd",
        "bridge": "br0", "seed": f"{IMAGES}/shop-web-1.seed.iso",
        "serial_log": "/var/log/libvirt/qemu/shop-web-1.serial.log"})
    assert problem(xml, replace(FOLDERS, images=(IMAGES, cache))) is None
    assert "<watchdog model='i6300esb' action='reset'/>" in xml  # a guest may arm it
    assert problem(xml, FOLDERS) == (
        f"<kernel> '{cache}/node-web-0123.vmlinuz' is outside this host's image folders "
        f"({IMAGES})")


@pytest.mark.parametrize("name", ["testguest.xml", "testguest-agent.xml"])
def test_the_lab_test_guests_pass_only_on_a_lab_host(name: str) -> None:
    xml = render(REPO / "lab" / "cloudd_lab" / "templates" / name, {
        "kernel": f"{GUEST}/vmlinuz-0123", "initrd": f"{GUEST}/guest-0123.cpio.gz",
        "bridge": "labbr", "agent_cmd64": "ZXhlYyB0cnVl",
        "serial_log": "/var/log/libvirt/qemu/shop-web-1.serial.log"})
    assert problem(xml, LAB) is None
    assert problem(xml, replace(LAB, host_root_share=False)) == (
        "a shared folder of the host's / is allowed only with the lab-only setting "
        "libvirt.lab_allow_host_root_share")
