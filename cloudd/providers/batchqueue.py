"""A batch scheduler's waiting jobs, summed: what the head tells the leader of its queue. Pure.

Each batch type's head reads its own scheduler (Slurm's `squeue`, TORQUE's `qstat`) and sums
the jobs that wait (`summed`): how many, the nodes and CPUs asked by those that wait for
nodes (more compute nodes would let them start: Slurm's `Resources` or `Priority`, TORQUE's
queued), how many wait for something else (held, a start time, a dependency, a limit), and
the scheduler's reasons (or states) with how many jobs wait for each. The head answers that
sum (`encode`), never the jobs themselves, so that the answer stays small whatever the queue
holds; the leader reads it as it would anything from a tenant's VM (`decode`: counts bounded,
reasons free of control characters) and shows it for the whole cloud (`finding`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloudd.errors import PermanentError
from cloudd.providers import values
from cloudd.providers.base import Demand, Finding, NodeUse

#: Most distinct reasons an answer carries (the most frequent), most characters of one, and
#: most jobs, nodes or CPUs it may count: a bigger figure is not a cloud's.
MAX_REASONS, MAX_REASON, MAX_COUNT = 4, 80, 10**7
CHECK = "queue"
_CONTROL = values.CONTROL
#: A count as the head writes it: ASCII digits only (`str.isdigit` takes "²", which `int`
#: refuses), no more than MAX_COUNT has.
_COUNT = re.compile(r"[0-9]{1,8}")


@dataclass(frozen=True)
class Queue:
    """The jobs waiting in a batch scheduler, summed."""

    jobs: int = 0
    #: Nodes and CPUs asked by the jobs that wait for nodes, together (each job's minimum).
    nodes: int = 0
    cpus: int = 0
    #: (the scheduler's reason, jobs waiting for it), the most frequent first.
    reasons: tuple[tuple[str, int], ...] = ()
    #: Jobs that wait for something other than nodes (held, a start time, a dependency).
    blocked: int = 0

    def describe(self) -> str:
        if not self.jobs:
            return "no job waiting"
        why = ", ".join(f"{r} {n}" for r, n in self.reasons)
        other = f"; {self.blocked} for something else" if self.blocked else ""
        return (f"{self.jobs} job(s) waiting, {self.jobs - self.blocked} for nodes asking "
                f"{self.nodes} node(s) and {self.cpus} CPU(s){other}"
                + (f" ({why})" if why else ""))


def summed(jobs: Iterable[tuple[int, int, str, bool]]) -> Queue:
    """The sum of waiting jobs given as (nodes, CPUs, reason, waits for nodes) each."""
    count = nodes = cpus = blocked = 0
    reasons: dict[str, int] = {}
    for n, c, reason, for_nodes in jobs:
        count += 1
        if for_nodes:
            nodes, cpus = nodes + n, cpus + c
        else:
            blocked += 1
        why = _CONTROL.sub(" ", reason).strip()[:MAX_REASON] or "None"
        reasons[why] = reasons.get(why, 0) + 1
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:MAX_REASONS]
    return Queue(count, nodes, cpus, tuple(top), blocked)


def encode(q: Queue) -> dict[str, str]:
    """A `queue` answer: the three counts, and the reasons as "reason=jobs" lines."""
    return {"jobs": str(q.jobs), "nodes": str(q.nodes), "cpus": str(q.cpus),
            "blocked": str(q.blocked), "reasons": "\n".join(f"{r}={n}" for r, n in q.reasons)}


def decode(answer: Mapping[str, str]) -> Queue:
    """A `queue` answer, refused as a whole when a count is not one or a reason is malformed
    (the head is a tenant's VM: what it says reaches the operator's terminal)."""
    counts = []
    for key in ("jobs", "nodes", "cpus", "blocked"):
        value = answer.get(key, "")
        if not _COUNT.fullmatch(value) or int(value) > MAX_COUNT:
            raise PermanentError(f"the head's queue answer gives {key} {value[:20]!r}, "
                                 "not a count")
        counts.append(int(value))
    reasons = []
    for line in filter(None, answer.get("reasons", "").split("\n")[:MAX_REASONS + 1]):
        reason, _, n = line.rpartition("=")
        if (not reason or len(reason) > MAX_REASON or _CONTROL.search(reason)
                or not _COUNT.fullmatch(n) or int(n) > MAX_COUNT):
            raise PermanentError(f"the head's queue answer gives reason {line[:40]!r}, not "
                                 "reason=jobs")
        reasons.append((reason, int(n)))
    if len(reasons) > MAX_REASONS:
        raise PermanentError(f"the head's queue answer gives more than {MAX_REASONS} reasons")
    if counts[3] > counts[0]:
        raise PermanentError(f"the head's queue answer has {counts[3]} jobs blocked of "
                             f"{counts[0]} waiting")
    return Queue(counts[0], counts[1], counts[2], tuple(reasons), counts[3])


def demand(q: Queue, use: Mapping[str, NodeUse]) -> Demand:
    """What an elastic role's scheduler says (`Provider.demand`): the jobs of `q` that wait
    for nodes (not those blocked by something no node added would change), with the nodes'
    `use`."""
    return Demand(q.jobs - q.blocked, q.nodes, q.cpus, use)


def finding(q: Queue) -> Finding:
    """The queue for the whole cloud: a steady message (logged when jobs start or stop
    waiting), the figures beside it (shown, not compared: they change all the time)."""
    return Finding(CHECK, True, "jobs waiting" if q.jobs else "no job waiting",
                   state=q.describe())


def unreadable(scheduler: str, why: str) -> Finding:
    """The queue could not be read: a failing finding, the rest of the view standing."""
    return Finding(CHECK, False, f"no queue from {scheduler}: {why}")
