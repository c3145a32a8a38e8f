"""How a booting node learns who it is: cloud, node name, role, address, members, credentials.

Two carriers, chosen by the kind of guest:

(a) Direct-kernel-boot guests (the project's test guest) get short `cloudd.*=` words on the
    kernel command line, which the node agent reads back from /proc/cmdline:

        cloudd.cloud=web1 cloudd.node=server-0 cloudd.role=server cloudd.ip=10.9.0.5/24
        cloudd.members=10.9.0.1:7400,10.9.0.2:7400 cloudd.term=3
        cloudd.pki=/var/lib/cloudd/pki/web1/server-0

    The command line is short (2 KiB on x86) and unquoted, so certificates go by path: the
    test guest shares the host's filesystem, `cloudd.pki` names a directory holding ca.pem,
    cert.pem and key.pem. `cloudd.ip` has the same meaning as in cloudd_lab.testguest.

(b) Stock cloud images get a cloud-init NoCloud seed: an ISO9660 image with volume label
    `cidata` holding meta-data, user-data (a #cloud-config that writes
    /etc/cloudd/identity.yaml and the PKI files) and network-config (v2, matched on the MAC).
    It is built with genisoimage.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloudd.durable import replace_durable
from cloudd.errors import PermanentError


class IdentityError(PermanentError):
    """An identity cannot be carried (a bad value) or read back (a bad command line)."""


@dataclass(frozen=True)
class NodeIdentity:
    cloud: str
    node: str
    role: str
    #: the node's address with its prefix length, e.g. "10.9.0.5/24"
    address: str
    #: agents to contact first, "host:port"
    members: tuple[str, ...]
    #: the term of the leader that defined this node
    term: int
    #: directory with ca.pem, cert.pem, key.pem (kernel-command-line carrier)
    pki: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class Pki:
    """The PEM texts a node needs, for the cloud-init carrier."""

    ca: str
    cert: str
    key: str


def _check_word(value: str, what: str) -> None:
    if not value or any(c.isspace() or c in "\"'=\\" for c in value):
        raise IdentityError(
            f"identity {what} {value!r} must be non-empty, without spaces, quotes or '='")


def cmdline_words(ident: NodeIdentity, *, with_address: bool = True) -> list[str]:
    """The `cloudd.*=` words for `ident` (leave the address out when the guest's own
    network words, e.g. testguest.kernel_cmdline, already carry `cloudd.ip`)."""
    for value, what in ((ident.cloud, "cloud"), (ident.node, "node"), (ident.role, "role"),
                        (ident.address, "address")):
        _check_word(value, what)
    if "/" not in ident.address:
        raise IdentityError(f"identity address {ident.address!r} needs a prefix length (/24)")
    for member in ident.members:
        _check_word(member, "member")
        if "," in member or ":" not in member:
            raise IdentityError(f"identity member {member!r} must be host:port without commas")
    if ident.term < 0:
        raise IdentityError(f"identity term must be >= 0, got {ident.term}")
    words = [f"cloudd.cloud={ident.cloud}", f"cloudd.node={ident.node}",
             f"cloudd.role={ident.role}"]
    if with_address:
        words.append(f"cloudd.ip={ident.address}")
    if ident.members:
        words.append("cloudd.members=" + ",".join(ident.members))
    words.append(f"cloudd.term={ident.term}")
    if ident.pki:
        _check_word(ident.pki, "pki path")
        words.append(f"cloudd.pki={ident.pki}")
    if ident.gateway:
        _check_word(ident.gateway, "gateway")
        words.append(f"cloudd.gw={ident.gateway}")
    return words


def from_cmdline(cmdline: str) -> NodeIdentity:
    """Read an identity back from a kernel command line (/proc/cmdline)."""
    fields: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key.startswith("cloudd."):
            fields[key.removeprefix("cloudd.")] = value
    missing = [k for k in ("cloud", "node", "role", "ip", "term") if not fields.get(k)]
    if missing:
        raise IdentityError("kernel command line lacks " +
                            ", ".join(f"cloudd.{k}" for k in missing))
    try:
        term = int(fields["term"])
    except ValueError:
        raise IdentityError(f"cloudd.term is not an integer: {fields['term']!r}") from None
    members = tuple(m for m in fields.get("members", "").split(",") if m)
    return NodeIdentity(cloud=fields["cloud"], node=fields["node"], role=fields["role"],
                        address=fields["ip"], members=members, term=term,
                        pki=fields.get("pki", ""), gateway=fields.get("gw", ""))


# -- cloud-init NoCloud ------------------------------------------------------------------------

def seed_files(ident: NodeIdentity, *, mac: str, pki: Pki) -> dict[str, str]:
    """The three NoCloud files. JSON is valid YAML, so they are written as JSON (no quoting
    pitfalls) except user-data, which must start with `#cloud-config`."""
    cmdline_words(ident)  # the same validation for both carriers
    identity = {"cloud": ident.cloud, "node": ident.node, "role": ident.role,
                "address": ident.address, "members": list(ident.members), "term": ident.term}
    meta = {"instance-id": f"{ident.cloud}-{ident.node}-t{ident.term}",
            "local-hostname": ident.node}
    ethernet: dict[str, object] = {"match": {"macaddress": mac}, "set-name": "eth0",
                                   "addresses": [ident.address]}
    if ident.gateway:
        ethernet["routes"] = [{"to": "default", "via": ident.gateway}]
    network = {"version": 2, "ethernets": {"eth0": ethernet}}
    user = {"write_files": [
        {"path": "/etc/cloudd/identity.yaml", "permissions": "0644",
         "content": json.dumps(identity, indent=1) + "\n"},
        {"path": "/etc/cloudd/pki/ca.pem", "permissions": "0644", "content": pki.ca},
        {"path": "/etc/cloudd/pki/cert.pem", "permissions": "0644", "content": pki.cert},
        {"path": "/etc/cloudd/pki/key.pem", "permissions": "0600", "content": pki.key},
    ]}
    return {"meta-data": json.dumps(meta, indent=1) + "\n",
            "user-data": "#cloud-config\n" + json.dumps(user, indent=1) + "\n",
            "network-config": json.dumps(network, indent=1) + "\n"}


def build_seed(ident: NodeIdentity, *, mac: str, pki: Pki, out: Path,
               genisoimage: str = "genisoimage") -> Path:
    """Write the NoCloud seed ISO for one node to `out` (mode 0600: it holds the key)."""
    files = seed_files(ident, mac=mac, pki=pki)
    work = out.with_name(out.name + ".d")
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(mode=0o700, exist_ok=True)  # the seed's files hold the node's private key
    for name, text in files.items():
        (work / name).write_text(text)
    tmp = out.with_name(out.name + ".tmp")
    try:
        proc = subprocess.run(
            [genisoimage, "-quiet", "-output", str(tmp), "-volid", "cidata", "-joliet",
             "-rock", *(str(work / n) for n in files)],
            capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise IdentityError(f"{genisoimage} is not installed "
                            "(apt-get install genisoimage)") from None
    finally:
        for name in files:
            (work / name).unlink(missing_ok=True)
        work.rmdir()
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"genisoimage failed: {proc.stderr.strip()[:300]}")
    tmp.chmod(0o600)
    replace_durable(tmp, out)
    return out
