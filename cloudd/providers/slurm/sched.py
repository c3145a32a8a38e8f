"""The scheduler's view of the compute nodes, and what the leader does about it. Pure.

On the head, the `nodes` action runs `sinfo` (each node's state, and who set its reason and
why) and `squeue` (the running jobs and their nodes, in Slurm's compressed host lists);
`parse_sinfo`, `parse_squeue` and `expand_hostlist` read them, and `encode` packs the result
into the action's answer (one entry per node, a few fields each, so that it stays small).
On the leader, `decode` unpacks it and `judge` compares it with cloudd's own view (below).
The `queue` action runs `squeue` for the jobs that wait (`parse_pending`): the leader gets
their sum (`batchqueue.Queue`: how many, the nodes and CPUs they ask, Slurm's reasons), never
the jobs themselves, and shows it for the whole cloud.


| Slurm says                                   | cloudd says       | finding | action      |
|----------------------------------------------|-------------------|---------|-------------|
| idle, mixed, allocated, completing           | any               | ok      |             |
| down/drained/fail, responding, set by Slurm  | healthy           | not ok  | resume it   |
| down/drained/fail, set by another user       | any               | not ok  | (operator's)|
| drained/draining with cloudd's ELASTIC_REASON | any              | ok      | (leaving)   |
| drained/draining with cloudd's MOVING_REASON  | any              | ok      | (moving)    |
| anything else (down*, unknown, future, ...)  | any               | not ok  |             |
| (not registered)                             | any               | not ok  |             |
| a node that is not a compute node of the cloud | -               | not ok  | delete it   |

"Set by Slurm" means the reason's user is the SlurmUser: the controller marks a node down or
drained itself (`Not responding`, `Kill task failed`, `batch job complete failure`), and
cloudd, which keeps the node's services running, has fixed what it could; an operator's
drain (`scontrol update state=drain` as root) is left alone (`operators`). A node that does
not respond (`*`) is not resumed: it returns by itself when its slurmd registers
(ReturnToService=2).

The leader decides from a reading taken seconds before the head acts, and an operator may
drain the node in between: the head reads the one node again just before `resume_node` and
`drain_node`, and `on_resume` / `on_drain` decide from that reading with the same rule,
refusing to undo or overwrite an operator's drain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cloudd.errors import PermanentError
from cloudd.providers import values
from cloudd.providers.base import RELEASE_NOTES, Finding, NodeUse, Peer, Release
from cloudd.providers.batchqueue import MAX_REASON, Queue, summed

#: Flags sinfo appends to a state: not responding, powered down, powering up, and so on.
_FLAGS = "*~#!%$@^-"
#: Base states in which a node runs jobs.
SERVING = frozenset({"idle", "mixed", "allocated", "completing"})
#: Base states a node may be resumed from (`scontrol update state=resume`).
RESUMABLE = frozenset({"down", "drained", "draining", "fail", "failing"})
#: The reasons cloudd gives a compute node it drains (an elastic role's idle node leaving,
#: a node moving off a drained host): such a node is neither resumed nor left to an operator.
ELASTIC_REASON = RELEASE_NOTES[Release.LEAVE]
MOVING_REASON = RELEASE_NOTES[Release.MOVE]
#: Either of them: the drain is cloudd's, whoever ran scontrol.
CLOUDD_REASONS = frozenset({ELASTIC_REASON, MOVING_REASON})
#: Most job ids an answer carries per node.
MAX_JOBS = 16
#: Most names a host list may expand to: a bigger one is not a cloud's.
MAX_HOSTS = 65536
#: sinfo's output format: node, long state, the reason's user, the reason (last: it may hold
#: anything, so it is split off last).
SINFO_FORMAT = "%N|%T|%u|%E"
#: squeue's output format: job id and the nodes it runs on.
SQUEUE_FORMAT = "%i|%N"
#: squeue's output format for the jobs that wait: id, nodes and CPUs asked, Slurm's reason.
PENDING_FORMAT = "%i|%D|%C|%r"
#: Slurm's reasons of a pending job that more compute nodes would let start: it waits for
#: resources, behind jobs that do, has not been looked at yet, or asks for more than the
#: partition holds now (`PartitionConfig`: its nodes are the dynamic nodes registered, so a
#: job wider than the cluster waits with it). Any other (held, a start time, a dependency,
#: an association's limit, the partition's node or time limit) no node added would change.
FOR_NODES = frozenset({"Resources", "Priority", "None", "PartitionConfig"})
_CHECK = "scheduler"
#: Control characters: a reason's tab or newline would break an answer's fields, an escape
#: sequence would reach the operator's terminal.
_CONTROL = values.CONTROL


@dataclass(frozen=True)
class SchedNode:
    """One node as Slurm sees it."""

    name: str
    #: sinfo's long state with its flags: "idle", "allocated", "down*", "drained", ...
    state: str
    #: The user who set the reason ("" when there is none).
    by: str = ""
    reason: str = ""
    jobs: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return self.state.rstrip(_FLAGS)

    @property
    def responding(self) -> bool:
        return "*" not in self.state


def expand_hostlist(text: str) -> tuple[str, ...]:
    """Slurm's compressed host list (`c-[1-3,07],x`) as names, in order."""
    names: list[str] = []
    for item in _split_top(text.strip()):
        names.extend(_expand(item, text))
        if len(names) > MAX_HOSTS:
            raise PermanentError(f"host list {text[:60]!r} names more than {MAX_HOSTS} nodes")
    return tuple(names)


