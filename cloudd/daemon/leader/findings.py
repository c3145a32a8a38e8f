"""What changed between two rounds of a provider's findings, so that only changes are logged.

The leader keeps the findings of the last `monitor` (one per node and check) and shows them
all in `inspect`; the event log and the agent's log get a line only when a finding appears,
changes its verdict or its message, or is no longer reported. A scheduler's state and jobs
(`Finding.state`, `Finding.jobs`) are shown but not compared: jobs come and go all the time.
Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloudd.providers.base import Finding

#: (node, check): "" as the node for a finding about the whole cloud.
Key = tuple[str, str]

#: The message of a finding that the provider no longer reports.
CLEARED = "no longer reported"


@dataclass(frozen=True)
class FindingChange:
    finding: Finding
    """As reported now; for a cleared one, as last reported with `ok` and message cleared."""
    cleared: bool = False


def keyed(findings: Iterable[Finding]) -> dict[Key, Finding]:
    """The findings by (node, check); of two with the same key, the last one counts."""
    return {(f.node, f.check): f for f in findings}


def changes(before: Mapping[Key, Finding],
            after: Mapping[Key, Finding]) -> tuple[FindingChange, ...]:
    """The findings of `after` that are new or whose verdict or message changed, then those
    of `before` that `after` no longer has; each in the order of its round."""
    out = [FindingChange(f) for key, f in after.items()
           if (old := before.get(key)) is None or (old.ok, old.message) != (f.ok, f.message)]
    out += [FindingChange(Finding(f.check, True, CLEARED, f.node), cleared=True)
            for key, f in before.items() if key not in after]
    return tuple(out)
