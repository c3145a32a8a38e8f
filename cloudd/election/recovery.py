"""Relearning the terms after a lost term file: what a pool host may prove, and from whom.

Theory of operation. A pool host's persisted terms are its promises: the election's `term`
file bounds every lease it granted (a host grants each term to one candidate only) and every
term it proposed; the host agent's `highest-term` bounds the host commands it obeyed. When
either file is lost at start (set aside as corrupt, see `cloudd.durable`), the host no longer
knows which terms it already gave away. Granting such a term again to another candidate could
make two leaders of one term, so until it has relearned a safe floor the host grants no lease
(`Bully._grant`), never stands for election (`Bully._run`) and runs no host command
(`cloudd.daemon.host.duties`). It may follow a leader meanwhile; a follower promises nothing.

Why the other hosts can tell it. A term this host granted matters only if its candidate won
it, and a winner holds grants from a majority M of the pool's n hosts, each of which persisted
the term before granting (`persisted` only grows). Other than this host, M has at least
q - 1 members (q = the quorum) among the n - 1 other hosts; any set of n - q + 1 other hosts
meets every such M. So once that many other pool hosts have each told this host their
persisted term (`LeaderIs.highest`), the largest of them is at least every term this host
could have granted to a winner; terms it granted to a candidacy that failed were never led,
and giving them again cannot make a second leader. A host commands obeyed came with its own
lease to an acting leader, so their terms are bounded the same way.

Freshness. A winner's other grants may come slightly after this host's crash. Reports count
only when asked for once the host has waited out its leases (`ready_at`: one lease after the
start, which the grantor waits anyway): by then any candidacy that counted this host's old
grant has won or lapsed, so every host that granted it has persisted the term before it
answers. Only pool hosts that can vouch for their own terms report (`highest >= 0`): a node's
word never teaches a term, and a host relearning its own answers `-1`.

A pool of one host has nobody to learn from: it stays unproven until an operator restores the
term file (docs/operations.md, "State files").
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: What a member that cannot vouch for its own persisted term answers as its `highest`.
UNKNOWN = -1


def witnesses_needed(hosts: int, quorum: int) -> int:
    """Other pool hosts whose reports meet every majority that could have won a term with
    this host's grant: n - q + 1 (at least one)."""
    return max(1, hosts - quorum + 1)


@dataclass
class TermProof:
    """A pool host relearning its terms: whom to ask, what they said, and the floor proven."""

    others: frozenset[str]
    """The other pool hosts of the roster, who may vouch."""
    needed: int
    """Reports needed (`witnesses_needed`)."""
    ready_at: float
    """Reports count only when asked for from this instant on (see the module docstring)."""
    floor: int = 0
    """What survives this host's own files (a term file that was readable): the proof never
    goes below it."""
    ask_every: float = 0.2
    heard: dict[str, int] = field(default_factory=dict)
    """Each other host that vouched since `ready_at`, with its persisted term."""
    next_ask: float = 0.0

    def __post_init__(self) -> None:
        self.next_ask = self.ready_at

    @property
    def possible(self) -> bool:
        """False when the pool has too few other hosts to ever prove anything."""
        return len(self.others) >= self.needed

    def asks(self, now: float) -> list[str]:
        """The hosts to ask `WhoLeads` now: the silent ones, once per `ask_every`, from
        `ready_at` on."""
        if now < self.next_ask:
            return []
        self.next_ask = now + self.ask_every
        return sorted(self.others - set(self.heard))

    def report(self, host: str, highest: int, now: float) -> bool:
        """`host` said its persisted term is `highest` (`LeaderIs`). True when it counts:
        from another pool host, that can vouch, asked for after `ready_at`."""
        if host not in self.others or highest <= UNKNOWN or now < self.ready_at \
                or self.next_ask <= self.ready_at:  # not asked since ready_at yet
            return False
        self.heard[host] = max(highest, self.heard.get(host, UNKNOWN))
        return True

    def proven(self) -> int | None:
        """The floor proven (the largest report, or `floor`), or None while too few vouched."""
        if len(self.heard) < self.needed:
            return None
        return max(self.floor, *self.heard.values())

    def describe(self) -> str:
        """Why this host grants no lease and runs no host command yet, in words."""
        if not self.possible:
            return (f"its term file was set aside and the pool has no {self.needed} other "
                    f"host(s) to relearn it from: restore the term file")
        return (f"relearning its terms after a state file was set aside: heard "
                f"{len(self.heard)} of the {self.needed} other pool hosts needed")
