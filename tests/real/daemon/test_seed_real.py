"""A node's seed, made by a host on a real libvirtd, read back, and a node agent started from
nothing but what it carries, in network namespaces.

A pool host's agent defines a node's domain on qemu:///system with a template that attaches
the seed (`${seed}`): the host builds the NoCloud ISO in its image folder (0600), with the
node issuer the lab's `pki init` made and `own_pki` copied to the hosts. The test reads the
ISO back with isoinfo (no mount), checks the files and their modes, checks the node's
certificate chains to the root, then writes the files where cloud-init would (with the modes
the seed asks for) and starts `cloudd --from-identity` in the node's namespace: it fetches
the manifest from the lab's host agents and joins over mutual TLS, presenting its certificate
and the node issuer's. A host certificate forged with the same issuer key is refused by a
host agent. Undefining the domain removes the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cloudd_lab.agentlab import CLOUDD, AgentLab, virsh
from cryptography import x509

from cloudd.certs import cert_pem, key_pem, member_cert, new_key
from cloudd.config.agent import DEFAULT_PORT
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.daemon.network.codec import PROTOCOL_VERSION, default_codec
from cloudd.daemon.network.tls import Hello
from cloudd.pki import Identity, MemberKind, NodeIssuer, identity_of_cert
from cloudd.providers.catalog import catalog
from cloudd.vmctl.domains import DomainRenderer
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.libvirt_backend import LibvirtBackend
from cloudd.vmctl.nodeseed import NodeSeeds

SYSTEM = "qemu:///system"
CLOUD = "h12s"
NODE = "lab-server-1"
DOMAIN = f"{CLOUD}-{NODE}"
BOUND = 60.0

SEEDED = """<domain type='qemu'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  ${metadata}
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='${image}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='${seed}'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='user'><mac address='${mac}'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


class SeedLab(AgentLab):
    """The lab's hosts as usual; the node's agent from the files its seed carries alone."""

    node_root: Path | None = None

    def start(self, name: str) -> None:
        if name != NODE:
            return super().start(name)
        agent = self.agents[name]
        assert self.node_root is not None, "no seed extracted yet"
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, CLOUDD, "--from-identity",
             str(self.node_root / "etc/cloudd/identity.json"),
             "--state-dir", str(agent.folder / "node-state")],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True)
        return None


def host_command(lab: SeedLab, cloud: Cloud, images: Path, state: Path, op: Op) -> str:
    """`op` on the node's domain by a host agent with pm1's settings, on qemu:///system."""
    pki = lab.pki_files("pm1")
    renderer = DomainRenderer(port=DEFAULT_PORT, pki_dir=str(pki.ca.parent),
                              seed_dir=str(images))

    async def run() -> str:
        backend = await LibvirtBackend.open(SYSTEM, call_timeout=60)
        try:
            seeds = NodeSeeds(cloud=lambda: cloud, seed_dir=images, pki_dir=pki.ca.parent,
                              ca_file=pki.ca, port=DEFAULT_PORT)
            agent = HostAgent(backend, state_dir=state, host="pm1", cloud=CLOUD,
                              image_dirs=(images,), seeds=seeds)
            xml = renderer.render(cloud, NODE, 1) if op is Op.DEFINE else ""
            result = await agent.execute(HostCommand(op, 1, DOMAIN, xml))
            assert result.outcome in (CommandOutcome.DONE, CommandOutcome.NOOP), result.message
            await agent.close()
            return xml
        finally:
            await backend.close()
    return asyncio.run(run())


