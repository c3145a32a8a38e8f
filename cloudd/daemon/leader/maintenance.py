"""The operator's maintenance holds: the whole cloud, or single nodes, left alone.

`cloudd-cli maintenance on NODE` keeps the leader from starting, stopping, moving or
re-assigning that node; `maintenance on CLOUD` pauses the leader's reconciling altogether.
The holds survive an agent restart: they are written (durably) to `maintenance.json` in the
cloud's state folder, as a sorted list of names where "" stands for the whole cloud.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cloudd.durable import write_durable
from cloudd.errors import PermanentError

FILE = "maintenance.json"

#: How the whole cloud shows in the operator's list of holds.
WHOLE_CLOUD = "(cloud)"


class Maintenance:
    """The holds in force (None: the whole cloud), loaded from and saved to `folder`."""

    def __init__(self, folder: Path, *, cloud: str) -> None:
        self.path, self.cloud = folder / FILE, cloud
        self._held: set[str | None] = self._load()

    def _load(self) -> set[str | None]:
        try:
            names = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        if not isinstance(names, list):
            return set()
        return {n or None for n in names if isinstance(n, str)}

    @property
    def held(self) -> frozenset[str | None]:
        return frozenset(self._held)

    @property
    def whole_cloud(self) -> bool:
        return None in self._held

    def set(self, subject: str | None, *, on: bool, nodes: Iterable[str]) -> None:
        """Hold (or release) `subject`, a node of `nodes` or None for the whole cloud."""
        if subject is not None and subject not in set(nodes):
            raise PermanentError(f"unknown node {subject!r} in cloud {self.cloud}")
        (self._held.add if on else self._held.discard)(subject)
        write_durable(self.path, json.dumps(sorted(s or "" for s in self._held)))

    def view(self) -> list[str]:
        return view(self._held)


def view(held: Iterable[str | None]) -> list[str]:
    """The holds as the operator reads them."""
    return sorted(s or WHOLE_CLOUD for s in held)
