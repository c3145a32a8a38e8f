"""Root SSH trust from an AppScale deployment's master to every node of it, made from two seeds.

The AppScale tools run on the master and log into every node (the master included) as root
with `~/.appscale/<keyname>.key`. cloudd installs that trust itself, from two random seeds the
leader makes (`CLIENT_SEED`, `HOST_SEED`: `GeneratedSecret`s, kept in the replicated record and
delivered over mTLS), so that the tools never run their interactive `ssh-copy-id`:

- the client key: an Ed25519 key made from `CLIENT_SEED`. Its private half goes to the master
  only (`master_files`); every node gets its public half as a line of root's
  `authorized_keys` that only the master's address may use, with no agent, port or X11
  forwarding (`authorized_keys_line`). The public line is not secret: the leader, which holds
  the seed, can hand it to the other nodes as it is, so that no node but the master ever holds
  the seed (a node holding it could log into every other node as root). The provider asks
  the master for it and each node checks it is its cloud's key, for its master's address.
- the deployment's host key: an Ed25519 key made from `HOST_SEED`, the same on every node
  (`node_files`: the key and an sshd drop-in naming it, root's login by key only), pinned for
  every node's address and name in a known_hosts file of the master's, so that the master's
  ssh runs with StrictHostKeyChecking=yes (`ssh_options`). appscale-tools 3.8.1's own ssh
  passes `-F /dev/null -o StrictHostkeyChecking=no -o UserKnownHostsFile=/dev/null`, which no
  configuration file can override; so the tools find `ssh` and `scp` wrappers first on their
  PATH (`tools_wrappers`) that put the pin before the tools' options (ssh keeps the first).

What a shared host key means: any node of the deployment holds the host key's private half,
so a node taken over by an attacker can pose as any other node of the deployment to the
master (the pin proves "a node of this deployment", not "this node"). It is accepted because
such a node already has that power: every node holds the deployment's AppScale secret key,
with which its services command those of every other node, and the master trusts what the
nodes report anyway. What the pin still refuses is everything outside the deployment: a VM
that took over a node's address, a machine on the same network, a node of another
deployment (another seed). Per-node host keys would need a secret per node in the record,
made and dropped as elastic nodes come and go, for no protection against a compromised node.

Everything here is pure and deterministic: the same seeds give the same text, byte for byte
(the OpenSSH private key format's check number comes from the key, not from a random draw),
so that re-installing the trust after a respawn changes no file. Functions return text and
modes; writing is the caller's.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from cloudd.config.catalog import GeneratedSecret

#: The seed of the client key the master logs in with (the master role only). As text (the
#: base64url of its 32 bytes): nodes read their secrets as text.
CLIENT_SEED = GeneratedSecret("ssh-client.seed", size=32, text=True)
#: The seed of the deployment's host key (every role).
HOST_SEED = GeneratedSecret("ssh-host.seed", size=32, text=True)

SEED_SIZE = 32
#: Where the nodes' sshd finds the deployment's host key, and its drop-in.
HOST_KEY_PATH = PurePosixPath("/etc/ssh/ssh_host_cloudd_appscale_ed25519_key")
SSHD_DROPIN_PATH = PurePosixPath("/etc/ssh/sshd_config.d/cloudd-appscale.conf")
#: Root's authorized_keys on every node (the line is merged in: `merge_authorized_keys`).
AUTHORIZED_KEYS_PATH = PurePosixPath("/root/.ssh/authorized_keys")

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_KEYNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class TrustFile:
    """One file of the trust: where it goes, what it holds, its mode."""

    path: PurePosixPath
    text: str
    mode: int


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key as OpenSSH writes it: the private key file's text and the public line."""

    private_text: str
    public_line: str


@dataclass(frozen=True)
class TrustNode:
    """A node of the deployment as the master's known_hosts names it."""

    address: str
    name: str | None = None


