"""Decoding and encoding a message body: the codec's own JSON reader and checks against
pydantic's (`from_json` and a strict `TypeAdapter`, what the codec used before).

For a few typical messages (a SWIM ping with gossip, a lease grant, a node's report, a role
assignment, a record push), prints microseconds per body, the median of several runs of many
bodies each, the old way and the new. The old way is the differential test's oracle
(tests/fuzz/test_codec_differential.py), so both do the same work: parse, the codec's own
checks (unknown fields, numbers beyond 64 bits), then the fields.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.corpus import CODEC, EXAMPLES
from tests.fuzz.test_codec_differential import ADAPTERS, encoded, old_body

NAMES = ["election.ping", "election.lease-grant", "cloudd.node-report",
         "cloudd.role-assignment", "cloudd.record-push"]
RUNS = 7
BODIES = 5000


def per_body(work: Callable[[], object]) -> float:
    """Microseconds per call: the median of RUNS runs of BODIES calls."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(BODIES):
            work()
        times.append((time.perf_counter() - start) / BODIES * 1e6)
    return statistics.median(times)


def row(name: str) -> str:
    msg = EXAMPLES[name]
    body = encoded(msg, name)
    entry = CODEC._by_name[name]
    adapter = ADAPTERS[name]
    assert old_body(name, body) == CODEC._decode_body(entry, body) == msg
    decode_old = per_body(lambda: old_body(name, body))
    decode_new = per_body(lambda: CODEC._decode_body(entry, body))
    encode_old = per_body(lambda: adapter.dump_json(msg))
    encode_new = per_body(lambda: CODEC.encode(msg))
    return (f"{name:26} {len(body):6} {decode_old:11.1f} {decode_new:7.1f} "
            f"{encode_old:11.1f} {encode_new:7.1f}")


def main() -> None:
    print(f"{'message':26} {'bytes':>6} {'decode old':>11} {'new':>7} {'encode old':>11} "
          f"{'new':>7}  (us per body, median of {RUNS} x {BODIES}; the new encode writes "
          "the whole frame)")
    for name in NAMES:
        print(row(name))


if __name__ == "__main__":
    main()
