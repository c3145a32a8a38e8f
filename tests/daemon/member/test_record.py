"""The record's pure core: versions, promises, majorities, recovery picking the highest, and
one-sentence refusals that change nothing."""

from __future__ import annotations

import base64
import dataclasses
import re

import pytest

from cloudd.config.catalog import GeneratedSecret
from cloudd.daemon.member import record
from cloudd.daemon.member.record import Held, HostStep
from cloudd.daemon.network.catalogue import Generation, Record, RecordPush, Version
from cloudd.errors import PermanentError

NODES = ("n1", "n2")


def gen(number: int, text: str = "", *, ensure: str = "running") -> Generation:
    text = text or f"name: c\n# generation {number}\n"
    return Generation(number, text, record.digest_of(text), 1000.0 + number, "pm1", "apply",
                      ensure)


def rec(term: int, seq: int, *numbers: int, holds: tuple[str, ...] = ()) -> Record:
    return Record("c", Version(term, seq), tuple(gen(n) for n in numbers), holds)


HELD = Held(rec(3, 7, 1, 2), promised=4)


@pytest.mark.parametrize(("push", "step"), [
    # a newer version of the promised term (or above): persisted, then acknowledged
    (RecordPush(4, rec(4, 8, 1, 2, 3)), HostStep(Held(rec(4, 8, 1, 2, 3), 4), persist=True)),
    (RecordPush(6, rec(6, 8, 1, 2)), HostStep(Held(rec(6, 8, 1, 2), 4), persist=True)),
    # a higher term outranks a higher sequence number
    (RecordPush(4, rec(4, 6)), HostStep(Held(rec(4, 6), 4), persist=True)),
    # refused, one sentence each, and nothing changes
    (RecordPush(3, rec(3, 8, 1, 2)), HostStep(HELD, refusal=(
        "a write of term 3, and this host has promised term 4 to take none below it"))),
    (RecordPush(5, rec(4, 9)), HostStep(HELD, refusal="record version 4.9 is not of term 5")),
    (RecordPush(4, dataclasses.replace(rec(4, 9), cloud="other")), HostStep(HELD, refusal=(
        "a record of cloud other, and this host keeps the record of c"))),
    (RecordPush(4, rec(4, 9, 2, 1)), HostStep(HELD, refusal=(
        "the record's generations are not numbered 1, 2, 3... in order"))),
    (RecordPush(4, rec(4, 9, 1, holds=("n2", "n1"))), HostStep(HELD, refusal=(
        "the record's maintenance holds are not sorted and distinct"))),
])
def test_a_host_takes_a_write(push: RecordPush, step: HostStep) -> None:
    assert record.take(HELD, push) == step


def test_an_older_version_or_a_tampered_text_is_refused() -> None:
    held = Held(rec(4, 7, 1), promised=4)
    assert record.take(held, RecordPush(4, rec(4, 6, 1))).refusal == (
        "record version 4.6 is older than version 4.7 held here")
    assert record.take(held, RecordPush(4, rec(4, 7, 1))) == HostStep(held)  # sent again
    bad = dataclasses.replace(gen(2), text="something else")
    tampered = dataclasses.replace(rec(4, 8, 1), generations=(gen(1), bad))
    assert record.take(held, RecordPush(4, tampered)).refusal == (
        "generation 2's digest does not match its text")


@pytest.mark.parametrize(("term", "step"), [
    (5, HostStep(Held(HELD.record, 5), persist=True)),
    (4, HostStep(HELD)),  # promised already: answered again, nothing to write
    (3, HostStep(HELD, refusal="the record for term 3, and this host has promised term 4 already")),
])
def test_a_host_promises_the_leader_of_a_new_term(term: int, step: HostStep) -> None:
    assert record.promise(HELD, term) == step


def test_after_a_promise_writes_of_lower_terms_are_refused() -> None:
    promised = record.promise(Held(rec(3, 7, 1)), 5).held
    assert record.take(promised, RecordPush(4, rec(4, 8, 1, 2))).refusal == (
        "a write of term 4, and this host has promised term 5 to take none below it")


@pytest.mark.parametrize(("answers", "quorum", "picked"), [
    ({"pm1": rec(3, 7, 1)}, 2, None),  # no majority yet
    ({"pm1": rec(3, 7, 1), "pm2": rec(4, 9, 1, 2)}, 2, rec(4, 9, 1, 2)),
    ({"pm1": rec(5, 2, 1), "pm2": rec(4, 9, 1, 2), "pm3": Record("c")}, 2, rec(5, 2, 1)),
    ({"pm1": Record("c"), "pm2": Record("c")}, 2, Record("c")),  # a new cloud
])
def test_recovery_adopts_the_highest_version_of_a_majority(
        answers: dict[str, Record], quorum: int, picked: Record | None) -> None:
    assert record.recovered(answers, quorum=quorum) == picked


def test_the_adopted_record_is_written_again_in_the_new_term() -> None:
    assert record.rewritten(rec(4, 9, 1, 2), term=6) == rec(6, 10, 1, 2)


