"""A pool host's record of the per-node overlays it made for its cloud, so that it can remove
them once no node needs them, and nothing else.

Why a record and not names. A host's image folders hold base images, the nodes' overlays,
other clouds' disks and whatever an operator put there, all alike to a directory listing.
Names do not tell them apart: domain names collide across clouds (`<cloud>-<node>` of cloud
`a-b` node `c` is cloud `a` node `b-c`'s too), and a manifest names its nodes' disks as it
likes (`web2.qcow2`). What proves that a file is a node's overlay of this cloud is that this
host made it, on the leader's OVERLAY for that node's domain. So the host agent keeps
path -> domain in the cloud's state dir (one JSON object, written durably, 0600), reports the
entries whose file exists in its INVENTORY, and removes a file on REMOVE_IMAGE only when the
record names it for that very domain (`cloudd.vmctl.hostagent`).

Order. An entry is added *before* a new overlay is created: a crash between the two leaves an
entry for a missing file (a later removal answers NOOP and drops it), never an overlay nobody
knows of. An entry is dropped only after its file is gone.

Blocking (file I/O): the host agent calls these off the event loop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cloudd import log
from cloudd.durable import fsync_dir, set_aside, write_durable

#: The file of the cloud's state dir that records the overlays this host made.
OVERLAYS_FILE = "overlays.json"


class OverlayRecord:
    """path -> domain of the overlays this host made for its cloud (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = log.get("vmctl.overlays")
        self._entries: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            return self._unreadable(str(e))
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return self._unreadable("not an object of path to domain")
        return dict(data)

    def _unreadable(self, reason: str) -> dict[str, str]:
        # An unreadable record forgets overlays (they stay on disk), never invents one; it is
        # set aside for the operator, who may remove what it named by hand.
        self._log.warning("overlay_record_unreadable", path=str(self.path), reason=reason)
        set_aside(self.path, reason=reason)
        return {}

    def owner(self, image: str) -> str | None:
        """The domain whose overlay `image` is, if this host made it."""
        return self._entries.get(image)

    def entries(self) -> tuple[tuple[str, str], ...]:
        """(path, domain) of every entry, sorted."""
        return tuple(sorted(self._entries.items()))

    def present(self) -> tuple[tuple[str, str], ...]:
        """The entries whose file exists (what INVENTORY reports)."""
        return tuple((p, d) for p, d in self.entries() if os.path.isfile(p))

    def add(self, image: str, domain: str) -> None:
        """Record `image` as `domain`'s overlay (written before this returns)."""
        if self._entries.get(image) == domain:
            return
        entries = {**self._entries, image: domain}
        self._save(entries)
        self._entries = entries

    def drop(self, image: str) -> None:
        """Forget `image` (its file is gone)."""
        if image not in self._entries:
            return
        entries = {k: v for k, v in self._entries.items() if k != image}
        self._save(entries)
        self._entries = entries

    def _save(self, entries: dict[str, str]) -> None:
        write_durable(self.path, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def remove_file(path: Path) -> bool:
    """Remove `path` durably; False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