def _seed(seed: bytes, what: str) -> bytes:
    if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
        size = len(seed) if isinstance(seed, bytes) else type(seed).__name__
        raise ValueError(f"the {what} seed must be {SEED_SIZE} bytes, not {size}")
    return seed


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _openssh_private(seed: bytes, public: bytes, comment: str) -> str:
    """The OpenSSH private key format (PROTOCOL.key), unencrypted, written deterministically."""
    key_type = b"ssh-ed25519"
    # The check number only lets a reader detect a wrong passphrase; with no encryption any
    # value is valid. It comes from the public key so that the text never changes.
    check = hashlib.sha256(b"cloudd-appscale-check" + public).digest()[:4]
    body = (check + check + _string(key_type) + _string(public) + _string(seed + public)
            + _string(comment.encode()))
    body += bytes(range(1, 1 + (-len(body)) % 8))
    blob = (b"openssh-key-v1\0" + _string(b"none") + _string(b"none") + _string(b"")
            + struct.pack(">I", 1) + _string(_string(key_type) + _string(public))
            + _string(body))
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
            + "\n-----END OPENSSH PRIVATE KEY-----\n")


def keypair(seed: bytes, *, comment: str, what: str = "key") -> KeyPair:
    """The Ed25519 key whose private scalar seed is `seed` (32 bytes), commented `comment`."""
    # loaded here, not with the module: the manifest check imports this module in every agent
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not re.fullmatch(r"[A-Za-z0-9@._-]{1,64}", comment):
        raise ValueError(f"key comment {comment!r}: letters, digits and @._- only, 1 to 64")
    key = Ed25519PrivateKey.from_private_bytes(_seed(seed, what))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return KeyPair(private_text=_openssh_private(seed, public, comment),
                   public_line=f"{line} {comment}")


def client_comment(cloud: str) -> str:
    """The comment of a cloud's client key: it marks the cloud's line in authorized_keys."""
    return f"cloudd-appscale-{cloud}"


def client_key(seed: bytes, *, cloud: str) -> KeyPair:
    """The key the master's tools log in with."""
    return keypair(seed, comment=client_comment(cloud), what="client key")


def host_key(seed: bytes, *, cloud: str) -> KeyPair:
    """The deployment's host key, the same on every node (see the module docstring)."""
    return keypair(seed, comment=f"cloudd-appscale-host-{cloud}", what="host key")


def _address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None


def authorized_keys_line(public_line: str, *, master: str) -> str:
    """Root's authorized_keys line on a node: the client key, usable from the master only."""
    if not re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/]+=* [A-Za-z0-9@._-]{1,64}", public_line):
        raise ValueError("the client key's public line is not one ssh-ed25519 key with a "
                         "comment")
    options = f'from="{_address(master)}",no-agent-forwarding,no-port-forwarding,no-X11-forwarding'
    return f"{options} {public_line}"


def merge_authorized_keys(existing: str, line: str) -> str:
    """`existing` authorized_keys text with `line` in place of any line of the same key comment
    (an earlier trust of the same cloud), other lines kept as they were."""
    comment = line.rsplit(" ", 1)[1]
    kept = [ln for ln in existing.splitlines()
            if not (ln.strip() and ln.rsplit(" ", 1)[-1] == comment)]
    return "\n".join([*kept, line]) + "\n"


def known_hosts(host_public_line: str, nodes: Sequence[TrustNode]) -> str:
    """The master's known_hosts: the deployment's host key for each node's address and name."""
    key = " ".join(host_public_line.split()[:2])
    lines = []
    for node in nodes:
        names = [_address(node.address)]
        if node.name is not None:
            if not _NAME.fullmatch(node.name):
                raise ValueError(f"node name {node.name!r} is not a host name")
            names.append(node.name)
        lines.append(f"{','.join(names)} {key}")
    return "\n".join(lines) + "\n"