@pytest.mark.parametrize(("acked", "done"), [
    ({"pm1": Version(4, 9)}, False),
    ({"pm1": Version(4, 9), "pm2": Version(4, 8)}, False),
    ({"pm1": Version(4, 9), "pm2": Version(4, 9)}, True),
    ({"pm1": Version(4, 9), "pm3": Version(5, 1)}, True),  # a later version includes it
])
def test_a_write_is_done_once_a_majority_has_it(acked: dict[str, Version], done: bool) -> None:
    assert record.committed(acked, Version(4, 9), quorum=2) is done


def test_generations_are_numbered_and_drop_holds_of_nodes_gone() -> None:
    r = rec(4, 9, 1, 2, holds=("", "n1", "n2"))
    nxt = record.with_generation(r, term=5, text="name: c\n", at=7.0, by="pm2", what="apply",
                                 ensure="stopped", nodes=["n1"])
    assert nxt.version == Version(5, 10) and nxt.holds == ("", "n1")
    last = record.latest(nxt)
    assert last == Generation(3, "name: c\n", record.digest_of("name: c\n"), 7.0, "pm2",
                              "apply", "stopped")
    assert record.with_generation(Record("c"), term=1, text="x", at=0, by="pm1", what="apply",
                                  ensure="running", nodes=()).generations[0].number == 1


