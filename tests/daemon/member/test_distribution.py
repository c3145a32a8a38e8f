"""Who gets the manifest, and when: a table of situations and the offers they give."""

from __future__ import annotations

import pytest

from cloudd.daemon.member.distribution import RESEED_EVERY, Offer, offers
from cloudd.daemon.network.catalogue import OfferOrigin

MEMBERS = ("pm1", "pm2", "n1")
L, S = OfferOrigin.LEADER, OfferOrigin.SEED


@pytest.mark.parametrize(("leading", "alive", "offered", "now", "expected"), [
    # the leader sends each live member the generation once
    (True, {"pm1", "pm2", "n1"}, {}, 0.0, [("pm2", "g1", L), ("n1", "g1", L)]),
    (True, {"pm1", "pm2", "n1"}, {"pm2": "g1", "n1": "g1"}, 0.0, []),
    # a new generation goes again; a member that had an older one gets the new one
    (True, {"pm1", "pm2", "n1"}, {"pm2": "g0", "n1": "g1"}, 0.0, [("pm2", "g1", L)]),
    # a member that does not answer gets it once per slot, from the leader or anyone
    (True, {"pm1", "pm2"}, {"pm2": "g1"}, 25.0, [("n1", "g1@2", L)]),
    (False, {"pm1"}, {}, 25.0, [("pm2", "g1@2", S), ("n1", "g1@2", S)]),
    (False, {"pm1"}, {"pm2": "g1@2", "n1": "g1@2"}, 29.9, []),
    (False, {"pm1"}, {"pm2": "g1@2", "n1": "g1@2"}, 30.0,
     [("pm2", "g1@3", S), ("n1", "g1@3", S)]),
    # a follower leaves live members to the leader
    (False, {"pm1", "pm2", "n1"}, {}, 0.0, []),
])
def test_offers(leading: bool, alive: set[str], offered: dict[str, str], now: float,
                expected: list[tuple[str, str, OfferOrigin]]) -> None:
    got = offers(me="pm1", members=MEMBERS, alive=alive, leading=leading, seeding=True,
                 digest="g1", now=now, offered=offered)
    assert got == tuple(Offer(*e) for e in expected)


@pytest.mark.parametrize(("leading", "expected"), [
    (False, []),  # nobody takes a node's seed: it offers none
    (True, [("pm1", "g1@2", L), ("pm2", "g1@2", L)]),  # a node that leads still offers
])
def test_a_node_does_not_seed(leading: bool, expected: list[tuple[str, str, OfferOrigin]]
                              ) -> None:
    got = offers(me="n1", members=MEMBERS, alive={"n1"}, leading=leading, seeding=False,
                 digest="g1", now=25.0, offered={})
    assert got == tuple(Offer(*e) for e in expected)


def test_the_slot_is_the_reseed_period() -> None:
    assert RESEED_EVERY == 10.0
    keys = {offers(me="pm1", members=MEMBERS, alive=set(), leading=False, seeding=True,
                   digest="g", now=t, offered={})[0].key for t in (0.0, 5.0, 9.99)}
    assert keys == {"g@0"}
