"""Which findings are logged: those that appear, change their verdict or message, or go."""

from __future__ import annotations

import pytest

from cloudd.daemon.leader.findings import CLEARED, FindingChange, changes, keyed
from cloudd.providers.base import Finding

UP = Finding("scheduler", True, "idle", "c1", state="idle")
DOWN = Finding("scheduler", False, "down: not responding", "c1", state="down")
UPSTREAM = Finding("upstream", True, "matches", "lb")


@pytest.mark.parametrize(("before", "after", "logged"), [
    ((), (UP,), [FindingChange(UP)]),
    ((UP,), (UP,), []),
    # jobs and state come and go: not a change
    ((UP,), (Finding("scheduler", True, "idle", "c1", state="alloc", jobs=("3",)),), []),
    ((UP,), (DOWN,), [FindingChange(DOWN)]),
    ((UP, UPSTREAM), (UPSTREAM,),
     [FindingChange(Finding("scheduler", True, CLEARED, "c1"), cleared=True)]),
    # the same check on two nodes is two findings
    ((UP,), (UP, Finding("scheduler", True, "idle", "c2")),
     [FindingChange(Finding("scheduler", True, "idle", "c2"))]),
])
def test_only_changes_are_logged(before: tuple[Finding, ...], after: tuple[Finding, ...],
                                 logged: list[FindingChange]) -> None:
    assert list(changes(keyed(before), keyed(after))) == logged


def test_of_two_findings_with_one_key_the_last_counts() -> None:
    assert keyed((UP, DOWN)) == {("c1", "scheduler"): DOWN}
