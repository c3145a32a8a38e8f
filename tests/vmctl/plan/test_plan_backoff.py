"""Backoff: exponential, capped, jittered deterministically, forgotten after a stable period."""

from __future__ import annotations

import random

import pytest

from cloudd.vmctl.plan import BackoffPolicy, DomainObs, DomainState, Ledger, delay

POLICY = BackoffPolicy(base=1.0, factor=2.0, cap=60.0, jitter=0.25, stable=600.0)


def test_delay_grows_exponentially_within_jitter_and_caps() -> None:
    for count, raw in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)]:
        d = delay(POLICY, subject="n1", count=count)
        assert raw * 0.75 <= d <= raw, (count, d)  # jitter only takes a share off


def test_jitter_is_deterministic_per_subject_and_spreads_subjects() -> None:
    assert delay(POLICY, subject="n1", count=3) == delay(POLICY, subject="n1", count=3)
    spread = {delay(POLICY, subject=f"n{i}", count=3) for i in range(20)}
    assert len(spread) == 20


def test_injected_random_source_is_used() -> None:
    a = delay(POLICY, subject="n1", count=4, rng=random.Random(7))
    assert a == delay(POLICY, subject="other", count=4, rng=random.Random(7))
    assert 6.0 <= a <= 8.0


def test_ledger_counts_per_subject_and_sets_deadlines() -> None:
    ledger = Ledger(POLICY)
    first = ledger.failed("n1", now=100.0)
    second = ledger.failed("n1", now=101.0)
    assert (first.count, second.count) == (1, 2)
    assert 101.0 + 1.5 <= second.not_before <= 101.0 + 2.0
    assert ledger.failed("h1", now=101.0).count == 1
    assert set(ledger.snapshot()) == {"n1", "h1"}


def test_node_is_forgotten_only_after_running_stably_since_its_last_failure() -> None:
    ledger = Ledger(POLICY)
    ledger.failed("n1", now=100.0)
    running = [DomainObs("h1", "n1", "c1", DomainState.RUNNING, since=110.0)]
    assert ledger.settle_nodes(running, now=709.0) == []
    crashed = [DomainObs("h1", "n1", "c1", DomainState.SHUTOFF, since=50.0)]
    assert ledger.settle_nodes(crashed, now=5000.0) == []
    assert ledger.settle_nodes(running, now=710.0) == ["n1"]
    assert ledger.get("n1") is None
    ledger.failed("n1", now=800.0)
    old = [DomainObs("h1", "n1", "c1", DomainState.RUNNING, since=10.0)]
    assert ledger.settle_nodes(old, now=5000.0) == []  # running since before its last failure


def test_a_node_whose_agent_is_unreachable_is_never_stable() -> None:
    ledger = Ledger(POLICY)
    ledger.failed("n1", now=100.0)  # a reset of a hung guest: it runs since then
    running = [DomainObs("h1", "n1", "c1", DomainState.RUNNING, since=100.0)]
    assert ledger.settle_nodes(running, now=5000.0, unreachable={"n1"}) == []
    assert ledger.settle_nodes(running, now=5000.0, unreachable={"n2"}) == ["n1"]


def test_policy_refuses_nonsense_when_built() -> None:
    for bad in ({"base": 0.0}, {"base": 10.0, "cap": 5.0}, {"jitter": 2.0}, {"stable": 0.0}):
        with pytest.raises(ValueError):
            BackoffPolicy(**bad)  # type: ignore[arg-type]


def test_quiet_subjects_are_forgotten() -> None:
    ledger = Ledger(POLICY)
    ledger.failed("h1", now=0.0)
    ledger.failed("h2", now=500.0)
    assert ledger.settle_quiet(now=600.0) == ["h1"]
    assert ledger.failed("h1", now=601.0).count == 1
