"""A loop in a daemon thread for the length of a `with` block: the labs' clients and
samplers (a site's writer and reader, libvirt's domain counter) run beside the test."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Subclasses call `_background()` when made and write `_run`, a loop that ends once
    `_stop` is set (waiting on it between rounds); `with` starts the thread and, at its
    end, stops it and waits for it (30 s at most)."""

    def _background(self, name: str = "background") -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        raise NotImplementedError
