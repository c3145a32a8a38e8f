"""The manifest's `users:`: the people who submit jobs, with the same uid on every node.

A batch cluster runs a job as its submitter on whichever node the scheduler picks, and its
files (a shared home, an output file read back) are owned by a number, not a name: every
node must know each user under the same uid. The manifest lists them once:

    users:
      - {name: alice, uid: 1001}
      - {name: bob, uid: 1002, gid: 2000, groups: [users]}

`gid` is the user's primary group (default: the uid, a group of the user's own name);
`groups` are supplementary groups the nodes already have. The leader carries the list to
every node in its role assignment, and the node makes or updates each user
(`cloudd.daemon.node.users`). Only ordinary accounts: uids and gids in Debian's range for
them (1000 to 59999), names that `useradd` takes and no option could be read from.

The same rules check the manifest (`check_users`: one placed problem per mistake) and what a
node is sent (`refusal`: one sentence), so that a node never runs `useradd` on something no
manifest could say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from cloudd.config.plain import ValueLimits
from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

#: A user or group name `useradd` takes on Debian, lower case, at most 32 characters; never
#: starting with '-' (no name is ever read as an option). `\Z`, not `$`: `$` lets a name end
#: in a newline.
NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
#: Debian's range for ordinary users' and their groups' ids (`/etc/login.defs`'s UID_MIN and
#: UID_MAX): below are the system's accounts, above the ranges reserved for other uses.
ID_MIN, ID_MAX = 1000, 59999
#: Most users a manifest may list: a batch cluster's submitters, not a directory service.
MAX_USERS = 256
#: Most supplementary groups per user.
MAX_GROUPS = 32


def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a user or group name (lowercase letters, digits, "
                         "'_' and '-', at most 32, starting with a letter or '_')")
    return value


PosixName = Annotated[str, ValueLimits(check=_name)]
Id = Annotated[int, ValueLimits(ge=ID_MIN, le=ID_MAX)]


@dataclass(frozen=True, kw_only=True)
class UserIn:
    """One entry of `users:` as written (read by `cloudd.config.plain.read_model`)."""

    name: PosixName
    uid: Id
    gid: Id | None = None
    groups: Annotated[list[PosixName], ValueLimits(max_length=MAX_GROUPS)] = field(
        default_factory=list)


@dataclass(frozen=True)
class User:
    """A user every node of the cloud has, with every default applied."""

    name: str
    uid: int
    #: the primary group's id (the uid when the manifest gives none)
    gid: int
    #: supplementary groups, as written (each exists on the nodes)
    groups: tuple[str, ...] = ()


def user_of(entry: UserIn) -> User:
    return User(entry.name, entry.uid, entry.uid if entry.gid is None else entry.gid,
                tuple(entry.groups))


def check_users(doc: Document, users: Iterable[UserIn]) -> list[Problem]:
    """One placed problem per rule broken across the list: a name, a uid given twice, a
    group listed twice for one user (each entry's own fields are the model's)."""
    problems: list[Problem] = []
    names: dict[str, int] = {}
    uids: dict[int, str] = {}
    for i, u in enumerate(users):
        loc: Loc = ("users", i)
        if u.name in names:
            problems.append(doc.place((*loc, "name"), message=(
                f"user {u.name} is listed twice (also users[{names[u.name]}])")))
        else:
            names[u.name] = i
        if u.uid in uids:
            problems.append(doc.place((*loc, "uid"), message=(
                f"uid {u.uid} is already given to user {uids[u.uid]}")))
        else:
            uids[u.uid] = u.name
        seen: set[str] = set()
        for j, group in enumerate(u.groups):
            if group in seen:
                problems.append(doc.place((*loc, "groups", j), message=(
                    f"group {group} is listed twice for user {u.name}")))
            seen.add(group)
    return problems


def refusal(users: Iterable[User]) -> str | None:
    """What is wrong with a list of users no manifest could hold (None: nothing)."""
    names: set[str] = set()
    uids: set[int] = set()
    for u in users:
        if not NAME.match(u.name):
            return f"user name {u.name!r} is not a user name"
        for number in (u.uid, u.gid):
            if not ID_MIN <= number <= ID_MAX:
                return (f"user {u.name}'s id {number} is outside {ID_MIN} to {ID_MAX}, the "
                        "range of ordinary users")
        bad = next((g for g in u.groups if not NAME.match(g)), None)
        if bad is not None or len(set(u.groups)) != len(u.groups):
            return f"user {u.name}'s groups are not distinct group names"
        if u.name in names or u.uid in uids:
            return f"user {u.name} or its uid {u.uid} is listed twice"
        names.add(u.name)
        uids.add(u.uid)
    return None
