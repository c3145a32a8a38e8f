"""A pool host makes a node's seed ISO when it defines the node's domain, and removes it when
it undefines it: over the in-memory backend, with a real node issuer and genisoimage."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloudd.config.agent import AgentSettings, Libvirt, PkiSettings
from cloudd.config.model import Cloud, NodeAccess
from cloudd.daemon.host.duties import RETRY_AFTER
from cloudd.pki import ISSUER_KEY, Identity, MemberKind, identity_of_cert, init_ca, issue
from cloudd.vmctl.backend import FakeBackend
from cloudd.vmctl.domains import DomainRenderer
from cloudd.vmctl.hostagent import CommandOutcome, HostCommand, Op
from cloudd.vmctl.identity import ROOT_KEYS
from cloudd.vmctl.template import node_mac

from .conftest import HostRig, make_host, running, shop_manifest, write_cloud

SERVER = "shop-server-1"
DOMAIN = f"shop-{SERVER}"

SEEDED = """<domain type='qemu'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type>hvm</type></os>
  ${metadata}
  <devices>
    <disk type='file' device='disk'><source file='${image}'/><target dev='vda'/></disk>
    <disk type='file' device='cdrom'><source file='${seed}'/><target dev='sda' bus='sata'/>
      <readonly/></disk>
    <interface type='network'><mac address='${mac}'/><source network='default'/></interface>
  </devices>