def _split_top(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise PermanentError(f"host list {text[:60]!r} has unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise PermanentError(f"host list {text[:60]!r} has unbalanced brackets")
    items.append(text[start:])
    return [i for i in items if i]


def _expand(item: str, whole: str) -> list[str]:
    m = re.fullmatch(r"([^\[\]]*)\[([0-9,-]+)\](.*)", item)
    if m is None:
        if "[" in item or "]" in item:
            raise PermanentError(f"host list {whole[:60]!r} has a bad range in {item!r}")
        return [item]
    prefix, ranges, rest = m.groups()
    tails = _expand(rest, whole)
    out: list[str] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise PermanentError(f"host list {whole[:60]!r} has a bad range {part!r}")
        if int(hi or lo) - int(lo) > MAX_HOSTS:
            raise PermanentError(f"host list {whole[:60]!r} names more than {MAX_HOSTS} nodes")
        out.extend(f"{prefix}{str(n).zfill(len(lo))}{tail}"
                   for n in range(int(lo), int(hi or lo) + 1) for tail in tails)
    return out


def parse_sinfo(text: str) -> dict[str, SchedNode]:
    """`sinfo -h -N -o SINFO_FORMAT` as nodes by name (a node in two partitions once)."""
    nodes: dict[str, SchedNode] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 3)
        if len(parts) != 4 or not parts[0] or not parts[1]:
            raise PermanentError(f"sinfo said {line[:80]!r}, not node|state|user|reason")
        name, state, by, reason = (p.strip() for p in parts)
        nodes[name] = SchedNode(name, state, "" if by == "Unknown" else by,
                                "" if reason == "none" else reason)
    return nodes


def parse_squeue(text: str) -> dict[str, tuple[str, ...]]:
    """`squeue -h -o SQUEUE_FORMAT` as node -> the ids of the jobs on it."""
    jobs: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        job, sep, nodelist = line.partition("|")
        if not sep or not job.strip():
            raise PermanentError(f"squeue said {line[:80]!r}, not job|nodes")
        for node in expand_hostlist(nodelist):
            jobs.setdefault(node, []).append(job.strip())
    return {node: tuple(ids) for node, ids in jobs.items()}


def view(sinfo: str, squeue: str) -> tuple[SchedNode, ...]:
    """The nodes of both outputs, with their jobs, sorted by name."""
    nodes = parse_sinfo(sinfo)
    jobs = parse_squeue(squeue)
    return tuple(SchedNode(n.name, n.state, n.by, n.reason, jobs.get(n.name, ()))
                 for n in sorted(nodes.values(), key=lambda n: n.name))


def encode(nodes: Iterable[SchedNode]) -> dict[str, str]:
    """An answer: node -> "state TAB by TAB jobs TAB reason", jobs and reason bounded."""
    out = {}
    for n in nodes:
        jobs = ",".join(n.jobs[:MAX_JOBS]) + (f",+{len(n.jobs) - MAX_JOBS}"
                                               if len(n.jobs) > MAX_JOBS else "")
        reason = _CONTROL.sub(" ", n.reason)[:MAX_REASON]
        out[n.name] = f"{n.state}\t{n.by}\t{jobs}\t{reason}"
    return out


def decode(answer: Mapping[str, str]) -> tuple[SchedNode, ...]:
    """The nodes of a `nodes` answer, refused as a whole when one entry is malformed.

    The head is a tenant's VM: what it says reaches the leader's log and the operator's
    terminal (`inspect`), so a name that is not one word or a control character anywhere
    (an escape sequence) refuses the answer."""
    nodes = []
    for name, value in sorted(answer.items()):
        if not re.fullmatch(r"[^\s/\x00-\x1f\x7f]{1,64}", name):
            raise PermanentError(f"the head's answer names node {name[:40]!r}, not a name")
        parts = value.split("\t", 3)
        if (len(parts) != 4 or not parts[0] or re.search(r"\s", parts[0])
                or _CONTROL.search(value.replace("\t", " "))):
            raise PermanentError(f"the head's answer for node {name[:40]!r} is not "
                                 "state, user, jobs and reason")
        state, by, jobs, reason = parts
        nodes.append(SchedNode(name, state, by, reason, tuple(j for j in jobs.split(",") if j)))
    return tuple(nodes)


def parse_pending(text: str) -> Queue:
    """`squeue -h -t PENDING -o PENDING_FORMAT` summed (`batchqueue.Queue`)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|", 3)]
        if len(parts) != 4 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
            raise PermanentError(f"squeue said {line[:80]!r}, not job|nodes|cpus|reason")
        reason = _CONTROL.sub(" ", parts[3])
        jobs.append((int(parts[1]), int(parts[2]), reason, reason in FOR_NODES))
    return summed(jobs)


@dataclass(frozen=True)
class Judgement:
    """What the leader shows and does after comparing Slurm's view with its own."""

    findings: tuple[Finding, ...]
    resume: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()


def judge(nodes: Sequence[SchedNode], computes: Sequence[Peer], *,
          slurm_user: str) -> Judgement:
    """The table of the module docstring, row by row, for every node of either view."""
    seen = {n.name: n for n in nodes}
    findings: list[Finding] = []
    resume: list[str] = []
    for peer in sorted(computes, key=lambda p: p.node):
        n = seen.get(peer.node)
        if n is None:
            findings.append(Finding(_CHECK, False, "not registered with slurmctld"
                                    + ("" if peer.healthy else " (its node is not healthy)"),
                                    peer.node))
            continue
        why = f" ({n.reason}, set by {n.by or 'nobody'})" if n.reason else ""
        if n.reason == ELASTIC_REASON and n.base in ("drained", "draining"):
            findings.append(_found(n, True, f"{n.state} in Slurm: leaving the cloud, no "
                                            "longer needed"))
        elif n.reason == MOVING_REASON and n.base in ("drained", "draining"):
            findings.append(_found(n, True, f"{n.state} in Slurm: moving off a drained host "
                                            "once its jobs end"))
        elif n.base in SERVING:
            findings.append(_found(n, True, f"{n.state} in Slurm"))
        elif (n.base in RESUMABLE and n.responding and n.by == slurm_user and peer.healthy):
            resume.append(n.name)
            findings.append(_found(n, False, f"{n.state} in Slurm{why}: resumed"))
        elif operators(n, slurm_user=slurm_user):
            findings.append(_found(n, False, f"{n.state} in Slurm{why}: left to its operator"))
        else:
            findings.append(_found(n, False, f"{n.state} in Slurm{why}"))
    ours = {p.node for p in computes}
    delete = tuple(n.name for n in sorted(nodes, key=lambda n: n.name) if n.name not in ours)
    findings.extend(_found(seen[name], False, "known to Slurm but not a compute node of the "
                           "cloud: deleted") for name in delete)
    return Judgement(tuple(findings), tuple(resume), delete)


def operators(n: SchedNode, *, slurm_user: str) -> bool:
    """Whether the node is out of service by an operator's word: down or drained by a user
    other than the SlurmUser, with a reason that is not one of cloudd's. cloudd neither
    resumes such a node nor drains it over."""
    return (n.base in RESUMABLE and n.by not in ("", slurm_user)
            and n.reason not in CLOUDD_REASONS)


class OnResume(StrEnum):
    RESUME = "resume"  # scontrol update state=resume
    SERVING = "serving"  # it takes jobs already: nothing to do


class OnDrain(StrEnum):
    DRAIN = "drain"  # scontrol update state=drain with cloudd's reason
    DRAINED = "drained"  # drained already with that reason: nothing to do


def on_resume(n: SchedNode, *, slurm_user: str) -> OnResume:
    """What the head's `resume_node` does with the node as it reads it just before: an
    operator's drain or down is refused (PermanentError), a node that serves is left so, any
    other (Slurm's own, cloudd's) resumed."""
    if operators(n, slurm_user=slurm_user):
        raise _refused("resume_node", n)
    return OnResume.SERVING if n.base in SERVING else OnResume.RESUME


def on_drain(n: SchedNode, reason: str, *, slurm_user: str) -> OnDrain:
    """What the head's `drain_node` does with the node as it reads it just before, to drain
    it with cloudd's `reason`: an operator's drain or down is refused (PermanentError: its
    reason stays), a node drained with that reason already is left so, any other drained."""
    if operators(n, slurm_user=slurm_user):
        raise _refused("drain_node", n)
    if n.base in ("drained", "draining") and n.reason == reason:
        return OnDrain.DRAINED
    return OnDrain.DRAIN


def _refused(action: str, n: SchedNode) -> PermanentError:
    # What the head read reaches the leader's log: bounded, no control character.
    state, by, reason = (_CONTROL.sub(" ", text)[:limit]
                         for text, limit in ((n.state, 20), (n.by, 32), (n.reason, 60)))
    return PermanentError(f"{action}: {n.name} is {state} by its operator's word (reason "
                          f"{reason!r}, set by {by}): left as it is")


def use_of(n: SchedNode | None) -> NodeUse:
    """A compute node of an elastic role as the leader's elastic loop reads it."""
    if n is None:
        return NodeUse()
    return NodeUse(ready=n.base in SERVING and n.responding,
                   busy=bool(n.jobs) or n.base in ("allocated", "mixed", "completing",
                                                   "draining"),
                   released=n.reason == ELASTIC_REASON and n.base in ("drained", "draining"),
                   moving=n.reason == MOVING_REASON and n.base in ("drained", "draining"))


def _found(n: SchedNode, ok: bool, message: str) -> Finding:
    return Finding(_CHECK, ok, message, n.name, state=n.state, jobs=n.jobs)
