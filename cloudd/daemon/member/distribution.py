"""Who gets the cloud's manifest, and when: so that every member has the generation in force.

Pure. Two duties meet here:
- the acting leader sends each live member the generation in force once (again when the
  generation changes, or after the member was down, or when a new leader takes over: the
  caller then forgets what was offered);
- every pool host, leader or not, offers the manifest it holds to members that do not
  answer, once per `RESEED_EVERY` seconds, so that hosts that never had it (a cloud started
  from one machine) come up and join; a `ManifestOffer` of origin `seed` is taken only by an
  agent that serves no cloud yet, and only from a host certificate (the dispatch table), so
  a node offers none.
`offered` remembers, per member, the key of the last offer made to it: the generation's
digest for a live member, the digest and the time slot for one that does not answer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from cloudd.daemon.network.catalogue import OfferOrigin

#: Seconds between two offers to a member that does not answer: often enough that a host
#: coming up joins within seconds, rarely enough that a dead one costs nothing.
RESEED_EVERY = 10.0


@dataclass(frozen=True)
class Offer:
    member: str
    key: str
    """What was offered; the caller keeps it in `offered` so as not to offer it twice."""
    origin: OfferOrigin


def offers(*, me: str, members: Iterable[str], alive: Collection[str], leading: bool,
           seeding: bool, digest: str, now: float,
           offered: Mapping[str, str]) -> tuple[Offer, ...]:
    """The manifest offers to send now (`now` on the monotonic clock); `seeding`: this
    member is a pool host, whose seeds an agent with no cloud takes."""
    if not (leading or seeding):
        return ()
    origin = OfferOrigin.LEADER if leading else OfferOrigin.SEED
    slot = int(now // RESEED_EVERY)
    out = []
    for name in members:
        if name == me:
            continue
        answers = name in alive
        if answers and not leading:
            continue
        key = digest if answers else f"{digest}@{slot}"
        if offered.get(name) != key:
            out.append(Offer(name, key, origin))
    return tuple(out)
