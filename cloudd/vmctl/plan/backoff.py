"""The leader's backoff for repeated failures, kept per node and per host.

A failed action is never retried inline: the controller records it here and the next plan
skips the subject until `not_before`. The delays are cloudd's one backoff
(`cloudd.backoff.Backoff`); their jitter is derived from the subject's name and its failure
count (or drawn from an injected `random.Random`), so that a replay gives the same schedule and
nodes that failed together do not retry together.
A subject's count is forgotten after a stable period: for a node, its domain has been running
that long and its agent answers (a hung guest runs too: its resets must add up); for a host, it
has not failed for that long.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cloudd.backoff import Backoff, hashed_unit
from cloudd.vmctl.plan.model import DomainObs, DomainState, FailRecord


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 1.0
    """Seconds to wait after the first failure."""
    factor: float = 2.0
    """Growth per further failure."""
    cap: float = 300.0
    """Longest wait, seconds: a VM stays down at most this long once its cause is gone."""
    jitter: float = 0.25
    """Share of the delay taken off at random, in [0, 1]: the wait never exceeds the nominal
    delay, so `cap` is a true bound."""
    stable: float = 600.0
    """Seconds of good behaviour after which a subject's failure count is forgotten."""

    backoff: Backoff = field(init=False, repr=False, compare=False)
    """The delays themselves, built from the fields above."""

    def __post_init__(self) -> None:
        # Built here, so that nonsense is refused with the policy, not at the first failure.
        object.__setattr__(self, "backoff", Backoff(base=self.base, cap=self.cap,
                                                    factor=self.factor, jitter=self.jitter))
        if self.stable <= 0:
            raise ValueError(f"backoff stable period must be > 0, not {self.stable}")


def delay(policy: BackoffPolicy, *, subject: str, count: int,
          rng: random.Random | None = None) -> float:
    """Seconds to wait after the `count`-th consecutive failure of `subject`."""
    unit = rng.random() if rng is not None else hashed_unit(subject, count)
    return policy.backoff.delay(count, unit)


def failed(previous: FailRecord | None, *, subject: str, now: float, policy: BackoffPolicy,
           rng: random.Random | None = None) -> FailRecord:
    """The record after one more failure of `subject` at `now`."""
    count = 1 if previous is None else previous.count + 1
    wait = delay(policy, subject=subject, count=count, rng=rng)
    return FailRecord(count=count, last=now, not_before=now + wait)


class Ledger:
    """The controller's failure bookkeeping; plans read it through `snapshot()`."""

    def __init__(self, policy: BackoffPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng
        self._records: dict[str, FailRecord] = {}

    def failed(self, subject: str, *, now: float) -> FailRecord:
        record = failed(self._records.get(subject), subject=subject, now=now,
                        policy=self.policy, rng=self._rng)
        self._records[subject] = record
        return record

    def get(self, subject: str) -> FailRecord | None:
        return self._records.get(subject)

    def forget(self, subject: str) -> None:
        self._records.pop(subject, None)

    def settle_nodes(self, domains: Iterable[DomainObs], *, now: float,
                     unreachable: Collection[str] = ()) -> list[str]:
        """Forget nodes whose domain has run for the stable period, unless their agent is
        `unreachable`; returns them, sorted."""
        reset = sorted({d.node for d in domains
                        if d.node in self._records and d.node not in unreachable
                        and d.state is DomainState.RUNNING
                        and now - d.since >= self.policy.stable
                        and d.since >= self._records[d.node].last})
        for node in reset:
            del self._records[node]
        return reset

    def settle_quiet(self, *, now: float) -> list[str]:
        """Forget subjects (hosts) that have not failed for the stable period."""
        reset = sorted(s for s, r in self._records.items() if now - r.last >= self.policy.stable)
        for subject in reset:
            del self._records[subject]
        return reset

    def snapshot(self) -> Mapping[str, FailRecord]:
        return MappingProxyType(dict(self._records))
