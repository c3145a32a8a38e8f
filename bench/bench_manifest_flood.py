"""A flood of maximal manifests at the leader, from an operator certificate: does the leader
keep its leases, and how late does its loop run?

Three host agents (`AgentLab`, prefix b11l, 10.243.11.0/24; leases of 0.4 s renewed every
0.1 s, SWIM probes every 0.1 s answered within 40 ms). Each run has two windows of the same
length, one after the other:

- reference: nothing but the cloud keeping itself;
- flood: for `--seconds`, `apply` requests, each carrying a manifest of exactly
  `MAX_MANIFEST_BYTES` (a web cloud of ~4,600 nodes whose last node repeats an address, so
  that it is parsed and validated whole and then refused: nothing changes), sent on one TLS
  connection with an operator certificate as fast as the leader reads them, with OUTSTANDING
  unanswered at any time (twice the transport's bound on requests in flight). The window
  lasts until every request sent is answered.

Throughout both windows a prober asks the leader's local API for `status` every 50 ms: its
round trip is how late the leader's loop runs. Per window, the median over RUNS runs of: the
status round trip (median, p99, max, ms); the leader's acting lapses (`election_acting` "no"
logged by the leader: a lease renewal missed); suspicions of the leader (`election_member`
suspect or dead about it, logged by the others); new leaders (`election_leader` logged by
anyone); and for the flood, its length and its answers by kind (checked whole and refused,
turned away busy by the checker, turned away busy by the transport's in-flight bound).
The ratio is flood p99 / reference p99, each run against its own reference.

Run as root: `.venv/bin/python bench/bench_manifest_flood.py [--runs 3] [--seconds 20]`.
Everything it starts is removed at the end, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudd_lab.agentlab import AgentLab

# (run as a script, this folder is on sys.path: SIGTERM is handled as failover.py does)
from failover import sigterm_as_interrupt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES
from cloudd.daemon.network.catalogue import (
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    register_all,
)
from cloudd.daemon.network.codec import default_codec
from cloudd.daemon.network.transport import RemoteFailure
from cloudd.pki import MemberKind, PkiFiles, issue
from tests.shared import opwire

PREFIX = "b11l"
SUBNET = "10.243.11.0/24"
PORT = 7760
OPERATOR = "flooder"
#: Generous bound on any one wait (the machine is shared).
BOUND = 120.0
#: Seconds between two `status` probes of the leader.
PROBE_EVERY = 0.05
#: Requests sent and not answered yet, at most, during a flood.
OUTSTANDING = 64
#: Seconds the cloud settles after its first leader, before the first window.
SETTLE = 3.0


def maximal_manifest(lab: AgentLab) -> str:
    return opwire.maximal_manifest(lab.cloud_name, [(n, a) for n, _, a in lab.members
                                                    if n.startswith("pm")])


# -- an operator's client, by hand: TLS, Hello, then pipelined frames ----------------------

def kind_of(msg: object) -> str:
    if isinstance(msg, RemoteFailure):
        return "transport busy" if msg.temporary else f"failure: {msg.message[:60]}"
    if isinstance(msg, OperatorAnswer):
        if msg.ok:
            return "ACCEPTED"
        if msg.error.startswith("busy:"):
            return "checker busy"
        if "is already used by" in msg.error:
            return "checked, refused"
        return f"refused: {msg.error[:60]}"
    return type(msg).__name__


def flood(sock: ssl.SSLSocket, request: Callable[[int], bytes],
          seconds: float) -> dict[str, int]:
    """For `seconds`, keep OUTSTANDING requests unanswered, sending as fast as the leader
    reads them; then wait for every answer. Returns the answers by kind, and how many were
    sent."""
    stop_sending = time.monotonic() + seconds
    return opwire.pipeline(sock, request, more=lambda sent: time.monotonic() < stop_sending,
                           outstanding=OUTSTANDING, kind_of=kind_of,
                           deadline=stop_sending + BOUND)


# -- watching the leader ------------------------------------------------------------------

@dataclass
class Prober:
    """Asks the leader's local API for `status` every PROBE_EVERY s, in a thread."""

    lab: AgentLab
    leader: str
    rtts: list[float] = field(default_factory=list)
    terms: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=BOUND)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status = self.lab.status(self.leader)
            self.rtts.append((time.perf_counter() - t0) * 1000)
            if status is not None:
                self.terms.add(int(status["term"]))
            self._stop.wait(PROBE_EVERY)


@dataclass
class Window:
    seconds: float
    rtts: list[float]
    lapses: int
    suspicions: int
    new_leaders: int
    terms: set[int]
    answers: dict[str, int] = field(default_factory=dict)

    def p(self, q: float) -> float:
        xs = sorted(self.rtts)
        return xs[min(len(xs) - 1, int(len(xs) * q))]


