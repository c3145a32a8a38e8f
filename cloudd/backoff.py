"""The one backoff: exponential delays with jitter, for everything in cloudd that retries.

The leader's failed actions, a service that keeps dying, a converge that fails, a transport
redial, a node asking its seeds for the manifest, the libvirt reconnect and the agent's port
all wait the same way: `base * factor**(count - 1)`, capped, with a share `jitter` of it
taken off at random so that many subjects that failed together do not retry together. The
jitter never adds to the delay, so `cap` is a true bound.

Pure: the random unit comes in (`rng.random()`, or `hashed_unit` when a replay must give the
same schedule), so cores can use it and tests can pin it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    """Seconds to wait after the first failure."""
    cap: float = 300.0
    """Longest wait, seconds."""
    factor: float = 2.0
    """Growth per further failure."""
    jitter: float = 0.25
    """Share of the delay taken off at random, in [0, 1]."""

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.factor >= 1
                and 0 <= self.jitter <= 1):
            raise ValueError(f"backoff needs 0 < base <= cap, factor >= 1 and jitter in "
                             f"[0, 1], not {self}")

    def nominal(self, count: int) -> float:
        """The delay after the `count`-th consecutive failure, before jitter."""
        if count < 1:
            return 0.0
        exponent = min(count - 1, 64)  # past 64 doublings every sane cap has been reached
        return min(self.cap, self.base * self.factor ** exponent)

    def delay(self, count: int, unit: float) -> float:
        """The delay after the `count`-th failure; `unit` is a random number in [0, 1)."""
        return self.nominal(count) * (1.0 - self.jitter * unit)


def hashed_unit(subject: str, count: int) -> float:
    """A number in [0, 1) fixed by the subject and count: jitter that a replay reproduces."""
    digest = hashlib.blake2b(f"{subject}:{count}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
