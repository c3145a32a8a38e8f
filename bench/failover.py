"""Leader failover, cloudd beside etcd: kill -9 the leader, time until a new leader.

Side by side in one invocation, on the same machine and the same kind of wire (each process in
its own network namespace on one bridge, `cloudd_lab.netlab`):

- cloudd: 3 and 5 host agents (`AgentLab`, `profile: production`, the default timing). The
  figure is exact: the timestamp of the first `election_acting` "yes" log event of a survivor
  in a higher term, minus the kill time. "Acting" is the stricter milestone: elected *and*
  holding a host majority's leases, i.e. allowed to act on the cloud.
- etcd (Debian's etcd-server, 3.4, its defaults: 100 ms heartbeat, 1 s election timeout), 3
  and 5 members. The figure is the timestamp of the first survivor's raft "became leader at
  term" log line (etcd logs milliseconds) minus the kill time.

Each run: wait until every member agrees on one leader, kill -9 it, wait until the survivors
agree on a new one (polled, the exact time comes from the logs), start the killed member again
and wait until it follows (a restart that does not rejoin within REJOIN_BOUND is counted as
a stuck rejoin, a bug to report, and tried again). Prints size, system, median, max, min,
runs, stuck rejoins, and cloudd/etcd of the medians.

Run as root: `.venv/bin/python bench/failover.py [--runs 10] [--sizes 3,5]`. Everything it
starts (processes, namespaces, bridges, folders) is removed at the end, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cloudd_lab.agentlab import AgentLab
from cloudd_lab.netlab import NetLab, Netns

# (run as a script, this folder is on sys.path)
from report import one_line, table, write_result

#: Generous bound on any one wait (the machine is shared): a run that exceeds it aborts.
BOUND = 60.0
#: Settling time after the restarted member follows, so that its rejoin is over before the
#: next kill (cloudd: a recovering agent asks who leads; etcd: it catches up on the log).
SETTLE = 1.0
#: How long a restarted member may take to follow the leader again, and how many restarts.
REJOIN_BOUND = 20.0
REJOIN_TRIES = 3

T = TypeVar("T")


def wait(what: str, check: Callable[[], T | None], *, timeout: float = BOUND,
         interval: float = 0.01, detail: Callable[[], object] = lambda: "") -> T:
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"not within {timeout} s: {what} {detail()}")
        time.sleep(interval)


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- cloudd ---------------------------------------------------------------------------------

def first_acting(lab: AgentLab, names: Sequence[str], *, after_term: int,
                 since: float) -> float | None:
    """Unix time of the first `election_acting` "yes" logged by one of `names` after `since`
    in a term above `after_term` (the first moment any survivor could act on the cloud)."""
    times = [float(e["at"]) for e in lab.log_events()
             if e["agent"] in names and e.get("event") == "election_acting"
             and isinstance(e.get("term"), int) and e["term"] > after_term
             and str(e.get("reason", "")).startswith("yes") and e["at"] >= since]
    return min(times, default=None)


@dataclass
class Figures:
    """One size and system: seconds per run, and restarts that did not rejoin."""

    seconds: list[float] = field(default_factory=list)
    #: restarted members that did not follow the leader within REJOIN_BOUND (killed and
    #: started once more): a bug to report, not a timing
    stuck_rejoins: int = 0


def rejoin(restart: Callable[[], None], kill: Callable[[], None],
           follows: Callable[[], object], figures: Figures) -> None:
    """Start the killed member again until it follows (a few tries, each bounded)."""
    for _ in range(REJOIN_TRIES):
        restart()
        end = time.monotonic() + REJOIN_BOUND
        while time.monotonic() < end:
            if follows():
                return
            time.sleep(0.05)
        figures.stuck_rejoins += 1
        print(f"  a restarted member did not follow within {REJOIN_BOUND} s; "
              "killing and starting it again", flush=True)
        kill()
    raise SystemExit(f"a restarted member did not rejoin in {REJOIN_TRIES} tries")


def cloudd_runs(size: int, runs: int, *, prefix: str, subnet: str,
                settings: str = "") -> Figures:
    figures = Figures()
    with AgentLab(prefix, hosts=size, subnet=subnet, profile="production",
                  extra_settings=settings) as lab:
        lab.start_all()
        everyone = list(lab.agents)
        for _ in range(runs):
            leader, term = wait("one leader", lambda: lab.one_leader(everyone),
                                detail=lab.statuses)
            rest = [n for n in everyone if n != leader]
            t0 = time.time()
            lab.kill(leader)
            wait("a new leader", lambda: lab.one_leader(rest), detail=lab.statuses)  # noqa: B023
            at = wait("the acting event in the log", lambda: first_acting(
                lab, rest, after_term=term, since=t0))  # noqa: B023
            figures.seconds.append(at - t0)
            rejoin(lambda: lab.start(leader), lambda: lab.kill(leader),  # noqa: B023
                   lambda: lab.one_leader(everyone), figures)
            time.sleep(SETTLE)
    return figures


# -- etcd -----------------------------------------------------------------------------------

@dataclass
class EtcdMember:
    name: str
    ns: Netns
    data: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    member_id: str = ""

    @property
    def client_url(self) -> str:
        return f"http://{self.ns.ip}:2379"


class EtcdLab:
    """`size` etcd members (defaults otherwise), each in its own namespace on one bridge."""

    def __init__(self, prefix: str, size: int, *, subnet: str) -> None:
        self.net = NetLab(prefix, subnet=subnet)
        self.root = Path(tempfile.mkdtemp(prefix=f"cloudd-{prefix}-"))
        self.size = size
        self.members: dict[str, EtcdMember] = {}
        self._logs: list[Any] = []

    def open(self) -> EtcdLab:
        self.net.open()
        for i in range(1, self.size + 1):
            ns = self.net.add_netns(f"e{i}")
            name = f"e{i}"
            self.members[name] = EtcdMember(name, ns, self.root / name, self.root / f"{name}.log")
        return self

    def start(self, name: str) -> None:
        m = self.members[name]
        cluster = ",".join(f"{o.name}=http://{o.ns.ip}:2380" for o in self.members.values())
        log = open(m.log_path, "ab")  # noqa: SIM115 (closed in close())
        self._logs.append(log)
        m.proc = subprocess.Popen(
            ["ip", "netns", "exec", m.ns.name, "etcd", "--name", name,
             "--data-dir", str(m.data),
             "--listen-peer-urls", f"http://{m.ns.ip}:2380",
             "--initial-advertise-peer-urls", f"http://{m.ns.ip}:2380",
             "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"tok-{self.net.prefix}",
             "--logger", "zap", "--log-outputs", "stderr"],
            stdout=log, stderr=log, start_new_session=True)

    def start_all(self) -> None:
        for name in self.members:
            self.start(name)

    def kill(self, name: str) -> None:
        proc = self.members[name].proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)

    def status(self, name: str) -> dict[str, Any] | None:
        """The member's `/v3/maintenance/status` answer, or None if it does not answer."""
        m = self.members[name]
        req = urllib.request.Request(f"{m.client_url}/v3/maintenance/status", data=b"{}",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=1.0) as answer:
                out = json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        if not isinstance(out, dict):
            return None
        m.member_id = str(out.get("header", {}).get("member_id", m.member_id))
        return out

    def one_leader(self, names: Sequence[str]) -> str | None:
        """The leader's name when every member asked answers and names the same leader."""
        views = [self.status(n) for n in names]
        leaders = {v.get("leader") for v in views if v is not None}
        if any(v is None for v in views) or len(leaders) != 1:
            return None
        (leader_id,) = leaders
        for n in names:
            if self.members[n].member_id == leader_id:
                return n
        return None

    def became_leader(self, names: Sequence[str], since: float) -> float | None:
        """Unix time of the first raft "became leader" log line of one of `names` after
        `since` (etcd logs milliseconds: a line of the kill's millisecond counts)."""
        times = []
        for name in names:
            for line in self.members[name].log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    e = json.loads(line)
                    if " became leader at term " in e["msg"] and _ts(e["ts"]) >= since - 0.001:
                        times.append(_ts(e["ts"]))
        return min(times, default=None)

    def pid(self, name: str) -> int:
        proc = self.members[name].proc
        assert proc is not None
        return proc.pid

    def close(self) -> None:
        for name in self.members:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
        for log in self._logs:
            log.close()
        self.net.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdLab:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def etcd_runs(size: int, runs: int, *, prefix: str, subnet: str) -> Figures:
    figures = Figures()
    with EtcdLab(prefix, size, subnet=subnet) as lab:
        lab.start_all()
        everyone = list(lab.members)
        for _ in range(runs):
            leader = wait("one etcd leader", lambda: lab.one_leader(everyone))
            rest = [n for n in everyone if n != leader]
            t0 = time.time()
            lab.kill(leader)
            wait("a new etcd leader", lambda: lab.one_leader(rest))  # noqa: B023
            at = wait("the became-leader line", lambda: lab.became_leader(rest, t0))  # noqa: B023
            figures.seconds.append(at - t0)
            rejoin(lambda: lab.start(leader), lambda: lab.kill(leader),  # noqa: B023
                   lambda: lab.one_leader(everyone), figures)
            time.sleep(SETTLE)
    return figures


