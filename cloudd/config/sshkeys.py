"""OpenSSH public key lines, as a manifest's `node_access` may give them.

Why a module of its own: a key the manifest gives ends up in root's `authorized_keys` on every
node of the cloud, through the seed each pool host builds. So a line is accepted only when it
is exactly one OpenSSH public key (`TYPE BASE64 [COMMENT]`) whose key data really is a key of
that type: no options before it (`command=`, `from=`...), no second line slipped in, nothing
cloud-init's parser would read differently from this one. And an operator who pastes the
private key by mistake is told so without the key being quoted anywhere: problems name the
field and the line, never the value.
"""

from __future__ import annotations

#: The key types OpenSSH 9.2's sshd accepts by default (DSA is refused there, so here too).
KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
#: The longest line accepted: a 16384-bit RSA key with a long comment fits.
MAX_LINE = 16 * 1024
_LINE = "an OpenSSH public key line: TYPE BASE64 [COMMENT], as in a .pub file"
_PRIVATE = ("PRIVATE KEY", "PuTTY-User-Key-File")


def check_public_key(value: str) -> str:
    """`value` as one OpenSSH public key line (outer spaces removed); ValueError otherwise,
    with a sentence that never quotes the value."""
    if any(marker in value for marker in _PRIVATE):
        raise ValueError("is a private key: give the public key instead (the one line of its "
                         ".pub file), and keep the private key where it was")
    if value.lstrip().startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise ValueError("is an RFC 4716 public key; give it as one OpenSSH line "
                         "(ssh-keygen -i -f FILE prints it)")
    line = value.strip()
    if not line:
        raise ValueError(f"is empty; give {_LINE}")
    if len(line) > MAX_LINE:
        raise ValueError(f"is longer than {MAX_LINE} characters; give {_LINE}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
        raise ValueError(f"must be one line without control characters; give {_LINE}")
    parts = line.split(maxsplit=2)
    kind = parts[0]
    if kind not in KEY_TYPES:
        raise ValueError(f"does not start with an OpenSSH key type ({', '.join(KEY_TYPES)}); "
                         f"options before the key are not accepted; give {_LINE}")
    if len(parts) < 2 or not _is_key(kind, parts[1]):
        raise ValueError(f"its key data is not the base64 of a key of type {kind}; give {_LINE}")
    return line


def _is_key(kind: str, data: str) -> bool:
    """Whether `data` is the base64 of a whole public key of type `kind` (cryptography reads
    it as OpenSSH does: the type it names inside must be `kind`, the key must be valid).
    Loaded here, not with the module: an agent whose manifests give no keys never loads
    cryptography."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(f"{kind} {data}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        return False
    return True
