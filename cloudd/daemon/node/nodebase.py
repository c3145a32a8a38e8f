"""What a node gets from its assignment before its role converges, whatever the role.

Three things every node of a cluster needs and no provider should redo: the role's secrets
as private files (`secrets`), the names of the cloud's nodes in its `/etc/hosts` for the
types that ask for it (`hostsfile`), and the manifest's users with the same ids as on every
other node (`users`). They come first in every converge, in that order, and each is
idempotent: a converge that changes nothing here writes nothing and runs nothing.

The hosts file and the accounts are the node's own system files, under
`NodeSystem.system_root` (`/` on a node, a folder of its own for a test node that shares a
machine with others); the account commands run with the node's `exec_prefix`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.config.model import Cloud
from cloudd.daemon.network.catalogue import RoleAssignment
from cloudd.daemon.node.hostsfile import HOSTS, write_hosts
from cloudd.daemon.node.secrets import write_secrets
from cloudd.daemon.node.users import ensure_users


@dataclass(frozen=True)
class NodeBase:
    """Where one node keeps its secrets and its system files, and how it runs commands."""

    #: the folder of the role's secret files (`<node root>/secrets`)
    secrets_dir: Path
    #: the node's own `/` (`NodeSystem.system_root`)
    system_root: Path = Path("/")
    exec_prefix: tuple[str, ...] = ()

    @property
    def hosts_path(self) -> Path:
        return self.system_root / HOSTS

    async def prepare(self, a: RoleAssignment, cloud: Cloud, *, logger: Any) -> None:
        """Secrets, names and users of `a` on this node (PermanentError: one sentence)."""
        await asyncio.to_thread(write_secrets, a.secrets, self.secrets_dir)
        if cloud.hosts_file:
            entries = [(a.node, str(a.address)), *((p.node, str(p.address)) for p in a.peers)]
            change = await asyncio.to_thread(write_hosts, self.hosts_path, cloud.name, entries)
            if change.text is not None:
                logger.info("hosts_written", path=str(self.hosts_path), names=len(entries))
                for line in change.shadowed:
                    logger.warning("hosts_line_shadowed", path=str(self.hosts_path), line=line,
                                   reason="a line outside cloudd's block names a node of the "
                                          "cloud at another address; it still answers some "
                                          "lookups")
        await ensure_users(a.users, root=self.system_root, exec_prefix=self.exec_prefix,
                           logger=logger)
