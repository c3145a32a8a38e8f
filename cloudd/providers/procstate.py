"""What the supervisor persists about its services, and how it recognises its processes later.

The agent may die (kill -9, upgrade) while its services keep running in their own sessions.
The next agent must find them again and must never start a second copy. A pid alone is not
enough, pids are reused; a pid together with the process start time from /proc/PID/stat (in
clock ticks since boot) names one process for the life of the machine.

The file is written with cloudd's one durable write (temporary file, fsync, rename, folder
fsync), so a crash leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cloudd.durable import write_durable
from cloudd.errors import PermanentError

FILE_NAME = "services.json"
VERSION = 1


class StateFileError(PermanentError):
    """The state file exists but cannot be used."""


@dataclass(frozen=True)
class ProcRecord:
    """One service as last seen by the agent."""

    name: str
    state: str
    pid: int | None = None
    #: Field 22 of /proc/PID/stat when the process was spawned or adopted.
    start_time: int | None = None
    starts: int = 0
    fatal_count: int = 0
    last_error: str = ""


def _stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces and ')'.
    return raw[raw.rindex(b")") + 2:].decode("ascii").split()


def proc_start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) process, or None when there is none with `pid`."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):  # exited, not reaped yet: not running
        return None
    return int(fields[19])


def is_same_process(pid: int, start_time: int) -> bool:
    return proc_start_time(pid) == start_time


def session_members(sid: int, *, outside_group: bool = False) -> list[int]:
    """Live processes whose session id is `sid` (a service's leftovers: its session is its pid).

    Linux does not hand out a pid that is still in use as a session or group id, so processes
    in session `sid` whose leader is gone can only be what is left of that service.
    `outside_group` keeps only those that left the group `sid` (what `killpg(sid)` misses).
    """
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if (fields is not None and fields[3] == str(sid) and fields[0] not in ("Z", "X")
                    and not (outside_group and fields[2] == str(sid))):
                members.append(int(entry))
    return members


def load(state_dir: Path) -> dict[str, ProcRecord]:
    """The records saved in `state_dir`, by service name; empty when nothing was saved."""
    path = state_dir / FILE_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StateFileError(f"{path}: expected an object with version {VERSION}")
    services = doc.get("services")
    if not isinstance(services, dict):
        raise StateFileError(f"{path}: 'services' must be an object")
    records = {}
    for name, raw in services.items():
        try:
            records[name] = ProcRecord(name=name, **{k: v for k, v in raw.items() if k != "name"})
        except (TypeError, AttributeError) as exc:
            raise StateFileError(f"{path}: services.{name}: {exc}") from None
        pid, start = records[name].pid, records[name].start_time
        if not (pid is None or isinstance(pid, int)) or not (start is None or
                                                             isinstance(start, int)):
            raise StateFileError(f"{path}: services.{name}: pid and start_time must be integers")
    return records


def save(state_dir: Path, records: dict[str, ProcRecord]) -> None:
    """Replace the saved records atomically."""
    # The node's folder also holds its services' data: created with the usual mode, not 0700.
    state_dir.mkdir(parents=True, exist_ok=True)
    doc = {"version": VERSION,
           "services": {name: asdict(rec) for name, rec in sorted(records.items())}}
    write_durable(state_dir / FILE_NAME, json.dumps(doc, indent=1, sort_keys=True),
                  mode=0o644)