# -- the table ------------------------------------------------------------------------------

@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that every `with` lab cleans up."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def cells(size: int, system: str, f: Figures, ratio: str = "") -> list[object]:
    return [size, system, round(statistics.median(f.seconds), 3), round(max(f.seconds), 3),
            round(min(f.seconds), 3), len(f.seconds), f.stuck_rejoins, ratio]


def row(r: Sequence[object]) -> str:
    return (f"{r[0]:>4}  {r[1]:<7} {r[2]:>8.3f} {r[3]:>8.3f} {r[4]:>8.3f} {r[5]:>5} "
            f"{r[6]:>13}  {r[7]:>11}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="kills per size and system")
    parser.add_argument("--sizes", default="3,5", help="comma-separated cluster sizes")
    parser.add_argument("--agent-settings", default="", metavar="YAML",
                        help="more agent settings for every cloudd agent, as YAML lines (to "
                             "weigh a timing against the default), e.g. "
                             "'membership: {probe_interval: 0.2}'")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.runs < 1 or any(s < 3 for s in sizes):
        parser.error("--runs must be at least 1 and every size at least 3")
    results: dict[tuple[int, str], Figures] = {}
    with sigterm_as_interrupt():
        try:
            for size in sizes:
                results[size, "cloudd"] = cloudd_runs(
                    size, args.runs, prefix=f"h14fc{size}", subnet=f"10.234.14{size}.0/24",
                    settings=args.agent_settings + "\n" if args.agent_settings else "")
                print(f"cloudd, {size} agents: " + " ".join(
                    f"{s:.3f}" for s in results[size, "cloudd"].seconds), flush=True)
                results[size, "etcd"] = etcd_runs(
                    size, args.runs, prefix=f"h14fe{size}", subnet=f"10.234.15{size}.0/24")
                print(f"etcd, {size} members: " + " ".join(
                    f"{s:.3f}" for s in results[size, "etcd"].seconds), flush=True)
        except KeyboardInterrupt:
            print("interrupted: labs cleaned up; partial results below")
    print("\nkill -9 the leader -> new leader (cloudd: acting; etcd: raft leader), seconds")
    print("size  system    median      max      min  runs  stuck rejoins  cloudd/etcd")
    rows = []
    for size in sizes:
        c, e = results.get((size, "cloudd")), results.get((size, "etcd"))
        if c and c.seconds:
            rows.append(cells(size, "cloudd", c))
        if e and e.seconds:
            ratio = (f"{statistics.median(c.seconds) / statistics.median(e.seconds):.2f}"
                     if c and c.seconds else "-")
            rows.append(cells(size, "etcd", e, ratio))
    for r in rows:
        print(row(r))
    done = [s for s in sizes if results.get((s, "cloudd")) and results.get((s, "etcd"))]
    if done:
        def med(size: int, system: str) -> str:
            return f"{statistics.median(results[size, system].seconds):.2f} s"
        figure = (" / ".join(med(s, "cloudd") for s in done) + "; etcd 3.4 side by side: "
                  + " / ".join(med(s, "etcd") for s in done) + " (ratio "
                  + " / ".join(str(r[7]) for r in rows if r[1] == "etcd" and r[0] in done)
                  + ")")
        tuned = f", agents with {one_line(args.agent_settings)}" if args.agent_settings else ""
        write_result(
            "failover", variant="tuned" if args.agent_settings else "",
            what=f"kill -9 of the leader of {' / '.join(map(str, done))} agents in namespaces, "
                 f"to a new leader acting (production profile{tuned}), {args.runs} runs",
            figure=figure, notes=[f"agent settings: {one_line(args.agent_settings)}"]
            if args.agent_settings else [],
            tables=[table("kill -9 the leader -> new leader, seconds",
                          ["size", "system", "median", "max", "min", "runs", "stuck rejoins",
                           "cloudd/etcd"], rows)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
