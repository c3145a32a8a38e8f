"""A cloud whose nodes are real VMs booted from the node image, for the e2e suite and the demo.

`ImageLab` is a `VmLab` (pool host agents in network namespaces on one bridge, the leader
defining domains on the machine's libvirtd) whose nodes are what an operator would run: the
image `cloudd-cli image build` makes (Debian 12, systemd, cloud-init, the agent in its own
virtualenv, the roles' packages), booted with the shipped domain template of the cloud's type
(`manifests/templates/TYPE.xml`). Each node boots its own copy-on-write overlay of the image
(the leader has the host make it), and its identity and credentials come from the NoCloud
seed the host makes when it defines the domain; nothing of the host's filesystem is shared.
Inside, systemd runs the agent, which joins, takes its role and runs the role's services.

The cloud is a web cloud with a database password (a secret file in the lab's folder, which
the leader sends to the roles that need it). The image is built once per machine and cached
(`/var/cache/cloudd/images`); its folder becomes one of the hosts' image folders.

As an operator would, the lab keeps an SSH key pair of its own (made in its folder, gone with
it) and gives the public key in the manifest's `node_access`: `guest_ssh(node, *argv)` runs a
command as root inside a node's guest, from this machine (whose address on the lab's bridge
reaches the guests). Each pool host's namespace serves time (`AgentLab.time_servers`), which the
guests' chrony takes as its only servers.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cloudd.commands.image import ensure_image
from cloudd.images.store import Image
from cloudd_lab.paths import checkout, example_template
from cloudd_lab.vmlab import IMAGES, VmLab

#: The web cloud's settings in the lab: the app's database account and its password.
WEB_SETTINGS = {"database_name": "guestbook", "database_user": "guestbook",
                "database_password_ref": "db_password"}


@dataclass
class ImageLab(VmLab):
    """`hosts` pool host agents and a cloud of VMs booted from the node image."""

    node_memory_mib: int = 1024
    #: The app's database password (what the secret file holds).
    password: str = "correct horse 'battery'"
    #: The guests take the pool hosts as their only time servers: each serves.
    time_servers: bool = True
    #: The node image, when the caller has it already (None: found or built at `open`).
    image: Image | None = None
    #: The hosts' image folders are theirs and the image cache's (base image, kernel and
    #: initramfs); nothing of the host is shared.
    shares_host_root: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.template = example_template(self.cloud_type)

    def boot_values(self) -> dict[str, str]:
        """The image's kernel and initramfs (the image found or built now from the lab's own
        checkout, unless given)."""
        if self.image is None:
            self.image = ensure_image(self.cloud_type, source=checkout())
        return {"kernel": str(self.image.kernel), "initrd": str(self.image.initrd)}

    def prepare_nodes(self) -> None:
        """No overlay or seed of an earlier lab, the database password's secret file, and the
        lab's SSH key pair."""
        self.remove_node_files()
        secrets = self.root / "secrets"
        secrets.mkdir(mode=0o700)
        (secrets / "db_password").write_text(self.password + "\n")
        (secrets / "db_password").chmod(0o600)
        self.make_ssh_key()

    def overlay(self, node: str) -> Path:
        """The node's own disk: an overlay of the image in the hosts' first image folder."""
        return IMAGES / f"{self.cloud_name}-{node}.qcow2"

    def node_fields(self, node: str) -> str:
        if self.image is None:
            return super().node_fields(node)
        return (f"image: {self.overlay(node)}, base_image: {self.image.qcow2}, overlay: true, "
                f"memory_mib: {self.node_memory_mib}")

    def settings(self) -> dict[str, object]:
        """The manifest's `settings` (the web cloud's)."""
        return dict(WEB_SETTINGS)

    def manifest_extra(self) -> str:
        settings = ", ".join(f"{k}: {json.dumps(v)}" for k, v in self.settings().items())
        secret = self.root / "secrets" / "db_password"
        access = ""
        if self.ssh_key.with_suffix(".pub").exists():
            public = json.dumps(self.ssh_key.with_suffix(".pub").read_text().strip())
            access = f"node_access: {{ssh_authorized_keys: [{public}]}}\n"
        return (f"settings: {{{settings}}}\nsecrets: {{db_password: {{file: {secret}}}}}\n"
                + access)

    def phases(self) -> dict[str, str]:
        """Each node's phase as the acting leader has heard it from the node."""
        leader = self.leader()
        status = self.status(leader) if leader else None
        return {name: r["phase"] for name, r in ((status or {}).get("nodes") or {}).items()}

    def ready(self) -> bool:
        """Every node has reported its role's services ready to the acting leader."""
        return self.phases() == dict.fromkeys(self.node_addresses, "ready")

    def url(self) -> str:
        """The web site, through the (first) balancer."""
        return f"http://{self.node_addresses['lab-balancer-1']}"

    # -- into the guests ------------------------------------------------------------------
    @property
    def ssh_key(self) -> Path:
        """The lab's private key (its public key is the manifest's `node_access`)."""
        return self.root / "ssh" / "id_ed25519"

    def make_ssh_key(self) -> None:
        self.ssh_key.parent.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"cloudd-lab-{self.prefix}", "-f", str(self.ssh_key)],
                       check=True, capture_output=True, timeout=30)

    def guest_ssh(self, node: str, *argv: str,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` as root inside `node`'s guest over SSH with the lab's key (a fresh guest's
        host key is accepted and not kept); a connection that fails says so in the result's
        returncode (255) and stderr. TimeoutExpired after `timeout` seconds."""
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "-o", "ConnectTimeout=10", f"root@{self.node_addresses[node]}", "--",
             shlex.join(argv)],
            capture_output=True, text=True, timeout=timeout, check=False)

    def power_loss(self, host: str) -> list[str]:
        """As `VmLab.power_loss`, and the host's time server goes too (a host without power
        serves no time); `time_server(host).start()` brings it back."""
        lost = super().power_loss(host)
        if host in self.clocks:
            self.clocks[host].stop()
        return lost

    def bring_back(self, host: str, *, bound: float = 120.0) -> None:
        """As `VmLab.bring_back`, with the host's time server."""
        if host in self.clocks:
            self.clocks[host].start()
        super().bring_back(host, bound=bound)

    def remove_node_files(self) -> None:
        """The nodes' overlays and seeds a previous lab of this cloud left in the image folder."""
        for path in IMAGES.glob(f"{self.cloud_name}-*"):
            if path.suffix in (".qcow2", ".iso"):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.remove_node_files()
