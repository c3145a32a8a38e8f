"""A burst of queued jobs on a batch cluster in VMs, with a fixed compute role and an elastic one.

Per scheduler (`--scheduler slurm`, `--scheduler torque`; both by default, TORQUE only once its
compute role can be elastic), one BatchLab comes up (cloudd_lab.batchlab: the shipped
manifest's pool host agents in namespaces on this machine's libvirtd, a head and the compute
role's candidates, in Debian VMs booted from the node image) with the compute role elastic.
The two modes are the same role with other bounds, switched by a new manifest generation (the
lab writes the manifest again; the run starts once the leader's `elastic compute` finding
names the new bounds):
- fixed: `min: MIN, max: MIN`: the role keeps its minimum and never grows (the same nodes, the
  same loop and the same template as the elastic mode: only `max` differs);
- elastic: `min: MIN, max: MAX, idle_after: IDLE, cooldown: COOLDOWN`.

A run is one burst in each mode, fixed first: N jobs of the manifest's user, each asking one
whole node (`sbatch -N 1 --exclusive`, `qsub -n`; a node has one vCPU) and running
`sleep S`, submitted in one command on the head. Before each burst the role is at its
minimum: MIN compute domains (any of the candidates) running and free in the scheduler,
no other compute domain.
Measured, per burst:
- all running, all finished: seconds from the burst's first submission to the last job's
  start, and to its end, by the scheduler's own record of each job (Slurm's SubmitTime,
  StartTime and EndTime; TORQUE's qtime, start_time and comp_time: the head's clock, to the
  second). The head is polled every 2 s over SSH (`scontrol show job`, `qstat -x`) until every
  job has ended (a job it no longer lists, having been seen, has ended; a job that failed
  aborts the run); when each poll first saw the jobs running and ended is kept too, in the
  per-burst table ("polled"): it is late by the poll's own latency, which the guests' load
  makes up to 12 s here, hence the scheduler's times. Should a scheduler show a time
  missing, the polls' are used and the table says so;
- node-seconds: libvirt is asked every second which domains of the compute role run
  (booting, idle or busy: a VM that runs costs its host, whatever it does). The count is a
  step function (each sample holds until the next) integrated from the moment the
  submission command is sent (this machine's monotonic clock) to the
  settle time: the first sample, once every job has finished, at which the count is back at
  MIN. In the fixed mode that is when the last job finishes; in the elastic mode it includes
  the idle nodes' `idle_after`, their drain and their domains' removal, which is what the
  elasticity costs. The MIN nodes that run in both modes are counted in both.

Defaults: N=3, S=60, MIN=1, MAX=3, IDLE=30, COOLDOWN=10 (the e2e test's idle time: the
shipped 300 s would add about 270 node-seconds per grown node). The fixed mode runs the three
jobs one after another on one node (about 3 x S); the elastic mode starts the waiting two on
new VMs as soon as they boot, so that booting under TCG (about a minute here) must be shorter
than the time a job waits in the fixed mode for elasticity to pay in time, and costs node-
seconds for the boot and the idle time of each extra node.

Printed: each burst's figures, then per scheduler the medians over the runs and the median of
the runs' elastic/fixed ratios; the same tables go to bench/results/elastic_burst--SCHED.json
(bench/report.py puts them into the README's table). Run as root with libvirtd up, under the
machine's VM lock:

    flock /tmp/cloudd-vm.lock .venv/bin/python bench/elastic_burst.py [--scheduler slurm]
        [--runs 3] [--jobs 3] [--sleep 60] [--min 1] [--max 3]

Slow by nature: a lab's first boot is a few minutes under TCG, a run about seven. Everything
it starts (agents, namespaces, bridge, domains, overlays, folders) is removed at the end, on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudd_lab.background import Background
from cloudd_lab.batchlab import (
    BACK,
    DONE,
    FAILED,
    JOB,
    RUNNING,
    UP,
    BatchLab,
    Job,
    JobState,
    pool_size,
)
from cloudd_lab.paths import checkout
from cloudd_lab.vmlab import SYSTEM, leftovers, poll

# (run as a script, this folder is on sys.path: SIGTERM is handled as failover.py does)
from failover import sigterm_as_interrupt
from report import table, write_result

from cloudd.images.torque import default_source

#: scheduler -> (lab prefix, which is also the cloud's name; the lab's subnet)
LABS = {"slurm": ("h26b", "10.239.52.0/24"), "torque": ("h26q", "10.239.53.0/24")}
#: Seconds between two samples of libvirt, and between two polls of the head.
SAMPLE_EVERY = 1.0
POLL_EVERY = 2.0
#: How long a new manifest generation may take to be in force on the leader.
GENERATION = 180.0

Samples = Sequence[tuple[float, int]]


# -- the pure parts -------------------------------------------------------------------------
def count_at(samples: Samples, t: float) -> int:
    """The step function the samples make, at `t`: the latest sample at or before `t` holds
    (before the first sample, the first one's count)."""
    if not samples:
        raise ValueError("no samples")
    i = bisect.bisect_right([s[0] for s in samples], t)
    return samples[max(i - 1, 0)][1]


def node_seconds(samples: Samples, start: float, end: float) -> float:
    """The integral of the step function over [start, end]: node-seconds when the counts are
    running VMs. `samples` are (time, count), in time order."""
    if not samples:
        raise ValueError("no samples")
    if end < start:
        raise ValueError(f"the end {end} is before the start {start}")
    if any(b[0] < a[0] for a, b in itertools.pairwise(samples)):
        raise ValueError("samples out of time order")
    edges = [start, *(t for t, _ in samples if start < t < end), end]
    return sum(count_at(samples, a) * (b - a) for a, b in itertools.pairwise(edges))


def settled_at(samples: Samples, *, after: float, floor: int) -> float | None:
    """The time of the first sample at or after `after` whose count is at most `floor`."""
    return next((t for t, n in samples if t >= after and n <= floor), None)


@dataclass
class Progress:
    """What the polls of the head have shown of one burst's jobs: when each poll first saw a
    job running and ended (seconds from the submission), and the scheduler's own record of
    each job, its latest values kept."""

    ids: tuple[str, ...]
    started: dict[str, float]
    ended: dict[str, float]
    records: dict[str, JobState]

    @classmethod
    def of(cls, ids: Sequence[str]) -> Progress:
        return cls(tuple(ids), {}, {}, {})

    def seen(self, states: Mapping[str, JobState], at: float) -> None:
        """One poll's job states at `at`. A job seen before and no longer listed has ended;
        a job seen failed raises."""
        for job in self.ids:
            shown = states.get(job)
            if shown is not None:
                old = self.records.get(job, JobState(shown.state))
                self.records[job] = JobState(
                    shown.state, shown.submitted or old.submitted,
                    shown.started or old.started, shown.ended or old.ended)
            state = shown.state if shown is not None else (
                DONE if job in self.started else None)
            if state == FAILED:
                raise RuntimeError(f"job {job} failed (the scheduler's state at {at:.0f} s)")
            if state in (RUNNING, DONE):
                self.started.setdefault(job, at)
            if state == DONE:
                self.ended.setdefault(job, at)

    def all_running(self) -> float | None:
        return max(self.started.values()) if len(self.started) == len(self.ids) else None

    def all_finished(self) -> float | None:
        return max(self.ended.values()) if len(self.ended) == len(self.ids) else None

    def by_the_scheduler(self) -> tuple[float, float] | None:
        """(all running, all finished) by the scheduler's own records: seconds from the
        burst's first submission to the last start and to the last end, all by the head's
        clock; None unless it showed every job's three times."""
        shown = [self.records.get(j) for j in self.ids]
        if any(r is None or None in (r.submitted, r.started, r.ended) for r in shown):
            return None
        times = [(float(r.submitted or 0), float(r.started or 0), float(r.ended or 0))
                 for r in shown if r is not None]
        t0 = min(t[0] for t in times)
        return max(t[1] for t in times) - t0, max(t[2] for t in times) - t0


@dataclass(frozen=True)
class Burst:
    """One burst's figures: seconds from the submission, and node-seconds."""

    mode: str
    running: float
    finished: float
    settled: float
    node_seconds: float
    peak: int
    #: whose times `running` and `finished` are: "scheduler" (its records) or "polls"
    clock: str = "scheduler"
    #: the same two as the polls of the head first saw them (late by up to a poll)
    polled: tuple[float, float] = (0.0, 0.0)

    def line(self) -> str:
        return (f"{self.mode}: all running {self.running:.0f} s, all finished "
                f"{self.finished:.0f} s, back at the minimum {self.settled:.0f} s, "
                f"{self.node_seconds:.0f} node-seconds (at most {self.peak} compute VMs)")


def ratio(elastic: float, fixed: float) -> float:
    return elastic / fixed if fixed else float("nan")


# -- the lab --------------------------------------------------------------------------------
class Sampler(Background):
    """Counts the running domains of `names` every `every` seconds, in a thread of its own
    (libvirt's API, one call a sample): (monotonic time, count)."""

    def __init__(self, names: Sequence[str], *, every: float = SAMPLE_EVERY) -> None:
        self.names, self.every = frozenset(names), every
        self.samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._background("sampler")
        self.error: BaseException | None = None

    def _run(self) -> None:
        import libvirt  # the machine's binding, as bench/guest_boot.py uses it

        conn = libvirt.open(SYSTEM)
        try:
            while not self._stop.is_set():
                up = {d.name() for d in conn.listAllDomains(
                    libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
                with self._lock:
                    self.samples.append((time.monotonic(), len(up & self.names)))
                self._stop.wait(self.every)
        except BaseException as exc:  # reported by the run that reads the samples
            self.error = exc
        finally:
            conn.close()

    def since(self, t0: float) -> list[tuple[float, int]]:
        """The samples from the last one before `t0` on (that one holds at `t0`)."""
        if self.error is not None:
            raise RuntimeError(f"libvirt's sampler stopped: {self.error}")
        with self._lock:
            i = bisect.bisect_right([s[0] for s in self.samples], t0)
            return list(self.samples[max(i - 1, 0):])


def bounds_of(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"min": args.min, "max": args.min if mode == "fixed" else args.max,
            "idle_after": args.idle_after, "cooldown": args.cooldown}


def elastic_finding(lab: BatchLab) -> str:
    view = lab.leader_view()
    for f in (view or {}).get("findings", ()):
        if f["check"] == "elastic compute":
            return str(f["message"])
    return ""


def at_minimum(lab: BatchLab, bounds: dict[str, Any]) -> bool:
    """The leader has the bounds in force and uses only the minimum; exactly MIN compute
    domains are defined, run and are free in the scheduler (any MIN of the candidates: the
    role shrinks by its newest idle nodes, which need not be the last taken)."""
    low = bounds["min"]
    if not elastic_finding(lab).startswith(
            f"{low} node(s) in use, of {low} to {bounds['max']}"):
        return False
    domains = {n: d for n, d in lab.domains().items() if n in lab.computes}
    return (len(domains) == low and all(d.running for d in domains.values())
            and lab.free(*domains))


def one_burst(lab: BatchLab, sampler: Sampler, *, mode: str, run: int,
              args: argparse.Namespace) -> Burst:
    bounds = bounds_of(mode, args)
    if lab.elastic != bounds:
        lab.elastic = bounds
        lab.write_manifest()
    poll(f"the compute role at its minimum of {bounds}", lambda: at_minimum(lab, bounds),
         bound=GENERATION + BACK, interval=5.0)
    names = [f"burst-{mode}-{run}-{i}" for i in range(1, args.jobs + 1)]
    t0 = time.monotonic()
    jobs: list[Job] = lab.burst(f"sleep {args.sleep}", names=names)
    progress = Progress.of([j.id for j in jobs])

    def finished() -> bool:
        states = lab.job_states()
        if states is not None:
            progress.seen(states, time.monotonic() - t0)
        return progress.all_finished() is not None
    poll(f"the {mode} burst's {args.jobs} jobs finished", finished,
         bound=UP + JOB + args.jobs * args.sleep, interval=POLL_EVERY)
    done_at = t0 + float(progress.all_finished() or 0.0)
    settled, _ = poll(f"the compute role back at {args.min} running VM(s)",
                      lambda: settled_at(sampler.since(t0), after=done_at, floor=args.min),
                      bound=BACK, interval=SAMPLE_EVERY)
    samples = sampler.since(t0)
    polled = (float(progress.all_running() or 0.0), float(progress.all_finished() or 0.0))
    records = progress.by_the_scheduler()
    return Burst(mode, *(records or polled), settled=settled - t0,
                 node_seconds=node_seconds(samples, t0, settled),
                 peak=max(n for t, n in samples if t <= settled),
                 clock="scheduler" if records else "polls", polled=polled)


def measure(kind: str, args: argparse.Namespace) -> list[tuple[Burst, Burst]]:
    prefix, subnet = LABS[kind]
    pairs: list[tuple[Burst, Burst]] = []
    with BatchLab(prefix, hosts=pool_size(kind), cloud_type=kind, subnet=subnet,
                  cloud_name=prefix, nodes={"head": 1, "compute": args.max},
                  elastic=bounds_of("fixed", args)) as lab:
        lab.start_all()
        first = lab.computes[:args.min]

        def ready() -> bool:
            phases = lab.phases()
            return all(phases.get(n) == "ready" for n in [lab.head, *first])
        _, took = poll("the head and the minimum's compute nodes ready", ready, bound=UP,
                       interval=5.0)
        print(f"{kind}: the head and {len(first)} compute node(s) ready {took:.0f} s after "
              "the agents started", flush=True)
        with Sampler([lab.domain(n) for n in lab.computes]) as sampler:
            for run in range(1, args.runs + 1):
                fixed = one_burst(lab, sampler, mode="fixed", run=run, args=args)
                print(f"{kind} run {run}: {fixed.line()}", flush=True)
                elastic = one_burst(lab, sampler, mode="elastic", run=run, args=args)
                print(f"{kind} run {run}: {elastic.line()}", flush=True)
                pairs.append((fixed, elastic))
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"left behind: {left}")
    return pairs


FIGURES = (("all running s", "running"), ("all finished s", "finished"),
           ("back at min s", "settled"), ("node-seconds", "node_seconds"))


def summary(pairs: Sequence[tuple[Burst, Burst]]) -> list[list[Any]]:
    """Per mode the medians over the runs, then the median of the runs' elastic/fixed ratios."""
    rows: list[list[Any]] = []
    for i, mode in enumerate(("fixed", "elastic")):
        rows.append([mode, *(round(statistics.median(getattr(p[i], f) for p in pairs), 1)
                             for _, f in FIGURES), max(p[i].peak for p in pairs)])
    rows.append(["elastic/fixed", *(
        round(statistics.median(ratio(getattr(e, f), getattr(x, f)) for x, e in pairs), 2)
        for _, f in FIGURES), ""])
    return rows


def runs_table(pairs: Sequence[tuple[Burst, Burst]]) -> list[list[Any]]:
    return [[run, b.mode, *(round(getattr(b, f), 1) for _, f in FIGURES), b.peak, b.clock,
             round(b.polled[0], 1), round(b.polled[1], 1)]
            for run, pair in enumerate(pairs, 1) for b in pair]


def report(kind: str, pairs: Sequence[tuple[Burst, Burst]], args: argparse.Namespace) -> None:
    columns = ["mode", *(c for c, _ in FIGURES), "peak VMs"]
    rows = summary(pairs)
    setup = (f"{args.jobs} one-node jobs (sleep {args.sleep} s) at once; compute role min "
             f"{args.min}: fixed (max {args.min}) / elastic (max {args.max}, idle_after "
             f"{args.idle_after} s)")
    title = f"{kind}: {setup}; median of {len(pairs)} run(s)"
    print(f"\n{title}")
    print(f"{columns[0]:<14}" + "".join(f"{c:>16}" for c in columns[1:]))
    for row in rows:
        print(f"{row[0]:<14}" + "".join(f"{c!s:>16}" for c in row[1:]))
    clocks = sorted({b.clock for pair in pairs for b in pair})
    notes = [f"all running / all finished: seconds from the burst's submission to the last "
             f"job's start and end, by {' and '.join(clocks)} ('scheduler': its own records, "
             f"the head's clock, to the second; 'polls': the first poll of the head that saw "
             f"it); node-seconds: the compute role's running VMs sampled every "
             f"{SAMPLE_EVERY:.0f} s, integrated from the submission until every job finished "
             f"and the role ran {args.min} VM(s) again"]
    if args.runs < 3:
        notes.append(f"{args.runs} run(s) per mode, fewer than the default 3: {args.short}")
    for note in notes:
        print(note)
    fixed, elastic, ratios = rows
    figure = (f"{kind}: all running {fixed[1]:.0f} s / {elastic[1]:.0f} s (ratio {ratios[1]}); "
              f"all finished {fixed[2]:.0f} s / {elastic[2]:.0f} s ({ratios[2]}); "
              f"node-seconds {fixed[4]:.0f} / {elastic[4]:.0f} ({ratios[4]})")
    write_result("elastic_burst", variant=kind,
                 what=f"a burst of {setup}, {kind} in VMs under TCG, {len(pairs)} run(s); "
                      f"each figure fixed / elastic",
                 figure=figure, notes=notes,
                 tables=[table(title, columns, rows),
                         table(f"{kind}: each burst", ["run", *columns, "times by",
                                                         "polled running s",
                                                         "polled finished s"],
                               runs_table(pairs))])


def torque_elastic() -> str | None:
    """Why TORQUE cannot be measured here (None: it can)."""
    from cloudd.providers.torque.spec import SPEC

    if not any(r.elastic for r in SPEC.roles if r.name == "compute"):
        return "TORQUE's compute role cannot be elastic in this checkout"
    tarball = default_source(checkout())
    if tarball is None or not tarball.is_file():
        return f"no TORQUE source tarball at {tarball}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", choices=sorted(LABS), action="append",
                        help="slurm, torque (given twice: both; default both)")
    parser.add_argument("--runs", type=int, default=3, help="bursts per mode (default 3)")
    parser.add_argument("--jobs", type=int, default=3, help="jobs in a burst (default 3)")
    parser.add_argument("--sleep", type=int, default=60, help="each job's seconds (default 60)")
    parser.add_argument("--min", type=int, default=1, help="the role's minimum (default 1)")
    parser.add_argument("--max", type=int, default=3,
                        help="the elastic mode's maximum (default 3)")
    parser.add_argument("--idle-after", type=int, default=30)
    parser.add_argument("--cooldown", type=int, default=10)
    parser.add_argument("--short", default="the machine's time was short",
                        help="why fewer than 3 runs, for the report")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.jobs < 1 or args.sleep < 1:
        parser.error("--runs, --jobs and --sleep must be at least 1")
    if not 1 <= args.min < args.max:
        parser.error("need 1 <= --min < --max")
    kinds = list(dict.fromkeys(args.scheduler or ["slurm", "torque"]))
    with sigterm_as_interrupt():
        for kind in kinds:
            why = torque_elastic() if kind == "torque" else None
            if why is not None:
                print(f"torque: skipped, {why}", flush=True)
                continue
            report(kind, measure(kind, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
