"""Timing profiles and the roster: documented defaults, one precise error per bad field."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.errors import ConfigError


def test_production_fails_over_well_under_a_second_for_small_clouds() -> None:
    t = Timing.production().validate()
    low, high = t.suspicion_timeouts(5)
    assert low == pytest.approx(0.2) and high == pytest.approx(0.6)
    assert t.lease_duration < 1.0 and t.probe_interval <= 0.2


def test_local_profile_is_twice_as_fast_and_valid() -> None:
    p, loc = Timing.production(), Timing.local().validate()
    assert loc.probe_interval == p.probe_interval / 2
    assert loc.lease_duration == p.lease_duration / 2
    assert loc.suspicion_mult == p.suspicion_mult and loc.indirect_checks == p.indirect_checks


def test_nodes_are_given_more_patience_than_hosts() -> None:
    t, loc = Timing.production(), Timing.local()
    assert (t.node_probe_timeout, t.node_suspicion) == (1.0, 10.0)
    assert (loc.node_probe_timeout, loc.node_suspicion) == (0.5, 5.0)
    assert t.node_probe_timeout > 10 * t.probe_timeout
    assert t.node_suspicion > 10 * t.suspicion_timeouts(10)[1]
    # two rounds of six periods, the probe's two windows, the suspicion, one period
    assert t.node_dead_bound(7) == pytest.approx(1.2 + 2.0 + 10.0 + 0.1)
    assert t.settle_bound(7) == replace(t, node_suspicion=60.0).settle_bound(7)


def test_suspicion_scales_with_log10_n() -> None:
    t = Timing.production()
    assert t.suspicion_timeouts(1000)[0] == pytest.approx(3 * t.suspicion_timeouts(10)[0])
    assert t.retransmits(1000) == t.retransmit_mult * math.ceil(math.log10(1001))


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"probe_interval": 0.0}, "probe_interval", "must be positive"),
    ({"probe_timeout": 0.2}, "probe_timeout", "shorter than probe_interval"),
    ({"renew_interval": 0.4}, "renew_interval", "shorter than lease_duration"),
    ({"no_quorum": "panic"}, "no_quorum", "must be one of stop, freeze"),
    ({"suspicion_max_mult": 0.5}, "suspicion_max_mult", "at least 1"),
    ({"node_probe_timeout": 0.01}, "node_probe_timeout", "not be shorter than probe_timeout"),
    ({"node_suspicion": 0.1}, "node_suspicion", "a host's shortest suspicion (0.2 s)"),
    ({"node_suspicion": -1.0}, "node_suspicion", "must be positive"),
])
def test_bad_timing_is_refused_with_one_message(change: dict[str, object], field: str,
                                                words: str) -> None:
    with pytest.raises(ConfigError) as err:
        replace(Timing(), **change).validate()  # type: ignore[arg-type]
    assert len(err.value.problems) == 1
    assert err.value.problems[0].field == field and words in str(err.value)


def test_hosts_first_then_priority_then_listed_order() -> None:
    r = Roster([Member("a"), Member("b", host=True), Member("c", priority=5), Member("d"),
                Member("e", host=True, priority=1)])
    assert r.by_priority == ("e", "b", "c", "a", "d")
    assert r.higher_than("c") == ("e", "b") and r.outranks("a", "d")
    assert r.hosts == frozenset({"b", "e"}) and r.quorum == 2


def test_no_node_outranks_a_pool_host_whatever_its_priority() -> None:
    r = Roster([Member("n", priority=100), Member("h", host=True, priority=-5)])
    assert r.outranks("h", "n") and not r.outranks("n", "h")
    assert r.may_lead("h") and not r.may_lead("n")


@pytest.mark.parametrize(("hosts", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_quorum_is_a_strict_majority_of_hosts(hosts: int, quorum: int) -> None:
    r = Roster([Member(f"h{i}", host=True) for i in range(hosts)] + [Member("n")])
    assert r.quorum == quorum


@pytest.mark.parametrize(("members", "words"), [
    ([], "lists no members"),
    ([Member("a", host=True), Member("a")], "'a' is listed twice"),
    ([Member("", host=True)], "is empty"),
    ([Member("a"), Member("b")], "no member is a pool host"),
])
def test_bad_rosters_are_refused(members: list[Member], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Roster(members)
