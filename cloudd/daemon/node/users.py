"""The manifest's users on a node: made or brought in line, with the ids the manifest gives.

The leader sends every node the cloud's users (`cloudd.config.users`) in its assignment;
before the role converges, the node makes sure each exists with its uid, its primary group
(gid) and its supplementary groups, so that a job submitted on one node runs as the same
uid on another. The decision is pure (`plan`: the node's `etc/passwd` and `etc/group` as
text in, the commands to run or one refusal out); `ensure_users` reads the files, runs the
commands and says what it did.

- A user that is missing is made: its primary group first when no group has that gid
  (`groupadd -g GID NAME`), then `useradd -u UID -g GROUP [-G GROUPS] -m -s /bin/bash NAME`.
- A user that exists with the manifest's uid is brought in line: its primary group set, the
  missing supplementary groups added (`usermod -g GROUP -a -G ...`); nothing is taken away, and a
  user the manifest no longer lists is left as it is (its files, its jobs).
- A user that exists with another uid, a uid held by another name, a group of the user's name
  with another gid, or a supplementary group the node does not have: refused, one sentence,
  and nothing is run. cloudd never takes over an account it did not make with these ids.

Names and ids are checked once more here (`users.refusal`), so no command line is built from
anything a manifest could not say. Only the files under the node's system root are read
(`NodeSystem.system_root`); with another root than `/` the commands get `--prefix ROOT`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd import children
from cloudd.config.users import User, refusal
from cloudd.errors import PermanentError

Command = tuple[str, ...]


@dataclass(frozen=True)
class Account:
    """One line of `etc/passwd` or `etc/group`: a name and its id (and, for a user, its
    primary gid; for a group, its members)."""

    name: str
    id: int
    gid: int = -1
    members: tuple[str, ...] = ()


def accounts(text: str, *, groups: bool) -> dict[str, Account]:
    """name -> Account for the lines of a passwd (or, `groups`, group) file."""
    out: dict[str, Account] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < (4 if groups else 7) or not fields[2].isdigit():
            continue  # a comment, a NIS `+` line, a damaged line: not an account to plan on
        if groups:
            members = tuple(m for m in fields[3].split(",") if m)
            out[fields[0]] = Account(fields[0], int(fields[2]), members=members)
        elif fields[3].isdigit():
            out[fields[0]] = Account(fields[0], int(fields[2]), gid=int(fields[3]))
    return out


@dataclass(frozen=True)
class Plan:
    """The commands to run, in order, or why none may run; `what` says what they do."""

    commands: tuple[Command, ...] = ()
    what: tuple[str, ...] = ()
    refusal: str | None = None


def plan(users: Sequence[User], *, passwd: str, group: str) -> Plan:
    """What makes the node's accounts hold `users`, given its `passwd` and `group` texts."""
    why = refusal(users)
    if why is not None:
        return Plan(refusal=f"the leader's users: {why}")
    people = accounts(passwd, groups=False)
    by_uid = {a.id: a.name for a in people.values()}
    groups = accounts(group, groups=True)
    # Commands name the primary group by name: with `--prefix`, shadow's tools look a
    # numeric gid up in this machine's groups, not in the prefix's.
    gids = {a.id: a.name for a in reversed(groups.values())}
    commands: list[Command] = []
    what: list[str] = []
    for u in users:
        have = people.get(u.name)
        if have is not None and have.id != u.uid:
            return Plan(refusal=(
                f"user {u.name} exists on this node with uid {have.id}, and the manifest "
                f"gives it uid {u.uid}: cloudd does not take over an account it did not make"))
        if have is None and u.uid in by_uid:
            return Plan(refusal=(f"uid {u.uid} is user {by_uid[u.uid]}'s on this node, and "
                                 f"the manifest gives it to {u.name}"))
        absent = [g for g in u.groups if g not in groups]
        if absent:
            return Plan(refusal=(f"user {u.name}'s group {absent[0]} does not exist on this "
                                 "node (cloudd adds users to groups, it makes none but "
                                 "their primary ones)"))
        if u.gid not in gids:
            own = groups.get(u.name)
            if own is not None:
                return Plan(refusal=(
                    f"group {u.name} exists on this node with gid {own.id}, and user "
                    f"{u.name}'s primary group is gid {u.gid}"))
            commands.append(("groupadd", "-g", str(u.gid), u.name))
            what.append(f"group {u.name} made with gid {u.gid}")
            groups[u.name] = Account(u.name, u.gid)
            gids[u.gid] = u.name
        if have is None:
            joined: Command = ("-G", ",".join(u.groups)) if u.groups else ()
            commands.append(("useradd", "-u", str(u.uid), "-g", gids[u.gid], *joined, "-m",
                             "-s", "/bin/bash", u.name))
            what.append(f"user {u.name} made with uid {u.uid}")
            by_uid[u.uid] = u.name
            continue
        missing = tuple(g for g in u.groups if u.name not in groups[g].members)
        # `-g` only when it changes anything: shadow 4.13's usermod looks its group up in
        # this machine's groups even with `--prefix` (a test node's root), where -a -G works.
        primary: Command = ("-g", gids[u.gid]) if have.gid != u.gid else ()
        added: Command = ("-a", "-G", ",".join(missing)) if missing else ()
        if primary or added:
            commands.append(("usermod", *primary, *added, u.name))
            changes = [f"gid {u.gid}"] if primary else []
            changes += [f"groups {', '.join(missing)}"] if missing else []
            what.append(f"user {u.name} given {' and '.join(changes)}")
    return Plan(tuple(commands), tuple(what))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return ""


def rooted(command: Command, root: Path) -> Command:
    """`command` for the system under `root` (shadow's tools take `--prefix`)."""
    return command if root == Path("/") else (command[0], "--prefix", str(root), *command[1:])


async def ensure_users(users: Sequence[User], *, root: Path, exec_prefix: Iterable[str] = (),
                       logger: Any = None) -> tuple[str, ...]:
    """Make the node's accounts hold `users` (see the module docstring); returns what was
    done. Raises PermanentError with one sentence when it may not or a command fails."""
    if not users:
        return ()
    p = plan(users, passwd=await asyncio.to_thread(_read, root / "etc/passwd"),
             group=await asyncio.to_thread(_read, root / "etc/group"))
    if p.refusal is not None:
        raise PermanentError(p.refusal)
    for command, done in zip(p.commands, p.what, strict=True):
        argv = (*exec_prefix, *rooted(command, root))
        code, out = await children.run(argv)
        if code != 0:
            said = out.strip().splitlines()
            raise PermanentError(f"{command[0]} failed ({code}) making the "
                                 f"manifest's users: {said[-1] if said else 'no output'}")
        if logger is not None:
            logger.info("user_changed", reason=done)
    return p.what
