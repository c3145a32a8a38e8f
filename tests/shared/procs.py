"""Whether a process runs: the node side's fast tests and its real-service test both ask."""

from __future__ import annotations

from cloudd.providers import procstate


def alive(pid: int) -> bool:
    return procstate.proc_start_time(pid) is not None