</domain>
"""


def isoinfo(iso: Path, path: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), "-R", "-x", path], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def seeded_cloud(folder: Path, images: Path, template: str = SEEDED) -> Cloud:
    return write_cloud(folder, manifest=shop_manifest(images), template=template)


class Host:
    def __init__(self, rig: HostRig, images: Path, pki: Path) -> None:
        self.rig, self.images, self.pki = rig, images, pki
        self.seed = images / f"{DOMAIN}.seed.iso"

    async def run(self, op: Op, *, term: int = 3) -> tuple[CommandOutcome, str]:
        xml = (self.rig.duties.renderer.render(self.rig.cloud[0], SERVER, term)
               if op is Op.DEFINE else "")
        result = await self.rig.duties.execute("pm2", HostCommand(
            op, term, DOMAIN, xml, generation=self.rig.duties.renderer.generation(
                self.rig.cloud[0])))
        return result.outcome, result.message


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    images, pki = tmp_path / "images", tmp_path / "pki"
    images.mkdir()
    now = dt.datetime.now(dt.UTC)
    init_ca(pki, now=now)
    issue(pki, "pm1", now=now, kind=MemberKind.HOST)
    settings = AgentSettings(
        name="pm1", libvirt=Libvirt(image_dirs=[images]),
        pki=PkiSettings(ca=pki / "ca.crt", cert=pki / "pm1.crt", key=pki / "pm1.key"))
    rig = make_host(tmp_path, seeded_cloud(tmp_path / "manifests", images), settings=settings)
    rig.leases["pm2"] = 3
    async with running(rig.duties):
        yield Host(rig, images, pki)


async def test_define_makes_the_nodes_seed_and_undefine_removes_it(host: Host) -> None:
    assert await host.run(Op.DEFINE) == (CommandOutcome.DONE, "")
    assert isinstance(host.rig.backend, FakeBackend)
    assert f'<source file="{host.seed}" />' in host.rig.backend.domains[DOMAIN].xml
    assert stat.S_IMODE(host.seed.stat().st_mode) == 0o600
    assert sorted(p.name for p in host.images.iterdir()) == [host.seed.name]  # nothing else

    user = json.loads(isoinfo(host.seed, "/user-data").removeprefix("#cloud-config\n"))
    files = {f["path"]: f["content"] for f in user["write_files"]}
    assert json.loads(files["/etc/cloudd/identity.json"]) == {
        "cloud": "shop", "node": SERVER, "role": "server", "address": "192.0.2.176/24",
        "gateway": "192.0.2.1", "members": ["pm1@192.0.2.70:7760", "pm2@192.0.2.71:7760"],
        "term": 3}
    assert files["/etc/cloudd/pki/ca.crt"] == (host.pki / "ca.crt").read_text()
    leaf, issuer = x509.load_pem_x509_certificates(
        files[f"/etc/cloudd/pki/{SERVER}.crt"].encode())
    issuer.verify_directly_issued_by(x509.load_pem_x509_certificate(
        (host.pki / "ca.crt").read_bytes()))
    leaf.verify_directly_issued_by(issuer)
    assert identity_of_cert(leaf) == Identity(SERVER, MemberKind.NODE, "shop")
    key = serialization.load_pem_private_key(
        files[f"/etc/cloudd/pki/{SERVER}.key"].encode(), password=None)
    assert key.public_key() == leaf.public_key()
    network = json.loads(isoinfo(host.seed, "/network-config"))
    assert network["ethernets"]["eth0"]["match"]["macaddress"] == node_mac("shop", SERVER)

    assert await host.run(Op.UNDEFINE) == (CommandOutcome.DONE, "")
    assert not host.seed.exists()
    assert await host.run(Op.UNDEFINE) == (CommandOutcome.NOOP, "")


async def test_every_define_gives_the_node_a_fresh_key(host: Host) -> None:
    assert (await host.run(Op.DEFINE))[0] is CommandOutcome.DONE
    first = host.seed.read_bytes()
    first_instance = json.loads(isoinfo(host.seed, "/meta-data"))["instance-id"]
    host.rig.leases["pm2"] = 4
    assert (await host.run(Op.DEFINE, term=4))[0] is not CommandOutcome.FAILED
    assert host.seed.read_bytes() != first
    instance = json.loads(isoinfo(host.seed, "/meta-data"))["instance-id"]
    assert instance.startswith(f"{DOMAIN}-t4-")
    assert first_instance.startswith(f"{DOMAIN}-t3-")  # each a new instance to cloud-init


async def test_a_seed_left_by_a_crash_goes_with_the_undefine_of_a_gone_domain(
        host: Host) -> None:
    host.seed.write_bytes(b"left over")
    assert await host.run(Op.UNDEFINE) == (CommandOutcome.NOOP, "")
    assert not host.seed.exists()


async def test_without_the_node_issuer_the_domain_is_not_defined(host: Host) -> None:
    (host.pki / ISSUER_KEY).unlink()
    outcome, message = await host.run(Op.DEFINE)
    assert outcome is CommandOutcome.FAILED
    assert message.startswith(f"no node issuer in {host.pki} (nodes-ca.crt, nodes-ca.key)")
    assert isinstance(host.rig.backend, FakeBackend) and host.rig.backend.domains == {}
    assert list(host.images.iterdir()) == []


async def test_a_refused_define_makes_no_seed(host: Host) -> None:
    host.rig.leases.clear()
    outcome, message = await host.run(Op.DEFINE)
    assert (outcome, message) == (CommandOutcome.FAILED,
                                  "pm2 holds no unexpired lease of pm1 for term 3")
    assert list(host.images.iterdir()) == []


async def test_another_hosts_domain_keeps_its_seed(host: Host) -> None:
    """Hosts sharing one libvirtd and one disk (the lab): pm1 neither remakes nor removes the
    seed of a domain of that name that pm2 defined."""
    assert isinstance(host.rig.backend, FakeBackend)
    theirs = host.rig.duties.renderer.render(host.rig.cloud[0], SERVER, 3).replace(
        "term=\"3\"", "term=\"3\" host=\"pm2\"")
    assert 'host="pm2"' in theirs
    await host.rig.backend.define(theirs)
    host.seed.write_bytes(b"pm2's seed")
    for op in (Op.DEFINE, Op.UNDEFINE):
        outcome, message = await host.run(op)
        assert outcome is CommandOutcome.FAILED
        assert message.endswith("belongs to host pm2, not pm1; not touching it")
    assert host.seed.read_bytes() == b"pm2's seed"


async def test_a_template_without_a_seed_gets_none(tmp_path: Path, host: Host) -> None:
    plain = SEEDED.replace("<disk type='file' device='cdrom'><source file='${seed}'/>"
                           "<target dev='sda' bus='sata'/>\n      <readonly/></disk>", "")
    assert "${seed}" not in plain
    host.rig.cloud[0] = seeded_cloud(tmp_path / "plain", host.images, plain)
    assert await host.run(Op.DEFINE) == (CommandOutcome.DONE, "")
    assert list(host.images.iterdir()) == []


KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrN4+XKFE7kFXRy1xJfg7A4ljxE+jpxHT2D8l0ofTXx "
       "alice@ops")


async def test_a_seed_is_made_only_from_the_leaders_own_generation(host: Host) -> None:
    """The seed holds what the domain XML does not (root's keys, the time servers): a host
    that has not taken the leader's generation yet makes no seed, and says so for now."""
    theirs = replace(host.rig.cloud[0], node_access=NodeAccess((KEY,)))
    leader = DomainRenderer(port=host.rig.duties.renderer.port,
                            pki_dir=host.rig.duties.renderer.pki_dir,
                            seed_dir=host.rig.duties.renderer.seed_dir)
    xml = leader.render(theirs, SERVER, 3)
    assert xml == host.rig.duties.renderer.render(host.rig.cloud[0], SERVER, 3)
    command = HostCommand(Op.DEFINE, 3, DOMAIN, xml, generation=leader.generation(theirs))
    result = await host.rig.duties.execute("pm2", command)
    mine = host.rig.duties.renderer.generation(host.rig.cloud[0])
    assert (result.outcome, result.retry_after) == (CommandOutcome.FAILED, RETRY_AFTER)
    assert result.message == (
        f"manifest generation {command.generation[:12]} is not in force here yet (this host "
        f"has {mine[:12]}): node {SERVER}'s seed is made from the manifest in force here")
    assert isinstance(host.rig.backend, FakeBackend) and host.rig.backend.domains == {}
    assert list(host.images.iterdir()) == []
    # the generation arrives: the same command is obeyed, and root gets the leader's key
    host.rig.cloud[0] = theirs
    assert (await host.rig.duties.execute("pm2", command)).outcome is CommandOutcome.DONE
    user = json.loads(isoinfo(host.seed, "/user-data").removeprefix("#cloud-config\n"))
    keys = {f["path"]: f["content"] for f in user["write_files"]}[ROOT_KEYS]
    assert keys == f"{KEY}\n"