def sshd_dropin(host_key_path: PurePosixPath = HOST_KEY_PATH) -> str:
    """The sshd_config drop-in of every node: only the deployment's host key is offered (a
    `HostKey` line replaces sshd's default keys), root logs in by key only."""
    return ("# cloudd: the AppScale deployment's host key; root by key only\n"
            f"HostKey {host_key_path}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n")


def _keyname(keyname: str) -> str:
    if not _KEYNAME.fullmatch(keyname):
        raise ValueError(f"keyname {keyname!r}: letters, digits and _.- only, 1 to 64")
    return keyname


def key_path(home: PurePosixPath, keyname: str) -> PurePosixPath:
    """Where the AppScale tools look for the deployment's key: `~/.appscale/<keyname>.key`."""
    return home / ".appscale" / f"{_keyname(keyname)}.key"


def known_hosts_path(home: PurePosixPath, keyname: str) -> PurePosixPath:
    """The master's known_hosts of the deployment, beside the key."""
    return home / ".appscale" / f"{_keyname(keyname)}.known_hosts"


def master_files(client_seed: bytes, host_seed: bytes, *, cloud: str, keyname: str,
                 home: PurePosixPath, nodes: Sequence[TrustNode]) -> tuple[TrustFile, ...]:
    """What the master holds to log into the nodes: the private key, the pinned host key."""
    return (
        TrustFile(key_path(home, keyname), client_key(client_seed, cloud=cloud).private_text,
                  0o600),
        TrustFile(known_hosts_path(home, keyname),
                  known_hosts(host_key(host_seed, cloud=cloud).public_line, nodes), 0o644),
    )


def node_files(host_seed: bytes, *, cloud: str) -> tuple[TrustFile, ...]:
    """What every node's sshd needs: the deployment's host key and the drop-in naming it.
    (Root's authorized_keys line is merged into the existing file: `merge_authorized_keys`.)"""
    return (
        TrustFile(HOST_KEY_PATH, host_key(host_seed, cloud=cloud).private_text, 0o600),
        TrustFile(SSHD_DROPIN_PATH, sshd_dropin(HOST_KEY_PATH), 0o644),
    )


def ssh_options(*, home: PurePosixPath, keyname: str) -> tuple[str, ...]:
    """ssh's options for the master logging into a node: no config files, the deployment's key
    only, no prompt, the pinned host key required."""
    return ("-F", "/dev/null", "-i", str(key_path(home, keyname)), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts_path(home, keyname)}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10")


#: The options appscale-tools 3.8.1 gives every ssh and scp it runs (its RemoteHelper), which
#: accept any host key.
TOOLS_SSH_OPTIONS = ("-o", "LogLevel=quiet", "-o", "NumberOfPasswordPrompts=0",
                     "-o", "StrictHostkeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")


def wrappers_dir(home: PurePosixPath) -> PurePosixPath:
    """Where the tools find `ssh` and `scp` first on their PATH (`tools.environment`)."""
    return home / ".cloudd-bin"


def tools_wrappers(*, home: PurePosixPath, keyname: str) -> tuple[TrustFile, ...]:
    """`ssh` and `scp` for the tools' PATH: the real programs with the pin put first. The
    tools run `ssh -F /dev/null -i KEY -o StrictHostkeyChecking=no -o
    UserKnownHostsFile=/dev/null -o LogLevel=quiet ...` through a shell; ssh keeps the first
    value it is given for an option, so these wrappers' `StrictHostKeyChecking=yes` and
    known_hosts win, a node whose host key is not the deployment's is refused to the tools
    too, and the refusal is said (`LogLevel=ERROR`) in the tools' output."""
    pin = known_hosts_path(home, keyname)
    folder = wrappers_dir(home)
    return tuple(TrustFile(folder / name, (
        "#!/bin/sh\n# cloudd: the deployment's host key pinned for the AppScale tools\n"
        f"exec /usr/bin/{name} -o StrictHostKeyChecking=yes -o UserKnownHostsFile={pin} "
        '-o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"\n'), 0o755)
        for name in ("ssh", "scp"))
