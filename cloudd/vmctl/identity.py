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

(b) Real node images get a cloud-init NoCloud seed: an ISO9660 image with volume label
    `cidata` holding meta-data, user-data (a #cloud-config whose write_files puts the
    identity in /etc/cloudd/identity.json and the node's PKI files beside it, in
    /etc/cloudd/pki: `ca.crt`, `NODE.crt`, `NODE.key`, every file 0600) and network-config
    (v2, matched on the MAC). The agent starts with `cloudd --from-identity
    /etc/cloudd/identity.json`. The seed holds the node's private key: it is built with
    genisoimage into a file of mode 0600, and its working files never leave a 0700 folder.

    The same user-data sets up the guest around the agent (`GuestSetup`): chrony takes the
    cloud's pool hosts as its only time servers and steps the clock whenever it is a second
    off (a TCG guest's clock drifts, and TLS, munge and the schedulers need it right); and
    cloud-init makes no user (root is its only entry, not Debian's default `debian`), and
    root's authorized_keys is written whole from the manifest's `node_access`: the only way
    into a node is root with those keys, and without them none.

The identity file is JSON (JSON is YAML too): `identity_json` writes it, `from_identity_json`
reads it back, refusing anything but the fields below with the types they have.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudd.durable import replace_durable
from cloudd.errors import PermanentError

#: Where cloud-init writes a seed's identity inside the guest; its PKI folder is beside it.
IDENTITY_FILE = "/etc/cloudd/identity.json"
PKI_FOLDER = "/etc/cloudd/pki"
#: The mode of every file of the agent's the seed makes cloud-init write.
SEED_FILE_MODE = "0600"
#: Root's SSH keys in the guest, replaced whole by every seed (`root_keys_file`).
ROOT_KEYS = "/root/.ssh/authorized_keys"
#: The guest's chrony configuration, replaced whole: Debian's has a pool of its own and a
#: `makestep 1 3` after its conf.d, which would override a drop-in's.
CHRONY_CONF = "/etc/chrony/chrony.conf"


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
class GuestSetup:
    """What a seed sets up in the guest besides the agent's identity and credentials."""

    #: Addresses of the node's time servers (its cloud's pool hosts); () leaves the image's
    #: own chrony configuration alone.
    time_servers: tuple[str, ...] = ()
    #: OpenSSH public key lines root accepts (the manifest's `node_access`); (): no way in.
    root_keys: tuple[str, ...] = ()


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

def identity_json(ident: NodeIdentity) -> str:
    """The identity file's text (the `pki` folder is not in it: it is beside the file)."""
    cmdline_words(ident)  # the same validation for both carriers
    return json.dumps({"cloud": ident.cloud, "node": ident.node, "role": ident.role,
                       "address": ident.address, "gateway": ident.gateway,
                       "members": list(ident.members), "term": ident.term}, indent=1) + "\n"


_FIELDS: dict[str, type] = {"cloud": str, "node": str, "role": str, "address": str,
                            "gateway": str, "members": list, "term": int}


def from_identity_json(text: str, *, pki: str = "") -> NodeIdentity:
    """Read an identity file back; `pki` is the folder of its certificates."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise IdentityError(f"the identity is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise IdentityError("the identity is not a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    missing = [k for k in _FIELDS if k not in data and k != "gateway"]
    if unknown or missing:
        raise IdentityError("the identity " + "; ".join(
            ([f"has unknown fields {', '.join(unknown)}"] if unknown else []) +
            ([f"lacks {', '.join(missing)}"] if missing else [])))
    for key, kind in _FIELDS.items():
        value = data.get(key, "")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise IdentityError(f"identity field {key} must be a {kind.__name__}, "
                                f"got {value!r}")
    if not all(isinstance(m, str) for m in data["members"]):
        raise IdentityError("identity field members must be a list of name@address:port")
    ident = NodeIdentity(cloud=data["cloud"], node=data["node"], role=data["role"],
                         address=data["address"], members=tuple(data["members"]),
                         term=data["term"], pki=pki, gateway=data.get("gateway", ""))
    cmdline_words(ident)
    return ident


def chrony_conf(servers: Sequence[str]) -> str:
    """The guest's whole chrony configuration: `servers` and nothing else as its sources."""
    lines = ["# Written by cloud-init from the node's seed (cloudd): the cloud's pool hosts are",
             "# this node's only time servers."]
    for server in servers:
        try:
            lines.append(f"server {ipaddress.ip_address(server)} iburst")
        except ValueError:
            raise IdentityError(f"time server {server!r} is not an IP address") from None
    lines += ["# A guest's clock drifts (under TCG, seconds an hour): step it whenever it is",
              "# more than a second off, not only in the first updates.",
              "makestep 1 -1",
              "driftfile /var/lib/chrony/chrony.drift",
              "logdir /var/log/chrony",
              "rtcsync"]
    return "\n".join(lines) + "\n"


#: Every boot (cloud-init's bootcmd, before sshd starts): an SSH host key that is missing or
#: empty is made anew. A guest killed soon after its first boot (kill -9 of its qemu, a
#: host's power loss) can lose the keys cloud-init wrote to its page cache, and cloud-init
#: makes keys only for a new instance: sshd would then refuse to start on every later boot.
#: The first boot makes them here too (so cloud-init's ssh module is told to keep them).
HOST_KEYS = ('d="${SSH_DIR:-/etc/ssh}"; for t in rsa ecdsa ed25519; do k="$d/ssh_host_${t}_key"; '
             'if [ ! -s "$k" ] || [ ! -s "$k.pub" ]; then rm -f "$k" "$k.pub"; '
             'ssh-keygen -q -t "$t" -N "" -f "$k" || exit 1; fi; done')

#: cloud-init's users: root alone, its password locked. Naming root as the only user keeps
#: cloud-init from making its default one (`users: []` would too, but cloud-init 22.4's schema
#: refuses an empty list); its keys come as a file (`root_keys_file`).
USERS = ({"name": "root", "lock_passwd": True},)


def root_keys_file(root_keys: Sequence[str]) -> str:
    """Root's whole authorized_keys: exactly `root_keys`, none for no way in. Written whole
    rather than through cloud-init's key options, which only ever add keys: a key dropped
    from the manifest is gone from a node at its next DEFINE, even on a disk that persists."""
    for key in root_keys:
        if not key or any(ord(c) < 0x20 for c in key):
            raise IdentityError("an SSH key for root must be one non-empty line")
    return "".join(f"{key}\n" for key in root_keys)


def seed_files(ident: NodeIdentity, *, mac: str, pki: Pki,
               setup: GuestSetup = GuestSetup()) -> dict[str, str]:
    """The three NoCloud files. JSON is valid YAML, so they are written as JSON (no quoting
    pitfalls) except user-data, which must start with `#cloud-config`. `pki.cert` is the
    node's certificate with the node issuer's after it."""
    # A new certificate is a new instance to cloud-init, which writes the files again only
    # then (a seed made anew for the same node and term would otherwise go unread).
    cred = hashlib.sha256(pki.cert.encode()).hexdigest()[:12]
    meta = {"instance-id": f"{ident.cloud}-{ident.node}-t{ident.term}-{cred}",
            "local-hostname": ident.node}
    ethernet: dict[str, object] = {"match": {"macaddress": mac}, "set-name": "eth0",
                                   "addresses": [ident.address]}
    if ident.gateway:
        ethernet["routes"] = [{"to": "default", "via": ident.gateway}]
    network = {"version": 2, "ethernets": {"eth0": ethernet}}
    files = ((IDENTITY_FILE, identity_json(ident)), (f"{PKI_FOLDER}/ca.crt", pki.ca),
             (f"{PKI_FOLDER}/{ident.node}.crt", pki.cert),
             (f"{PKI_FOLDER}/{ident.node}.key", pki.key),
             (ROOT_KEYS, root_keys_file(setup.root_keys)))
    writes = [{"path": path, "permissions": SEED_FILE_MODE, "owner": "root:root",
               "content": content} for path, content in files]
    if setup.time_servers:
        # cloud-init.service writes it before chrony.service starts (ordered Before= it).
        writes.append({"path": CHRONY_CONF, "permissions": "0644", "owner": "root:root",
                       "content": chrony_conf(setup.time_servers)})
    user = {"users": list(USERS), "write_files": writes, "ssh_deletekeys": False,
            "bootcmd": [["sh", "-c", HOST_KEYS]]}
    return {"meta-data": json.dumps(meta, indent=1) + "\n",
            "user-data": "#cloud-config\n" + json.dumps(user, indent=1) + "\n",
            "network-config": json.dumps(network, indent=1) + "\n"}


def build_seed(ident: NodeIdentity, *, mac: str, pki: Pki, out: Path,
               setup: GuestSetup = GuestSetup(), genisoimage: str = "genisoimage") -> Path:
    """Write the NoCloud seed ISO for one node to `out`, mode 0600 (it holds the node's key):
    the files and the ISO are made in a private folder beside `out` (0700, its files 0600, so
    the ISO's Rock Ridge modes say 0600 too), then the ISO is renamed over `out`."""
    files = seed_files(ident, mac=mac, pki=pki, setup=setup)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        for name, text in files.items():
            fd = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        iso = work / "seed.iso"
        try:
            proc = subprocess.run(
                [genisoimage, "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet",
                 "-rock", *(str(work / n) for n in files)],
                capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise IdentityError(f"{genisoimage} is not installed "
                                "(apt-get install genisoimage)") from None
        if proc.returncode != 0:
            raise IdentityError(f"genisoimage failed: {proc.stderr.strip()[:300]}")
        iso.chmod(0o600)
        replace_durable(iso, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
