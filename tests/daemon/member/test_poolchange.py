"""The pool of a new generation against the pool in force: one host at a time, and whether a
generation's text still lists a host."""

from __future__ import annotations

import pytest

from cloudd.daemon.member import poolchange

POOL = ("pm1", "pm2", "pm3")


@pytest.mark.parametrize(("after", "why"), [
    (POOL, None),
    (("pm3", "pm1", "pm2"), None),  # reordered: ranks change, the majorities do not
    (("pm1", "pm2", "pm3", "pm4"), None),
    (("pm1", "pm2"), None),
    (("pm1", "pm2", "pm3", "pm4", "pm5"), "adds pm4, pm5"),
    (("pm1",), "removes pm2, pm3"),
    (("pm1", "pm2", "pm4"), "adds pm4 and removes pm3"),  # a rename is two changes
])
def test_one_pool_host_at_a_time(after: tuple[str, ...], why: str | None) -> None:
    refusal = poolchange.refusal(POOL, after, cloud="lab")
    if why is None:
        assert refusal is None
    else:
        assert refusal == (
            f"the new generation of lab {why}: a generation may add or remove one pool host "
            "at a time (the majorities of the pools before and after must share a host), "
            "so apply one change, wait until it is in force, then the next")


@pytest.mark.parametrize(("text", "pool"), [
    ("pool:\n  - {name: pm1, address: 10.0.0.1}\n  - {name: pm2, address: 10.0.0.2}\n",
     frozenset({"pm1", "pm2"})),
    ("pool: []\n", None),
    ("pool:\n  - {address: 10.0.0.1}\n", None),
    ("pool: pm1\n", None),
    ("- pool\n", None),
    ("pool: [\n", None),  # not YAML
])
def test_the_pool_a_text_lists(text: str, pool: frozenset[str] | None) -> None:
    assert poolchange.pool_of(text) == pool


def test_a_text_that_does_not_read_removes_nobody() -> None:
    text = "pool:\n  - {name: pm1, address: 10.0.0.1}\n"
    assert poolchange.names(text, "pm1") and not poolchange.names(text, "pm2")
    assert poolchange.names("pool: [\n", "pm2")


@pytest.mark.parametrize(("seen", "fenced", "refusal"), [
    ({"pm3": []}, (), None),
    ({"pm3": ["lab-db-1"]}, ("pm3",), None),  # fenced: powered off, its nodes elsewhere
    ({}, ("pm3",), None),
    ({}, (), ("the leader has not listed the domains of pm3 yet, which the new generation of "
              "lab removes: try again once it has (a leader lists every host that answers "
              "within a pass), or once pm3 is fenced", True)),
    ({"pm3": ["lab-web-2", "lab-db-1"]}, (), (
        "pm3 still holds lab-db-1, lab-web-2 of lab, and the new generation removes it: a "
        "host leaves the pool once it holds none of the cloud's nodes (stop its agent: the "
        "leader fences it and places its nodes elsewhere; then apply again)", False)),
])
def test_a_host_leaves_the_pool_empty(seen: dict[str, list[str]], fenced: tuple[str, ...],
                                      refusal: tuple[str, bool] | None) -> None:
    assert poolchange.removal_refusal(["pm3"], seen={"pm1": ["lab-web-1"], **seen},
                                      fenced=fenced, cloud="lab") == refusal
    assert poolchange.removal_refusal([], seen={}, fenced=(), cloud="lab") is None