def isoinfo(iso: Path, *args: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), "-R", *args], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def as_cloud_init_writes(iso: Path, root: Path) -> dict[str, str]:
    """The seed's write_files, written under `root` as cloud-init would; their modes."""
    user = isoinfo(iso, "-x", "/user-data")
    assert user.startswith("#cloud-config\n")
    modes = {}
    for f in json.loads(user.removeprefix("#cloud-config\n"))["write_files"]:
        path = root / f["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f["content"])
        path.chmod(int(f["permissions"], 8))
        modes[f["path"]] = f["permissions"]
    return modes


def forged_host_refused(lab: SeedLab, tmp: Path) -> None:
    """A host certificate for pm2 signed with the node issuer's key: the TLS handshake with
    pm1 passes (the chain is good), and pm1 refuses the peer at once."""
    issuer = NodeIssuer.load(lab.pki_files("pm1").ca.parent)
    key = new_key()
    cert = member_cert("pm2", uris=["cloudd://member/pm2", "cloudd://kind/host"], ips=[],
                       key=key, now=dt.datetime.now(dt.UTC), days=1,
                       signer=(issuer.cert, issuer.key))
    (tmp / "forged.crt").write_bytes(cert_pem(cert) + cert_pem(issuer.cert))
    (tmp / "forged.key").write_bytes(key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(lab.pki_files("pm1").ca))
    ctx.load_cert_chain(certfile=str(tmp / "forged.crt"), keyfile=str(tmp / "forged.key"))
    since = time.time()
    raw = socket.create_connection((lab.agents["pm1"].ns.ip, DEFAULT_PORT), timeout=BOUND)
    with ctx.wrap_socket(raw) as sock:
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.sendall(default_codec.encode(Hello("pm2", PROTOCOL_VERSION)))
        with contextlib.suppress(OSError, ssl.SSLError):
            assert sock.recv(65536) == b"", "pm1 answered a forged host"
    lab.wait_for("pm1 refuses the forged host", lambda: any(
        e["agent"] == "pm1" and e.get("event") == "peer_refused" and e["at"] >= since
        and "pm2's certificate says kind host but is signed by 'cloudd node issuer'"
        in str(e.get("reason", "")) for e in lab.log_events()), timeout=BOUND)


@pytest.mark.netns
@pytest.mark.libvirt
def test_a_host_builds_the_seed_and_a_node_joins_from_it_alone(tmp_path: Path) -> None:
    images, state = tmp_path / "images", tmp_path / "host-state"
    images.mkdir()
    with SeedLab("h12s", hosts=2, subnet="10.242.12.0/24", cloud_name=CLOUD,
                 agent_nodes=[NODE], own_pki=True,
                 nodes={"database": 1, "server": 1, "balancer": 1}) as lab:
        try:
            # -- the host defines the node's domain: the seed is built beside it -------------
            lab_cloud = load_cloud(lab.agents["pm1"].folder / "manifests" / "lab.yaml",
                                   catalog())
            cloud = replace(lab_cloud, template_text=SEEDED, nodes=tuple(
                replace(n, managed=True, image=str(images / "server.qcow2"))
                if n.name == NODE else n for n in lab_cloud.nodes))
            host_command(lab, cloud, images, state, Op.DEFINE)
            seed = images / f"{DOMAIN}.seed.iso"
            assert seed.stat().st_mode & 0o777 == 0o600
            dumped = virsh(SYSTEM, "dumpxml", DOMAIN)
            assert dumped.returncode == 0, dumped.stderr
            assert f"<source file='{seed}'/>" in dumped.stdout

            # -- read back without mounting: files, modes, identity, chain ------------------
            listing = isoinfo(seed, "-l")
            modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines()
                     if line.startswith("-")}
            assert modes == dict.fromkeys(("meta-data", "network-config", "user-data"),
                                          "-rw-------"), listing
            assert "Volume id: cidata" in subprocess.run(
                ["isoinfo", "-d", "-i", str(seed)], capture_output=True, text=True,
                check=True, timeout=30).stdout
            node_root = tmp_path / "node"
            written = as_cloud_init_writes(seed, node_root)
            assert written == {**dict.fromkeys((
                "/etc/cloudd/identity.json", "/etc/cloudd/pki/ca.crt",
                f"/etc/cloudd/pki/{NODE}.crt", f"/etc/cloudd/pki/{NODE}.key",
                "/root/.ssh/authorized_keys"), "0600"), "/etc/chrony/chrony.conf": "0644"}
            etc = node_root / "etc/cloudd"
            identity = json.loads((etc / "identity.json").read_text())
            address = lab.agents[NODE].ns.ip
            assert (identity["cloud"], identity["node"], identity["address"]) == (
                CLOUD, NODE, f"{address}/24")
            assert identity["members"] == [f"pm{i}@{lab.agents[f'pm{i}'].ns.ip}:{DEFAULT_PORT}"
                                           for i in (1, 2)]
            leaf, issuer = x509.load_pem_x509_certificates((etc / f"pki/{NODE}.crt").read_bytes())
            root = x509.load_pem_x509_certificate((etc / "pki/ca.crt").read_bytes())
            leaf.verify_directly_issued_by(issuer)
            issuer.verify_directly_issued_by(root)
            assert identity_of_cert(leaf) == Identity(NODE, MemberKind.NODE, CLOUD)
            verified = subprocess.run(
                ["openssl", "verify", "-CAfile", str(etc / "pki/ca.crt"), "-untrusted",
                 str(etc / f"pki/{NODE}.crt"), str(etc / f"pki/{NODE}.crt")],
                capture_output=True, text=True, timeout=30, check=False)
            assert verified.returncode == 0, verified.stdout + verified.stderr

            # -- the node's agent from those files alone joins the hosts' agents -------------
            lab.node_root = node_root
            lab.start_all()
            leader = lab.wait_for("a leader among the hosts",
                                  lambda: lab.one_leader(["pm1", "pm2"]), timeout=BOUND)
            manifest = lab.agents[NODE].folder / "node-state" / "manifests" / f"{CLOUD}.yaml"
            lab.wait_for(f"{NODE} has the manifest", manifest.exists, timeout=BOUND)
            # the node takes the manifest it fetched (its watcher's next scan) and joins; a
            # member nobody has heard from counts as alive, so "alive" alone proves nothing
            lab.wait_for(f"{NODE} joined", lambda: "cloud_joined" in lab.log_text(NODE),
                         timeout=BOUND)
            lab.wait_for("the leader hears the node", lambda: (
                (s := lab.status(leader[0])) is not None
                and s["members"].get(NODE) == "alive"), timeout=BOUND)
            forged_host_refused(lab, tmp_path)

            # -- undefining the domain removes the seed -------------------------------------
            host_command(lab, cloud, images, state, Op.UNDEFINE)
            assert not seed.exists()
            assert virsh(SYSTEM, "dominfo", DOMAIN).returncode != 0
            assert sorted(p.name for p in images.iterdir()) == []
        finally:
            virsh(SYSTEM, "undefine", DOMAIN)
