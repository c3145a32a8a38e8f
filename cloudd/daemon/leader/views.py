"""What the leader's parts show readers: the views a `MemberSnapshot` holds, light to import.

A node agent takes snapshots too (its operator's room reads them) but never leads, so it must
not load the controller, the hooks or the host calls for their view types: they live here,
and those modules re-export them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudd.daemon.leader.elastic import ElasticChange
    from cloudd.providers.base import Finding
    from cloudd.vmctl import backend as vb
    from cloudd.vmctl.plan import DomainObs, FailRecord, Planned

    HostReport = tuple[tuple[DomainObs, ...], vb.Inventory | None]


@dataclass(frozen=True)
class ControllerView:
    """What the controller last saw and decided, for `inspect` and the metrics (read-only)."""

    hosts: Mapping[str, HostReport]
    """Each host's last list of domains and its inventory (None: unreachable now)."""
    last_plan: Planned
    node_fails: Mapping[str, FailRecord]
    """Failed nodes and when they may be tried again (monotonic seconds)."""
    host_fails: Mapping[str, FailRecord]


@dataclass(frozen=True)
class HookFailure:
    """A hook that keeps failing, for `inspect`."""

    hook: str
    subject: str
    """The role for a configure; else the hook's name."""
    count: int
    not_before: float
    """Monotonic seconds of the next try."""
    error: str


@dataclass(frozen=True)
class HooksView:
    """What the leader's hooks last found, for `inspect` and the metrics (read-only)."""

    findings: tuple[Finding, ...] = ()
    failures: tuple[HookFailure, ...] = ()
    holding: bool = False
    """The cloud is held for the provider's stop."""


@dataclass(frozen=True)
class CallTiming:
    seq: int
    """Numbers every call since the agent started, so a reader counts each one once."""
    op: str
    seconds: float


@dataclass(frozen=True)
class ElasticDecision:
    """One change the elastic loop made, as `cloudd-cli plan` shows it."""

    at: float  # wall time
    term: int
    change: ElasticChange


@dataclass(frozen=True)
class ElasticView:
    """Each elastic role's state and the last decisions, while this agent leads."""

    roles: tuple[Finding, ...] = ()
    decisions: tuple[ElasticDecision, ...] = ()
