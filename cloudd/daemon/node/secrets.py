"""A node's copy of its role's secrets: private files in the node root, never anywhere else.

The manifest names each secret as a file on the machine that loaded it; the node side copies
each into `<node root>/secrets/<name>` before a converge renders the role's files from them.
The folder is 0700 and every copy 0600 from the moment it exists (the mode is set before a
byte is written, and the file replaces the old one only when complete), and a secret the
manifest no longer names is deleted, so a role never keeps a secret it was not given.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cloudd.config.model import Cloud
from cloudd.durable import write_durable
from cloudd.errors import PermanentError

#: The mode of every secret's copy; `copy_secrets` rewrites a copy whose mode drifted.
SECRET_MODE = 0o600


def copy_secrets(cloud: Cloud, secrets_dir: Path) -> None:
    """Copy each of the cloud's secret files to `secrets_dir/<name>`, mode 0600."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    for name, source in sorted(cloud.secrets.items()):
        if not name or "/" in name or name.startswith("."):
            raise PermanentError(f"secret name {name!r} is not a plain file name")
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise PermanentError(f"secret {name!r}: cannot read {source}: {exc.strerror}") from None
        dest = secrets_dir / name
        with contextlib.suppress(FileNotFoundError):
            if dest.read_bytes() == data and dest.stat().st_mode & 0o777 == SECRET_MODE:
                continue
        write_durable(dest, data, mode=SECRET_MODE)
    for left in secrets_dir.iterdir():  # a secret the manifest no longer names goes away
        if left.name not in cloud.secrets and left.is_file():
            left.unlink()
