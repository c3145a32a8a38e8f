"""Host commands checked against the cloud in force: a DEFINE only of the XML the host renders
itself, within its folders; OVERLAY and FETCH only of the manifest's images and pool hosts;
REMOVE_IMAGE never of a base image, nor of a node's disk while the cloud runs;
MIGRATE only to another pool host sharing the storage, at the manifest's URI and address;
a command of a generation the host has not taken yet refused for now, not for good."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.config.intent import Ensure
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud, Migration
from cloudd.daemon.host import admission
from cloudd.daemon.host.admission import AdmissionRefusal, Grounds, refusal
from cloudd.daemon.host.duties import RETRY_AFTER
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.backend import FakeBackend
from cloudd.vmctl.confine import Folders
from cloudd.vmctl.domains import DomainRenderer
from cloudd.vmctl.hostagent import MANIFEST_CHECKED, CommandOutcome, HostCommand, Op

from .conftest import IMAGES, TEMPLATE, HostRig, write_cloud

SERVER = "shop-server-1"
DOMAIN = f"shop-{SERVER}"
NOT_MINE = f"the domain XML of {DOMAIN} is not this host's rendering of node {SERVER} in term 3"

Edit = Callable[[str], str]


def devices(extra: str) -> Edit:
    return lambda xml: xml.replace("</devices>", f"{extra}</devices>")


#: Hostile edits, each applicable to the template and to a rendered domain alike, with what
#: the host says when the operator's template itself asks for it.
HOSTILE: dict[str, tuple[Edit, str]] = {
    "block disk": (
        lambda xml: re.sub(r"<disk type='file' device='disk'><source file='[^']*'/>",
                           "<disk type='block' device='disk'><source dev='/dev/sda'/>", xml),
        "a disk of type block is not allowed (only image files inside the image folders)"),
    "disk outside the image folders": (
        lambda xml: re.sub(r"<source file='[^']*'/>", "<source file='/etc/shadow'/>", xml),
        "<source file> '/etc/shadow' is outside this host's image folders "
        f"({IMAGES})"),
    "passthrough share of /": (
        devices("<filesystem type='mount' accessmode='passthrough'>"
                "<source dir='/'/><target dir='root'/></filesystem>"),
        "a shared folder of the host's / is allowed only with the lab-only setting "
        "libvirt.lab_allow_host_root_share"),
    "hostdev": (
        devices("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/>"
                "<product id='0x2'/></source></hostdev>"),
        "device <hostdev> is not allowed (it hands the guest a part of the host)"),
    "qemu commandline": (
        lambda xml: xml.replace(
            "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/"
                         "qemu/1.0'><qemu:arg value='-s'/></qemu:commandline></domain>"),
        "<qemu:commandline> is not allowed (it reaches past libvirt's own checks)"),
    "console log to /etc": (
        lambda xml: re.sub(r"<source path='[^']*'/>", "<source path='/etc/cron.d/x'/>", xml),
        "<source path> '/etc/cron.d/x' is outside this host's log folders "
        "(/var/log/libvirt/qemu)"),
}


@pytest.mark.parametrize("edit", [e for e, _ in HOSTILE.values()], ids=list(HOSTILE))
async def test_a_forged_define_is_refused_and_nothing_is_defined(rig: HostRig,
                                                                 edit: Edit) -> None:
    good = rig.duties.renderer.render(rig.cloud[0], SERVER, 3)
    forged = edit(good)
    assert forged != good
    result = await rig.duties.execute("pm2", HostCommand(
        Op.DEFINE, 3, DOMAIN, forged, generation=rig.duties.renderer.generation(rig.cloud[0])))
    assert (result.outcome, result.message, result.retry_after) == (
        CommandOutcome.FAILED, NOT_MINE, None)
    assert isinstance(rig.backend, FakeBackend)
    assert rig.backend.domains == {} and rig.backend.calls == []


@pytest.mark.parametrize("forge", [
    # another cloud's metadata on this cloud's domain name
    lambda xml: xml.replace('cloud="shop"', 'cloud="other"'),
    # a term the command does not carry
    lambda xml: xml.replace('term="3"', 'term="2"'),
    # more memory than the manifest gives the node
    lambda xml: re.sub(r"<memory unit='KiB'>\d+</memory>", "<memory unit='KiB'>99999999"
                                                            "</memory>", xml),
    # another node's identity on the kernel command line
    lambda xml: xml.replace("cloudd.node=shop-server-1", "cloudd.node=shop-database-1"),
], ids=["metadata of another cloud", "another term", "memory", "identity"])
async def test_any_xml_but_the_hosts_own_rendering_is_refused(rig: HostRig,
                                                              forge: Edit) -> None:
    good = rig.duties.renderer.render(rig.cloud[0], SERVER, 3)
    assert forge(good) != good
    result = await rig.duties.execute("pm2", HostCommand(
        Op.DEFINE, 3, DOMAIN, forge(good),
        generation=rig.duties.renderer.generation(rig.cloud[0])))
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, NOT_MINE)
    assert isinstance(rig.backend, FakeBackend) and rig.backend.domains == {}


@pytest.mark.parametrize(("edit", "why"), list(HOSTILE.values()), ids=list(HOSTILE))
async def test_a_template_that_asks_too_much_is_refused_as_rendered(
        tmp_path: Path, rig: HostRig, edit: Edit, why: str) -> None:
    # the operator's own template asks for it: leader and host render the same text, and
    # the host still refuses it
    cloud = write_cloud(tmp_path / "hostile", manifest=(tmp_path / "manifests" / "shop.yaml")
                        .read_text())
    cloud.domain_template.write_text(edit(TEMPLATE.replace("${kind}", "qemu")))
    cloud = load_cloud(cloud.source, CATALOG)  # the loader reads the template's text
    rig.cloud[0] = cloud
    leader = DomainRenderer(port=rig.duties.renderer.port, pki_dir=rig.duties.renderer.pki_dir)
    xml = leader.render(cloud, SERVER, 3)
    result = await rig.duties.execute("pm2", HostCommand(
        Op.DEFINE, 3, DOMAIN, xml, generation=leader.generation(cloud)))
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, f"domain {DOMAIN}: {why}")
    assert isinstance(rig.backend, FakeBackend) and rig.backend.domains == {}


async def test_a_define_of_a_newer_generation_waits_for_it(tmp_path: Path,
                                                           rig: HostRig) -> None:
    # the leader has a generation that gives the server more memory; this host not yet
    text = (tmp_path / "manifests" / "shop.yaml").read_text()
    newer = write_cloud(tmp_path / "newer", manifest=text.replace(
        "settings: {app_port: 8080}", "resources: {memory_mib: 1024}\nsettings: {app_port: 8080}"))
    leader = DomainRenderer(port=rig.duties.renderer.port, pki_dir=rig.duties.renderer.pki_dir)
    command = HostCommand(Op.DEFINE, 3, DOMAIN, leader.render(newer, SERVER, 3),
                          generation=leader.generation(newer))
    result = await rig.duties.execute("pm2", command)
    mine = rig.duties.renderer.generation(rig.cloud[0])
    assert (result.outcome, result.retry_after) == (CommandOutcome.FAILED, RETRY_AFTER)
    assert result.message == (f"manifest generation {command.generation[:12]} is not in force "
                              f"here yet (this host has {mine[:12]}): {NOT_MINE}")
    # the generation arrives: the same command is obeyed
    rig.cloud[0] = newer
    assert (await rig.duties.execute("pm2", command)).outcome is CommandOutcome.DONE


@pytest.mark.parametrize(("domain", "why"), [
    ("shop-ghost", "domain 'shop-ghost' is no node's of cloud shop"),
    ("other-shop-server-1", "domain 'other-shop-server-1' is no node's of cloud shop"),
])
async def test_a_define_names_a_node_of_this_cloud(rig: HostRig, domain: str,
                                                   why: str) -> None:
    xml = rig.duties.renderer.render(rig.cloud[0], SERVER, 3)
    result = await rig.duties.execute("pm2", HostCommand(
        Op.DEFINE, 3, domain, xml, generation=rig.duties.renderer.generation(rig.cloud[0])))
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, why)


async def test_overlay_and_fetch_outside_the_manifest_are_refused(rig: HostRig) -> None:
    generation = rig.duties.renderer.generation(rig.cloud[0])
    cases = [
        (HostCommand(Op.OVERLAY, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2", base="/etc/shadow",
                     generation=generation),
         f"overlay {IMAGES}/web1.qcow2 on /etc/shadow is not the image and base image of a "
         f"managed node's domain '{DOMAIN}' in the manifest of cloud shop"),
        (HostCommand(Op.REMOVE_IMAGE, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2",
                     generation=generation),
         f"image {IMAGES}/web1.qcow2 is node {SERVER}'s disk in the manifest of cloud shop"),
        (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/web.qcow2", source="203.0.113.9",
                     generation=generation),
         "fetch source '203.0.113.9' is no pool host's address in the manifest of cloud shop"),
        (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/secret.qcow2", source="192.0.2.71",
                     generation=generation),
         f"image {IMAGES}/secret.qcow2 is none of the images in the manifest of cloud shop"),
    ]
    for command, why in cases:
        result = await rig.duties.execute("pm2", command)
        assert (result.outcome, result.message, result.retry_after) == (
            CommandOutcome.FAILED, why, None)
    agent = rig.duties.agent
    assert agent is not None and agent._copies == {}


@pytest.mark.parametrize("image", ["/etc/shadow", f"{IMAGES}/../../../../etc/shadow"])
async def test_a_removal_outside_the_image_folders_is_refused(rig: HostRig, image: str) -> None:
    result = await rig.duties.execute("pm2", HostCommand(
        Op.REMOVE_IMAGE, 3, "shop-shop-server-9", image=image,
        generation=rig.duties.renderer.generation(rig.cloud[0])))
    assert (result.outcome, result.message, result.retry_after) == (
        CommandOutcome.FAILED,
        f"remove {image} is outside this host's image folders ({IMAGES})", None)


def grounds(cloud: Cloud, *, images: tuple[str, ...] = (IMAGES,)) -> Grounds:
    renderer = DomainRenderer(port=7760, pki_dir="/etc/cloudd/pki")
    return Grounds(cloud=cloud, generation="g1", render=renderer.render,
                   folders=Folders(images=images, logs=("/var/log/libvirt/qemu",)))


@pytest.mark.parametrize(("command", "images", "expected"), [
    (HostCommand(Op.OVERLAY, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2",
                 base=f"{IMAGES}/web.qcow2", generation="g1"), (IMAGES,), None),
    # the manifest's base, but this host keeps its images elsewhere
    (HostCommand(Op.OVERLAY, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2",
                 base=f"{IMAGES}/web.qcow2", generation="g1"), ("/srv/images",),
     AdmissionRefusal(f"base image {IMAGES}/web.qcow2 is outside this host's image folders "
             "(/srv/images)")),
    # a node's image as another node's base
    (HostCommand(Op.OVERLAY, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2",
                 base=f"{IMAGES}/db.qcow2", generation="g1"), (IMAGES,),
     AdmissionRefusal(f"overlay {IMAGES}/web1.qcow2 on {IMAGES}/db.qcow2 is not the image "
                      f"and base image of a managed node's domain '{DOMAIN}' in the manifest "
                      "of cloud shop")),
    # the right image and base, recorded as another node's disk
    (HostCommand(Op.OVERLAY, 3, "shop-shop-database-1", image=f"{IMAGES}/web1.qcow2",
                 base=f"{IMAGES}/web.qcow2", generation="g1"), (IMAGES,),
     AdmissionRefusal(f"overlay {IMAGES}/web1.qcow2 on {IMAGES}/web.qcow2 is not the image "
                      "and base image of a managed node's domain 'shop-shop-database-1' in "
                      "the manifest of cloud shop")),
    # ...or as no node's at all
    (HostCommand(Op.OVERLAY, 3, image=f"{IMAGES}/web1.qcow2", base=f"{IMAGES}/web.qcow2",
                 generation="g1"), (IMAGES,),
     AdmissionRefusal(f"overlay {IMAGES}/web1.qcow2 on {IMAGES}/web.qcow2 is not the image "
                      "and base image of a managed node's domain '' in the manifest of cloud "
                      "shop")),
    # an overlay no node of the manifest names any more
    (HostCommand(Op.REMOVE_IMAGE, 3, "shop-shop-server-9", image=f"{IMAGES}/web9.qcow2",
                 generation="g1"), (IMAGES,), None),
    # a node's disk while the cloud runs, a base image (a file outside the image folders:
    # HostAgent's own check, test_a_removal_outside_the_image_folders_is_refused)
    (HostCommand(Op.REMOVE_IMAGE, 3, "shop-shop-database-1", image=f"{IMAGES}/db.qcow2",
                 generation="g1"), (IMAGES,),
     AdmissionRefusal(f"image {IMAGES}/db.qcow2 is node shop-database-1's disk in the "
                      "manifest of cloud shop")),
    (HostCommand(Op.REMOVE_IMAGE, 3, DOMAIN, image=f"{IMAGES}/web.qcow2", generation="g1"),
     (IMAGES,),
     AdmissionRefusal(f"image {IMAGES}/web.qcow2 is a base image in the manifest of cloud "
                      "shop")),
    # a refusal of another generation: for now (that generation may have dropped the node)
    (HostCommand(Op.REMOVE_IMAGE, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2", generation="g2"),
     (IMAGES,),
     AdmissionRefusal("manifest generation g2 is not in force here yet (this host has g1): "
                      f"image {IMAGES}/web1.qcow2 is node {SERVER}'s disk in the manifest of "
                      "cloud shop", temporary=True)),
    (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/web.qcow2", source="192.0.2.71",
                 generation="g1"), (IMAGES,), None),
    (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/db.qcow2", source="192.0.2.70",
                 generation="g1"), (IMAGES,), None),
    # a pool host's name is not its address
    (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/db.qcow2", source="pm2", generation="g1"),
     (IMAGES,),
     AdmissionRefusal("fetch source 'pm2' is no pool host's address in the manifest of "
                      "cloud shop")),
    # a failed check of another generation: for now
    (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/new.qcow2", source="192.0.2.71",
                 generation="g2"), (IMAGES,),
     AdmissionRefusal("manifest generation g2 is not in force here yet (this host has g1): "
             f"image {IMAGES}/new.qcow2 is none of the images in the manifest of cloud shop",
             temporary=True)),
    # ...and a command without a generation at all
    (HostCommand(Op.FETCH, 3, image=f"{IMAGES}/new.qcow2", source="192.0.2.71"), (IMAGES,),
     AdmissionRefusal("manifest generation (none) is not in force here yet (this host has g1): "
             f"image {IMAGES}/new.qcow2 is none of the images in the manifest of cloud shop",
             temporary=True)),
    # commands that name no host resource are not checked here (HostAgent checks ownership)
    (HostCommand(Op.START, 3, DOMAIN), (IMAGES,), None),
    (HostCommand(Op.RESET, 3, DOMAIN), (IMAGES,), None),
    (HostCommand(Op.LIST, 3), (IMAGES,), None),
])
def test_refusal(cloud: Cloud, command: HostCommand, images: tuple[str, ...],
                 expected: AdmissionRefusal | None) -> None:
    assert refusal(command, grounds(cloud, images=images)) == expected


def test_a_node_that_is_not_managed_gets_no_domain(cloud: Cloud) -> None:
    unmanaged = replace(cloud, nodes=tuple(replace(n, managed=False) for n in cloud.nodes))
    command = HostCommand(Op.DEFINE, 3, DOMAIN, "<domain/>", generation="g1")
    assert refusal(command, grounds(unmanaged)) == AdmissionRefusal(
        f"node {SERVER} of cloud shop is not managed: cloudd defines no domain")


def test_a_host_without_the_template_refuses(cloud: Cloud) -> None:
    gone = replace(cloud, template_text=None)
    command = HostCommand(Op.DEFINE, 3, DOMAIN, "<domain/>", generation="g1")
    assert refusal(command, grounds(gone)) == AdmissionRefusal(
        f"this host cannot render node {SERVER}: this agent holds no domain template for "
        "cloud shop")


def test_a_stopped_cloud_gives_up_its_managed_nodes_disks_only(cloud: Cloud) -> None:
    stopped = replace(cloud, ensure=Ensure.STOPPED, nodes=tuple(
        replace(n, managed=n.name != "shop-database-1") for n in cloud.nodes))
    command = HostCommand(Op.REMOVE_IMAGE, 3, DOMAIN, image=f"{IMAGES}/web1.qcow2",
                          generation="g1")
    assert refusal(command, grounds(stopped)) is None
    # an unmanaged node's VM is not cloudd's: its disk stays, stopped or not
    theirs = replace(command, domain="shop-shop-database-1", image=f"{IMAGES}/db.qcow2")
    assert refusal(theirs, grounds(stopped)) == AdmissionRefusal(
        f"image {IMAGES}/db.qcow2 is node shop-database-1's disk in the manifest of cloud shop")
    # and a base image never goes
    base = replace(command, image=f"{IMAGES}/web.qcow2")
    assert refusal(base, grounds(stopped)) == AdmissionRefusal(
        f"image {IMAGES}/web.qcow2 is a base image in the manifest of cloud shop")


def test_the_ops_checked_here_are_those_the_leader_stamps_a_generation_on() -> None:
    assert frozenset(admission._CHECKS) == MANIFEST_CHECKED


# ---- MIGRATE: only to another pool host of the same storage, at its manifest's URI --------

SAN = "qemu+tls://pm2.example/system"


def migrating(cloud: Cloud, **pm1: object) -> Cloud:
    """`cloud` with pm1 and pm2 sharing storage `san` (pm1's part changed by `pm1`)."""
    here = replace(Migration("qemu+tls://pm1.example/system", "san", "192.0.2.70"),
                   **pm1)  # type: ignore[arg-type]
    there = Migration(SAN, "san", "192.0.2.71")
    return replace(cloud, pool=(replace(cloud.pool[0], migration=here),
                                replace(cloud.pool[1], migration=there)))


def move(domain: str = DOMAIN, target: str = "pm2", uri: str = SAN,
         address: str = "192.0.2.71") -> HostCommand:
    return HostCommand(Op.MIGRATE, 3, domain, target=target, target_uri=uri,
                       target_address=address, generation="g1")


@pytest.mark.parametrize(("command", "edit", "expected"), [
    (move(), {}, None),
    (move(domain="shop-shop-server-9"), {},
     "domain 'shop-shop-server-9' is no managed node's of cloud shop"),
    (move(target="pm1"), {}, "migrate target 'pm1' is no other pool host of cloud shop"),
    (move(target="pm7"), {}, "migrate target 'pm7' is no other pool host of cloud shop"),
    (move(), {"storage": "nas"},
     "hosts pm1 and pm2 share no storage for live migration in the manifest of cloud shop"),
    # a URI or an address the manifest does not give for pm2: the leader's word is not enough
    (move(uri="qemu+tls://evil.example/system"), {},
     f"host pm2 takes migrations at {SAN} (192.0.2.71) in the manifest of cloud shop, not at "
     "qemu+tls://evil.example/system (192.0.2.71)"),
    (move(address="203.0.113.9"), {},
     f"host pm2 takes migrations at {SAN} (192.0.2.71) in the manifest of cloud shop, not at "
     f"{SAN} (203.0.113.9)"),
    # libvirt's shared-storage check skipped only where the manifest says so for this host
    (HostCommand(Op.MIGRATE, 3, DOMAIN, target="pm2", target_uri=SAN,
                 target_address="192.0.2.71", unsafe=True, generation="g1"), {},
     "moves from pm1 keep libvirt's shared-storage check in the manifest of cloud shop"),
    (HostCommand(Op.MIGRATE, 3, DOMAIN, target="pm2", target_uri=SAN,
                 target_address="192.0.2.71", unsafe=True, generation="g1"), {"unsafe": True},
     None),
], ids=["allowed", "not a node", "itself", "not in the pool", "other storage", "other uri",
        "other address", "unsafe refused", "unsafe allowed"])
def test_a_migration_goes_only_where_the_manifest_says(cloud: Cloud, command: HostCommand,
                                                       edit: dict[str, object],
                                                       expected: str | None) -> None:
    g = replace(grounds(migrating(cloud, **edit)), me="pm1")
    assert refusal(command, g) == (None if expected is None else AdmissionRefusal(expected))


def test_a_migration_in_clear_to_a_host_that_wants_tls_is_refused(cloud: Cloud) -> None:
    g = migrating(cloud)
    there = replace(g.pool[1], migration=replace(g.pool[1].migration, tls=True))  # type: ignore[arg-type]
    g = replace(g, pool=(g.pool[0], there))
    assert refusal(move(), replace(grounds(g), me="pm1")) == AdmissionRefusal(
        "moves to pm2 are encrypted (tls) in the manifest of cloud shop")
    assert refusal(replace(move(), tls=True), replace(grounds(g), me="pm1")) is None


def test_without_migration_settings_no_migration_is_admitted(cloud: Cloud) -> None:
    assert refusal(move(), replace(grounds(cloud), me="pm1")) == AdmissionRefusal(
        "hosts pm1 and pm2 share no storage for live migration in the manifest of cloud shop")
