"""The manifests in a folder, rescanned: which clouds are declared now, and what changed.

Manifests are dropped into `/etc/cloudd/` by hand or by configuration management, so they can
be half-written, wrong, or removed at any time. A refused file never disturbs what runs: the
registry keeps the last valid generation of that file until a valid one replaces it, and
only a removed file withdraws its cloud. Unchanged files (same size and mtime, for the
manifest and every file it names) are not reparsed: a scan costs a few stats per cloud.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cloudd.config.catalog import Catalog
from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.errors import ConfigError, Problem

SUFFIXES = (".yaml", ".yml")


class Change(StrEnum):
    LOADED = "loaded"  # new, or a new valid generation of a known file
    REFUSED = "refused"  # invalid; the previous generation (if any) stays
    REMOVED = "removed"  # the file is gone; its cloud is withdrawn


@dataclass(frozen=True)
class ManifestEvent:
    change: Change
    path: Path
    #: LOADED: the new cloud; REFUSED: the generation kept (None if none); REMOVED: the old.
    cloud: Cloud | None
    problems: tuple[Problem, ...] = ()


class ManifestRegistry:
    """Valid clouds declared by the manifests of one folder, updated by `scan()`."""

    def __init__(self, directory: str | os.PathLike[str], catalog: Catalog, *,
                 exclude: Iterable[str | os.PathLike[str]] = (),
                 with_template: bool = True) -> None:
        self.directory = Path(directory)
        self.with_template = with_template
        self.catalog = catalog
        self._exclude = {Path(p).resolve() for p in exclude}
        self._current: dict[Path, Cloud] = {}
        self._seen: dict[Path, tuple[tuple[int, int], ...]] = {}

    @property
    def clouds(self) -> Mapping[str, Cloud]:
        """cloud name -> Cloud, for every currently valid manifest."""
        return {c.name: c for c in self._current.values()}

    def path_of(self, cloud: str) -> Path | None:
        """The file that declares `cloud` now, if any."""
        return next((p for p, c in self._current.items() if c.name == cloud), None)

    def files(self) -> list[Path]:
        """The manifest files in the folder now, sorted."""
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if p.suffix in SUFFIXES and p.resolve() not in self._exclude
                and not p.name.startswith(".")]

    def scan(self) -> list[ManifestEvent]:
        """Reload what changed since the last scan; the events say what happened."""
        events: list[ManifestEvent] = []
        present = self.files()
        for path in present:
            kept = self._current.get(path)
            stamp = _stamp((path, *(kept.inputs if kept else ())))
            if stamp is None:
                continue  # removed between listing and stat: the next scan sees it gone
            if self._seen.get(path) == stamp:
                continue
            self._seen[path] = stamp
            events.extend(self._load(path))
        for path in sorted(set(self._seen) - set(present)):
            del self._seen[path]
            old = self._current.pop(path, None)
            if old is not None:
                events.append(ManifestEvent(Change.REMOVED, path, old))
        return events

    def _load(self, path: Path) -> list[ManifestEvent]:
        kept = self._current.get(path)
        try:
            cloud = load_cloud(path, self.catalog, with_template=self.with_template)
        except ConfigError as exc:
            return [ManifestEvent(Change.REFUSED, path, kept, tuple(exc.problems))]
        except OSError as exc:
            # A file this manifest names (a list, a template) went away or cannot be read
            # while it was loaded: refused like any bad input, never the watcher's end.
            problem = Problem(str(exc.filename or path), None, None, "",
                              f"cannot read: {exc.strerror or exc}")
            return [ManifestEvent(Change.REFUSED, path, kept, (problem,))]
        for other_path, other in self._current.items():
            if other_path != path and other.name == cloud.name:
                problem = Problem(str(path), None, None, "name",
                                  f"cloud {cloud.name!r} is already declared by {other_path}")
                return [ManifestEvent(Change.REFUSED, path, kept, (problem,))]
        if kept is not None and kept.digest == cloud.digest:
            return []  # touched, not changed
        self._current[path] = cloud
        # Stamp what this generation was built from, so that an edit of a list file shows.
        self._seen[path] = _stamp((path, *cloud.inputs)) or ()
        return [ManifestEvent(Change.LOADED, path, cloud)]


def _stamp(paths: Iterable[Path]) -> tuple[tuple[int, int], ...] | None:
    """(mtime, size) of each file; None when the first (the manifest) is gone."""
    out = []
    for i, path in enumerate(paths):
        try:
            st = path.stat()
        except OSError:
            if i == 0:
                return None
            out.append((-1, -1))  # a missing input is a change too
            continue
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)