def test_the_history_is_bounded_and_keeps_the_latest() -> None:
    r = Record("c")
    for n in range(record.HISTORY + 5):
        r = record.with_generation(r, term=1, text=f"t{n}\n", at=n, by="pm1", what="apply",
                                   ensure="running", nodes=())
    assert [g.number for g in r.generations] == list(range(6, record.HISTORY + 6))
    half = "#" * (record.HISTORY_BYTES // 2)
    for _ in range(3):
        r = record.with_generation(r, term=1, text=half, at=0, by="pm1", what="apply",
                                   ensure="running", nodes=())
    assert [g.number for g in r.generations] == [record.HISTORY + 7, record.HISTORY + 8]
    huge = record.with_generation(r, term=1, text="#" * (record.HISTORY_BYTES + 1), at=0,
                                  by="pm1", what="apply", ensure="running", nodes=())
    assert [g.number for g in huge.generations] == [record.HISTORY + 9]


def test_holds_are_set_and_released_and_an_unknown_node_is_refused() -> None:
    r = record.with_hold(rec(4, 9), term=4, subject="n2", on=True, nodes=NODES)
    r = record.with_hold(r, term=4, subject=None, on=True, nodes=NODES)
    assert (r.holds, r.version) == (("", "n2"), Version(4, 11))
    r = record.with_hold(r, term=4, subject=None, on=False, nodes=NODES)
    assert r.holds == ("n2",)
    with pytest.raises(PermanentError, match="unknown node 'pm9' in cloud c"):
        record.with_hold(r, term=4, subject="pm9", on=True, nodes=NODES)


def test_generations_are_found_diffed_and_listed_or_refused_in_one_sentence() -> None:
    r = rec(4, 9, 3, 4)
    assert record.generation(r, 4) == gen(4)
    with pytest.raises(PermanentError, match=r"^cloud c has no generation 9 \(its history "
                                             r"holds generations 3 to 4\)$"):
        record.generation(r, 9)
    with pytest.raises(PermanentError, match="cloud c has no generation in its record yet"):
        record.generation(Record("c"), 1)
    assert record.diff(r, 3, 4) == ("--- c generation 3\n+++ c generation 4\n@@ -1,2 +1,2 @@\n"
                                    " name: c\n-# generation 3\n+# generation 4\n")
    assert record.diff(r, 4, 4) == ""
    assert record.history(r)[1] == {"number": 4, "at": 1004.0, "by": "pm1", "what": "apply",
                                    "ensure": "running", "digest": gen(4).digest}


def test_the_digest_is_the_same_everywhere() -> None:
    assert record.digest_of("a") == ("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785"
                                     "afee48bb")


def test_a_generated_secret_is_made_once_and_kept_by_every_later_write() -> None:
    first = record.with_generated(rec(3, 7, 1), term=3, made={"munge.key": b"\x00one"})
    assert first.version == Version(3, 8)
    assert record.generated_of(first) == {"munge.key": b"\x00one"}
    # drawn again (a write that timed out, then landed): the first draw stays
    again = record.with_generated(first, term=4, made={"munge.key": b"two", "pw": b"three"})
    assert record.generated_of(again) == {"munge.key": b"\x00one", "pw": b"three"}
    assert [n for n, _ in again.generated] == ["munge.key", "pw"]  # sorted
    assert record.with_generated(again, term=4, made={"pw": b"four"}) is again  # no write
    # generations, holds and a new leader's rewrite carry them as they are
    later = record.with_generation(again, term=5, text="name: c\n", at=1.0, by="pm2",
                                   what="apply", ensure="running", nodes=NODES)
    later = record.rewritten(record.with_hold(later, term=5, subject="n1", on=True, nodes=NODES),
                             term=6)
    assert record.generated_of(later) == record.generated_of(again)
    assert "three" not in repr(later) and "generated" not in repr(later)


def test_what_is_missing_and_how_it_is_drawn() -> None:
    key, pw = GeneratedSecret("munge.key", 1024), GeneratedSecret("pw", 32, text=True)
    held = record.with_generated(rec(3, 7), term=3, made={"munge.key": b"k"})
    assert record.missing((key, pw), held) == (pw,)
    assert record.drawn(key, b"\xff" * 1024) == b"\xff" * 1024
    # a password: one line of URL-safe base64, no padding, no byte lost
    raw = bytes(range(224, 256))
    text = record.drawn(pw, raw)
    assert len(text) == 43 and re.fullmatch(rb"[A-Za-z0-9_-]+", text)
    assert base64.urlsafe_b64decode(text + b"=") == raw


@pytest.mark.parametrize(("generated", "refusal"), [
    ((("b", "eA=="), ("a", "eA==")),
     "the record's generated secrets are not sorted, distinct and at most 8"),
    ((("a", "eA=="), ("a", "eQ==")), "the record's generated secrets are not sorted"),
    (tuple((f"s{i}", "eA==") for i in range(9)), "the record's generated secrets are not"),
    ((("a", ""),), "a generated secret of the record is empty or too large"),
])
def test_a_record_with_malformed_generated_secrets_is_refused(
        generated: tuple[tuple[str, str], ...], refusal: str) -> None:
    bad = dataclasses.replace(rec(4, 9, 1), generated=generated)
    got = record.take(HELD, RecordPush(4, bad)).refusal
    assert got is not None and got.startswith(refusal)


def test_a_drain_is_recorded_changed_and_released_or_refused_in_one_sentence() -> None:
    pool = ("pm1", "pm2", "pm3")
    r = record.with_drain(rec(3, 7, 1), term=3, host="pm2", on=True, hosts=pool, at=5.0,
                          by="pm1")
    assert r.version == Version(3, 8)
    assert [(d.host, d.move_stateful, d.at, d.by) for d in r.drains] == [
        ("pm2", False, 5.0, "pm1")]
    # the operator's word added later keeps when and by whom it was drained
    r = record.with_drain(r, term=3, host="pm2", on=True, hosts=pool, move_stateful=True,
                          at=9.0, by="pm3")
    assert [(d.host, d.move_stateful, d.at, d.by) for d in r.drains] == [
        ("pm2", True, 5.0, "pm1")]
    # ... and taken back by a drain without it
    back = record.with_drain(r, term=3, host="pm2", on=True, hosts=pool)
    assert [(d.host, d.move_stateful) for d in back.drains] == [("pm2", False)]
    r = record.with_drain(r, term=3, host="pm1", on=True, hosts=pool)
    assert [d.host for d in r.drains] == ["pm1", "pm2"]
    refusals = [
        (dict(host="pm9", on=True), "unknown host 'pm9': the pool of cloud c is pm1, pm2, pm3"),
        (dict(host="pm2", on=True, move_stateful=True),
         "host pm2 is drained already (with --move-stateful)"),
        (dict(host="pm3", on=True),
         "host pm3 is the last pool host of cloud c not drained: no host would be left to "
         "place a node on"),
        (dict(host="pm3", on=False), "host pm3 is not drained"),
    ]
    for args, why in refusals:
        with pytest.raises(PermanentError) as e:
            record.with_drain(r, term=3, hosts=pool, **args)  # type: ignore[arg-type]
        assert str(e.value) == why
    r = record.with_drain(r, term=4, host="pm2", on=False, hosts=pool)
    assert [d.host for d in r.drains] == ["pm1"] and r.version == Version(4, 11)


def test_drains_survive_a_new_leaders_recovery_and_a_malformed_list_is_refused() -> None:
    r = record.with_drain(rec(3, 7, 1), term=3, host="pm2", on=True, hosts=("pm1", "pm2"))
    adopted = record.recovered({"pm1": rec(3, 7, 1), "pm2": r}, quorum=2)
    assert adopted is not None
    assert record.rewritten(adopted, term=4).drains == r.drains
    assert record.with_generation(adopted, term=4, text="x", at=0.0, by="pm1", what="apply",
                                  ensure="running", nodes=NODES).drains == r.drains
    bad = dataclasses.replace(r, version=Version(4, 9), drains=(r.drains[0], r.drains[0]))
    assert record.take(HELD, RecordPush(4, bad)).refusal == (
        "the record's drained hosts are not named, sorted and distinct")


def test_a_host_the_pool_no_longer_lists_can_still_be_undrained() -> None:
    r = record.with_drain(rec(3, 7, 1), term=3, host="pm3", on=True, hosts=("pm1", "pm3"))
    assert record.with_drain(r, term=3, host="pm3", on=False, hosts=("pm1",)).drains == ()
    with pytest.raises(PermanentError, match=r"^unknown host 'pm3'"):
        record.with_drain(r, term=3, host="pm3", on=True, hosts=("pm1",), move_stateful=True)
