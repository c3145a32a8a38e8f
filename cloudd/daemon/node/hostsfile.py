"""cloudd's block of a node's `/etc/hosts`: every node of the cloud by name, both ways.

The daemons of a batch cluster find each other by name (Slurm's `NodeName`, TORQUE's server
name and node list) and check who calls them by address: each node must resolve every other
node's name to its address and back. cloudd keeps one block per cloud in the node's
`/etc/hosts`, one line per node (`ADDRESS<TAB>NAME`, which answers both ways):

    # BEGIN cloudd batch
    192.0.2.20	batch-head-1
    192.0.2.21	batch-compute-1
    # END cloudd batch

Only types that ask for it get one (`TypeSpec.hosts_file`). The block is rewritten whenever
the leader's assignment names other peers (a node added or removed), and only when it
differs; every line outside it stays as it was. A file without the block gets it at its top:
the files source answers a name with the first line that names it, and a stock Debian image
names its own host on a `127.0.1.1` line that a scheduler would otherwise report as the
node's address. Such a line, outside the block, is left alone and logged
(`hosts_line_shadowed`), since it still answers some lookups.

The file is replaced atomically (`write_durable`, keeping its mode and owner), unless it is a
mount point in this agent's namespace (a container's or a test node's bind-mounted file, which
a rename cannot replace): then it is rewritten in place and fsynced. A block whose markers
are damaged (one without the other, or twice) is refused with one sentence: the file changes
only when cloudd knows which lines are its own. So is a name that is not a host name or an
address that is not an IP address: the entries come from the leader, and no entry may add a
line or a marker of its own to a file every lookup on the node reads.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudd.durable import write_durable
from cloudd.errors import PermanentError

HOSTS = Path("etc/hosts")
#: A name a hosts file can hold: letters, digits, '-' and '.', at most 253 (no blank, no '#',
#: no line break). `\Z`, not `$`: `$` lets a name end in a newline.
HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")


def begin(cloud: str) -> str:
    return f"# BEGIN cloudd {cloud}"


def end(cloud: str) -> str:
    return f"# END cloudd {cloud}"


@dataclass(frozen=True)
class Rewrite:
    """What `rewritten` makes of a hosts file: its new text (None: unchanged) and the lines
    outside the block that name a node of the cloud at another address."""

    text: str | None
    shadowed: tuple[str, ...] = ()


def block(cloud: str, entries: Iterable[tuple[str, str]]) -> list[str]:
    """The block's lines for (name, address) entries, sorted by name."""
    return [begin(cloud), *(f"{address}\t{name}" for name, address in sorted(entries)),
            end(cloud)]


def refusal(entries: Iterable[tuple[str, str]]) -> str | None:
    """Why (name, address) entries may not be written (None: they may)."""
    for name, address in entries:
        if not HOSTNAME.match(name):
            return f"node name {name!r} is not a host name the hosts file can hold"
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return f"node {name}'s address {address!r} is not an IP address"
    return None


def rewritten(text: str, cloud: str, entries: Sequence[tuple[str, str]]) -> Rewrite:
    """`text` (a hosts file) with the block of `cloud` holding exactly `entries`."""
    why = refusal(entries)
    if why is not None:
        raise PermanentError(why)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == begin(cloud)]
    ends = [i for i, line in enumerate(lines) if line.strip() == end(cloud)]
    if len(starts) > 1 or len(ends) > 1 or len(starts) != len(ends) or (
            starts and ends[0] < starts[0]):
        raise PermanentError(
            f"the hosts file's lines {begin(cloud)!r} and {end(cloud)!r} are not one pair in "
            "that order: mend them by hand, cloudd will not guess which lines are its own")
    new = block(cloud, entries)
    if starts:
        outside = lines[:starts[0]] + lines[ends[0] + 1:]
        out = lines[:starts[0]] + new + lines[ends[0] + 1:]
    else:
        outside, out = lines, new + lines
    result = "\n".join(out) + "\n"
    return Rewrite(None if result == text else result, shadowed(outside, entries))


def shadowed(lines: Iterable[str], entries: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The lines of `lines` that name a node at an address other than its own."""
    where = dict(entries)
    out = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and any(where.get(name, fields[0]) != fields[0]
                                    for name in fields[1:]):
            out.append(line.strip())
    return tuple(out)


def write_hosts(path: Path, cloud: str, entries: Sequence[tuple[str, str]]) -> Rewrite:
    """Keep the block of `cloud` in the hosts file at `path` (made, 0644, when missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        st = os.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        text, mode, owner = "", 0o644, None
    change = rewritten(text, cloud, entries)
    if change.text is None:
        return change
    data = change.text.encode("utf-8", errors="surrogateescape")
    try:
        write_durable(path, data, mode=mode, owner=owner)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        _in_place(path, data)  # a mount point here: a rename cannot replace it
    return change


def _in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
