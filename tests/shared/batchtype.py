"""A batch cloud type for fast tests: what a scheduler's spec declares (a key every node but
the login nodes shares, made by the leader; names in the nodes' hosts files), without any
provider behind it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cloudd.config.catalog import Catalog, GeneratedSecret, RoleSpec, Settings, TypeSpec
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.config.plain import Plain
from cloudd.providers.catalog import CATALOG


@dataclass(frozen=True, kw_only=True)
class BatchSettings(Plain):
    """`settings:` of a batch cloud."""

    key_ref: str | None = None
    """Name of the entry under `secrets` holding the key; None: the leader's generated one."""


KEY = GeneratedSecret("munge.key", size=1024)


def role_secrets(settings: Settings, role: str) -> tuple[str, ...]:
    assert isinstance(settings, BatchSettings)
    return () if role == "login" else (settings.key_ref or KEY.name,)


BATCH = TypeSpec(
    name="batch", settings_model=BatchSettings, role_secrets=role_secrets,
    generated_secrets=(KEY,), hosts_file=True,
    roles=(RoleSpec("head", min_nodes=1, max_nodes=1), RoleSpec("compute", min_nodes=1),
           RoleSpec("login", min_nodes=0, required=False)))

#: The real catalog, and the batch type.
WITH_BATCH: Catalog = MappingProxyType({**CATALOG, "batch": BATCH})

MANIFEST = """\
apiVersion: cloudd/v1
kind: Cloud
name: hpc
type: batch
domain_template: batch.xml
pool:
  - {name: pm1, address: 192.0.2.70}
  - {name: pm2, address: 192.0.2.71}
roles:
  head: [{address: 192.0.2.20, image: /img/head.qcow2}]
  compute:
    - {address: 192.0.2.21, image: /img/c1.qcow2}
    - {address: 192.0.2.22, image: /img/c2.qcow2}
  login: [{address: 192.0.2.23, image: /img/login.qcow2}]
"""

HEAD, C1, C2, LOGIN = "hpc-head-1", "hpc-compute-1", "hpc-compute-2", "hpc-login-1"
TEMPLATE = ("<domain type='qemu'><name>${name}</name><uuid>${uuid}</uuid>"
            "<memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>"
            "<os><type>hvm</type></os>${metadata}</domain>")


def batch(folder: Path, text: str = MANIFEST) -> Cloud:
    """The hpc cloud of type batch, loaded from a manifest file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch.xml").write_text(TEMPLATE)
    (folder / "hpc.yaml").write_text(text)
    return load_cloud(folder / "hpc.yaml", WITH_BATCH)