def window(lab: AgentLab, leader: str, act: Callable[[], dict[str, int]]) -> Window:
    t0 = time.time()
    with Prober(lab, leader) as prober:
        answers = act()
    t1 = time.time()
    events = [e for e in lab.log_events() if t0 <= e["at"] <= t1]
    return Window(
        seconds=t1 - t0, rtts=prober.rtts, terms=prober.terms, answers=answers,
        lapses=sum(1 for e in events if e["agent"] == leader
                   and e.get("event") == "election_acting"
                   and str(e.get("reason", "")).startswith("no")),
        suspicions=sum(1 for e in events if e["agent"] != leader
                       and e.get("event") == "election_member" and e.get("peer") == leader
                       and e.get("reason") in ("suspect", "dead")),
        new_leaders=sum(1 for e in events if e.get("event") == "election_leader"))


def one_run(lab: AgentLab, files: PkiFiles, text: str,
            seconds: float) -> tuple[Window, Window]:
    leader, term = lab.wait_for("one leader", lambda: lab.one_leader(), timeout=BOUND)
    ip = lab.agents[leader].ns.ip
    args = json.dumps({"text": text})

    def request(rid: int) -> bytes:
        return default_codec.encode(OperatorRequest(OperatorOp.APPLY, lab.cloud_name, args),
                                    rid=rid, request=True)

    sock = opwire.operator_socket((ip, PORT), ca=lab.root / "pki" / "ca.crt", files=files,
                                  name=OPERATOR, timeout=BOUND)
    try:
        flooded = window(lab, leader, lambda: flood(sock, request, seconds))
    finally:
        sock.close()
    # the reference: the same length, nothing sent
    quiet = window(lab, leader, lambda: (time.sleep(flooded.seconds), {})[1])
    if lab.one_leader() != (leader, term):
        print(f"  the leader changed: was {leader} in term {term}, now {lab.one_leader()}")
    return quiet, flooded


def row(name: str, ws: list[Window]) -> str:
    def med(f: Callable[[Window], float]) -> float:
        return statistics.median(f(w) for w in ws)
    return (f"{name:<10} {med(lambda w: w.seconds):>7.1f} {med(lambda w: w.p(0.5)):>8.1f} "
            f"{med(lambda w: w.p(0.99)):>8.1f} {med(lambda w: max(w.rtts)):>8.1f} "
            f"{med(lambda w: w.lapses):>7.0f} {med(lambda w: w.suspicions):>7.0f} "
            f"{med(lambda w: w.new_leaders):>8.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a flood")
    opts = parser.parse_args()
    register_all(default_codec)
    rows: list[tuple[Window, Window]] = []
    with sigterm_as_interrupt(), AgentLab(PREFIX, hosts=3, subnet=SUBNET) as lab:
        pki = lab.root / "pki"
        issue(pki, OPERATOR, now=dt.datetime.now(dt.UTC), kind=MemberKind.OPERATOR)
        files = PkiFiles.for_member(pki, OPERATOR)
        text = maximal_manifest(lab)
        lab.start_all()
        lab.wait_for("a first leader", lambda: lab.one_leader(), timeout=BOUND)
        time.sleep(SETTLE)
        for i in range(opts.runs):
            quiet, flooded = one_run(lab, files, text, opts.seconds)
            rows.append((quiet, flooded))
            print(f"run {i + 1}: reference p99 {quiet.p(0.99):.1f} ms, flood p99 "
                  f"{flooded.p(0.99):.1f} ms over {flooded.seconds:.1f} s, lapses "
                  f"{quiet.lapses}/{flooded.lapses}, suspicions {quiet.suspicions}/"
                  f"{flooded.suspicions}, new leaders {quiet.new_leaders}/"
                  f"{flooded.new_leaders}; answers {flooded.answers}")
    print(f"\n{opts.seconds:g} s floods of applies of a {MAX_MANIFEST_BYTES}-byte manifest at "
          f"the leader of 3 host agents, {opts.runs} runs (medians); status round trips in ms")
    print(f"{'window':<10} {'seconds':>7} {'rtt p50':>8} {'rtt p99':>8} {'rtt max':>8} "
          f"{'lapses':>7} {'suspect':>7} {'leaders':>8}")
    print(row("reference", [q for q, _ in rows]))
    print(row("flood", [f for _, f in rows]))
    ratios = [f.p(0.99) / q.p(0.99) for q, f in rows]
    print(f"flood p99 / reference p99: {statistics.median(ratios):.2f} (median of "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    kinds = sorted({k for _, f in rows for k in f.answers})
    print("answers per flood (median): " + ", ".join(
        f"{k} {statistics.median(f.answers.get(k, 0) for _, f in rows):.0f}" for k in kinds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
