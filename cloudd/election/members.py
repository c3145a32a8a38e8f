"""The cloud's member list: names, which of them are pool hosts, and their priority.

Theory of operation: the manifest lists every host and node; a new manifest generation may
add or drop nodes (`AgentCore.change_roster`) and, more rarely, change the pool hosts (the
election then starts over, as after a restart); between generations only liveness changes.
`Roster` fixes, for everyone alike, who outranks whom in the bully election and which members
form the lease quorum (the hosts). Every pool host outranks
every node, whatever their priorities: only pool hosts may lead (`may_lead`), since a
leader acts on the hosts' VMs and a node is a tenant's VM that may be compromised. Within
each kind, priority is an explicit integer, higher wins; ties (and the default, all zero)
fall back to the listed order, first listed first, so that every agent computes the same
order from the same manifest.
A pool of exactly two hosts may declare itself one (`two_host`, twohost.py): its quorum is
still both hosts, but a host that has fenced the other counts it as granted until it is seen
again. Any other number of hosts with that setting is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloudd.election.config import TwoHost
from cloudd.errors import ConfigError, Problem


@dataclass(frozen=True)
class Member:
    """One agent of the cloud. `host`: a pool host, which grants leader leases."""

    name: str
    host: bool = False
    priority: int = 0


class Roster:
    """The member list with its derived orders; immutable after construction."""

    def __init__(self, members: Iterable[Member], *, two_host: TwoHost | None = None) -> None:
        self.members: tuple[Member, ...] = tuple(members)
        #: The two-host rule's settings, or None: a plain majority pool.
        self.two_host = two_host.validate() if two_host is not None else None
        problem = _check(self.members, two_host)
        if problem is not None:
            field, why = problem
            raise ConfigError([Problem(file="<roster>", line=None, column=None, field=field,
                                       message=why)])
        count = len(self.members)
        # Hosts first whatever the priorities: a node never outranks a pool host.
        self._rank = {m.name: (m.host, m.priority, count - i)
                      for i, m in enumerate(self.members)}
        self.names: tuple[str, ...] = tuple(m.name for m in self.members)
        self.hosts: frozenset[str] = frozenset(m.name for m in self.members if m.host)
        #: Host leases a leader needs: a strict majority of the pool's hosts.
        self.quorum: int = len(self.hosts) // 2 + 1
        #: Names from the highest priority to the lowest.
        self.by_priority: tuple[str, ...] = tuple(
            sorted(self.names, key=lambda n: self._rank[n], reverse=True))
        self._position = {n: i for i, n in enumerate(self.by_priority)}

    def __len__(self) -> int:
        return len(self.members)

    def pool(self) -> tuple[Member, ...]:
        """The pool hosts in roster order: what leases, quorum and host ranks derive from."""
        return tuple(m for m in self.members if m.host)

    def __contains__(self, name: object) -> bool:
        return name in self._rank

    def may_lead(self, name: str) -> bool:
        """True for pool hosts: the only members that may stand for election and lead."""
        return name in self.hosts

    def outranks(self, a: str, b: str) -> bool:
        """True when `a` has a higher election priority than `b`."""
        return self._rank[a] > self._rank[b]

    def higher_than(self, name: str) -> tuple[str, ...]:
        """Members that outrank `name`, highest first."""
        return self.by_priority[:self._position[name]]


def _check(members: tuple[Member, ...], two_host: TwoHost | None) -> tuple[str, str] | None:
    if not members:
        return "members", "the cloud lists no members"
    seen: set[str] = set()
    for i, m in enumerate(members):
        if not m.name:
            return f"members[{i}].name", "is empty"
        if m.name in seen:
            return f"members[{i}].name", f"{m.name!r} is listed twice"
        seen.add(m.name)
    if not any(m.host for m in members):
        return "members", "no member is a pool host, so no leader could ever get a quorum"
    hosts = sum(1 for m in members if m.host)
    if two_host is not None and hosts != 2:
        return "two_host", f"a two-host pool has exactly two pool hosts, and this one has {hosts}"
    return None
