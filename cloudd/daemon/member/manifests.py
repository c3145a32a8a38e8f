"""The agent's manifest folder, as the member and the operator's commands write into it.

A manifest that arrives over the wire (the leader's generation, a seed for a member that has
none, an operator's `apply`) is validated exactly as a file in the folder would be, then
written into the folder atomically and durably, over the file that declares that cloud now
(one cloud never has two files), and the folder's watcher is asked to rescan: the manifest
then takes the same path as a file an operator dropped there. An invalid manifest raises
`ConfigError` with its problems and writes nothing. Validation and writing are file I/O and
parsing: they run off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from cloudd.config.manifest import load_cloud_text
from cloudd.config.model import Cloud
from cloudd.config.sources import Origin
from cloudd.durable import write_durable
from cloudd.providers.catalog import catalog

#: Private: a manifest received for a pool host holds its cloud's secrets.
MODE = 0o600


def check_manifest(text: str, *, where: Path, with_template: bool = True) -> Cloud:
    """Validate a manifest's text received over the network: it must be self-contained, and
    nothing in it makes this agent read a file (ConfigError if not)."""
    return load_cloud_text(text, catalog(), origin=Origin.WIRE, with_template=with_template)


class ManifestFolder:
    """Where this agent's manifests live (`folder`), and how to have them read again."""

    def __init__(self, folder: Path, *, incoming: Path, locate: Callable[[str], Path | None],
                 rescan: Callable[[], None]) -> None:
        self.folder, self.incoming = folder, incoming
        self._locate, self._rescan = locate, rescan

    async def check(self, text: str, *, with_template: bool = True) -> Cloud:
        return await asyncio.to_thread(check_manifest, text, where=self.incoming,
                                       with_template=with_template)

    def _write(self, text: str, cloud: str) -> Path:
        path = self._locate(cloud) or self.folder / f"{cloud}.yaml"
        write_durable(path, text, mode=MODE)
        return path

    async def install(self, text: str, cloud: str) -> Path:
        """Write a validated manifest for `cloud`; the watcher picks it up at once."""
        path = await asyncio.to_thread(self._write, text, cloud)
        self._rescan()
        return path
