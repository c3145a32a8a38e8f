"""A node's role secrets: what its assignment carries, written to private files in its root.

The leader sends a node, inside its role assignment over mTLS, the secrets its role needs and
no other (`cloudd.daemon.leader.assignment`); a node never reads a secret from a path that a
manifest names. Before a converge renders the role's files, the node writes each into
`<node root>/secrets/<name>`: the folder is 0700 and every file 0600 from the moment it exists
(the mode is set before a byte is written, and the file replaces the old one only when
complete), and a secret the assignment no longer carries is deleted, so a role never keeps a
secret it was not given. Errors name the secret, never its value.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable
from pathlib import Path

from cloudd.config.sources import SECRET_NAME
from cloudd.durable import write_durable
from cloudd.errors import PermanentError

#: The mode of every secret's file; `write_secrets` rewrites a file whose mode drifted.
SECRET_MODE = 0o600


def decode(pairs: Iterable[tuple[str, str]]) -> dict[str, bytes]:
    """name -> contents of an assignment's secrets (name, base64), refused one by one."""
    out: dict[str, bytes] = {}
    for name, value in pairs:
        if not SECRET_NAME.match(name):
            raise PermanentError(f"secret name {name!r} is not a plain file name")
        try:
            out[name] = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise PermanentError(f"secret {name!r} from the leader is not base64") from None
    return out


def write_secrets(pairs: Iterable[tuple[str, str]], secrets_dir: Path) -> None:
    """Write the assignment's secrets to `secrets_dir/<name>` (0600); delete any other."""
    wanted = decode(pairs)
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    for name, data in sorted(wanted.items()):
        dest = secrets_dir / name
        with contextlib.suppress(FileNotFoundError):
            if dest.read_bytes() == data and dest.stat().st_mode & 0o777 == SECRET_MODE:
                continue
        write_durable(dest, data, mode=SECRET_MODE)
    for left in secrets_dir.iterdir():  # a secret the assignment no longer carries goes away
        if left.name not in wanted and left.is_file():
            left.unlink()
