"""The scheduler's view of the compute nodes, and what the leader does about it, purely.

The head reads `pbsnodes -x` (`parse_pbsnodes`) and answers the leader one line of JSON per
node (`encode`); the leader reads that answer as it would any message from a node that may be
compromised (`decode`: names, states and job ids checked, sizes bounded), then decides:
- `registration`: which compute nodes of the cloud pbs_server lacks (`qmgr create node`) and
  which nodes it lists that are no longer in the cloud (`qmgr delete node`);
- `judge`: one finding per node, and which nodes to nudge: a node TORQUE shows `down` while
  cloudd sees its agent healthy had its pbs_mom restarted by the supervisor, and `momctl -C`
  makes that pbs_mom report to the server at once instead of at its next status cycle.
A fresh or restarted pbs_mom reads `down` for some seconds before `free`; a nudge then is
harmless, and nothing here waits for it.

On the head, `on_create` and `on_delete` choose what the `create_node` and `delete_node`
actions do with what pbs_server says of the node: `qmgr delete node` of a node that still
runs jobs does not return (seen with TORQUE 6.1.3.h5), so such a node is first set offline,
with `DRAIN_NOTE`, and deleted once its jobs are gone; a node of the cloud found offline with
that note (it came back before it was deleted) is cleared. An operator's own `pbsnodes -o`
carries another note, or none, and is never undone.

cloudd drains a compute node the same way (`pbsnodes -o`) with one of its own notes
(`RELEASE_NOTES`): an elastic role's idle node to leave the cloud, a node on a drained host
to move. pbs_server starts no new job there and lets its jobs finish; the head reports which
(`leaving`, `moving`: the note itself stays on the head), `use_of` reads it, and the leader
lets the node go once no job is left, or takes it back (`pbsnodes -c`, only for those notes).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from cloudd.errors import PermanentError
from cloudd.providers.base import RELEASE_NOTES, Finding, NodeUse, Peer, Release

#: TORQUE's node states (a node may be in several at once: `down,job-exclusive`).
STATES = frozenset({"free", "down", "offline", "job-exclusive", "job-sharing", "busy",
                    "reserve", "time-shared", "state-unknown", "unknown",
                    # A node pbs_server has not yet sent the list of its moms (a new one).
                    "MOM-list-not-sent"})
#: States in which a node takes no new job through no choice of the scheduler's.
UNUSABLE = frozenset({"down", "offline", "state-unknown", "unknown"})
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_JOB = re.compile(r"^[0-9]{1,12}(\[[0-9]{0,9}\])?(\.[A-Za-z0-9-]{1,63}){1,8}\Z")
MAX_NODES, MAX_JOBS = 4096, 64
CHECK = "torque_node"
#: The note cloudd gives a node it sets offline because the node left the cloud.
DRAIN_NOTE = "cloudd: left the cloud, deleted once its jobs end"
LEAVING, MOVING = RELEASE_NOTES[Release.LEAVE], RELEASE_NOTES[Release.MOVE]


@dataclass(frozen=True)
class TorqueNode:
    """One node as pbs_server sees it."""

    name: str
    states: frozenset[str]
    np: int
    jobs: tuple[str, ...] = ()
    #: The node's note (`pbsnodes -N`); read on the head only, never sent to the leader.
    note: str = ""
    #: Set offline by cloudd to leave the cloud (its note is `LEAVING`), or to move off a
    #: drained host (`MOVING`): what the leader is told of the note.
    leaving: bool = False
    moving: bool = False

    @property
    def usable(self) -> bool:
        return not self.states & UNUSABLE

    @property
    def state(self) -> str:
        """TORQUE's own word(s) for the node, as `pbsnodes` prints them."""
        return ",".join(sorted(self.states))

    def describe(self) -> str:
        state = self.state or "no state"
        if not self.jobs:
            return f"{state}, no job"
        shown = ", ".join(self.jobs[:5]) + (", ..." if len(self.jobs) > 5 else "")
        return f"{state}, {len(self.jobs)} job(s): {shown}"


def _jobs(text: str) -> tuple[str, ...]:
    """`0/3.h1,1/4.h1` or `0-1/3.h1` (TORQUE's slot/job list): the job ids, once each."""
    seen: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        job = item.split("/", 1)[-1]
        if job not in seen:
            seen.append(job)
    return tuple(seen)


def parse_pbsnodes(xml: str) -> tuple[TorqueNode, ...]:
    """The nodes of `pbsnodes -x` (run on the head, from its own pbs_server)."""
    if not xml.strip():
        return ()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise PermanentError(f"pbsnodes -x printed no XML: {exc}") from None
    nodes = []
    for node in root.iter("Node"):
        np_text = node.findtext("np") or "0"
        nodes.append(TorqueNode(
            name=(node.findtext("name") or "").strip(),
            states=frozenset(s.strip() for s in (node.findtext("state") or "").split(",")
                             if s.strip()),
            np=int(np_text) if np_text.isdigit() else 0,
            jobs=_jobs(node.findtext("jobs") or ""),
            note=(note := (node.findtext("note") or "").strip()),
            leaving=note == LEAVING, moving=note == MOVING))
    return tuple(nodes)


def encode(nodes: tuple[TorqueNode, ...]) -> dict[str, str]:
    """The head's answer to `nodes`: node name -> its view as one line of JSON."""
    return {n.name: json.dumps({"state": sorted(n.states), "np": n.np,
                                "jobs": list(n.jobs[:MAX_JOBS]), "leaving": n.leaving,
                                "moving": n.moving},
                               separators=(",", ":"))
            for n in nodes}


_FIELDS = frozenset({"state", "np", "jobs"})
_DRAINS = frozenset({"leaving", "moving"})


def _refuse(name: str, why: str) -> PermanentError:
    return PermanentError(f"the head's node list is malformed: {name[:80]!r}: {why}")


def decode(answer: Mapping[str, str]) -> dict[str, TorqueNode]:
    """The head's answer, each value checked; one precise error for the first bad one."""
    if len(answer) > MAX_NODES:
        raise _refuse("", f"more than {MAX_NODES} nodes")
    views = {}
    for name, text in answer.items():
        if not _NAME.match(name):
            raise _refuse(name, "not a node name")
        try:
            raw = json.loads(text)
        except (TypeError, ValueError):
            raise _refuse(name, "not JSON") from None
        if not isinstance(raw, dict) or not _FIELDS <= set(raw) <= _FIELDS | _DRAINS:
            raise _refuse(name, "not a node's state, np, jobs and cloudd's drain of it")
        states, np, jobs = raw["state"], raw["np"], raw["jobs"]
        # a head of an earlier version says nothing of cloudd's drains
        leaving, moving = raw.get("leaving", False), raw.get("moving", False)
        if not isinstance(leaving, bool) or not isinstance(moving, bool):
            raise _refuse(name, "leaving or moving is not true or false")
        if (not isinstance(states, list) or not all(isinstance(s, str) for s in states)
                or not set(states) <= STATES):
            raise _refuse(name, f"unknown state in {str(states)[:80]}")
        if not isinstance(np, int) or isinstance(np, bool) or not 0 <= np <= 4096:
            raise _refuse(name, "np is not a count of slots")
        if (not isinstance(jobs, list) or len(jobs) > MAX_JOBS
                or not all(isinstance(j, str) and _JOB.match(j) for j in jobs)):
            raise _refuse(name, "jobs are not TORQUE job ids")
        views[name] = TorqueNode(name, frozenset(states), np, tuple(jobs), leaving=leaving,
                                 moving=moving)
    return views


class OnCreate(StrEnum):
    CREATE = "create"  # qmgr create node
    RESUME = "resume"  # pbsnodes -c, and the note cleared: cloudd's own drain undone
    KEEP = "keep"  # registered already (offline by an operator stays so)


class OnDelete(StrEnum):
    DELETE = "delete"  # qmgr delete node
    DRAIN = "drain"  # pbsnodes -o -N DRAIN_NOTE: jobs still run there
    GONE = "gone"  # not registered: nothing to do


def on_create(view: TorqueNode | None) -> OnCreate:
    if view is None:
        return OnCreate.CREATE
    if "offline" in view.states and view.note == DRAIN_NOTE:
        return OnCreate.RESUME
    return OnCreate.KEEP


def on_delete(view: TorqueNode | None) -> OnDelete:
    if view is None:
        return OnDelete.GONE
    return OnDelete.DRAIN if view.jobs else OnDelete.DELETE


@dataclass(frozen=True)
class Registration:
    """What the head's pbs_server must be told so that its nodes are the cloud's computes."""

    create: tuple[tuple[str, int], ...] = ()
    delete: tuple[str, ...] = ()


def registration(computes: Mapping[str, int], registered: Mapping[str, TorqueNode]
                 ) -> Registration:
    """`computes`: each compute node of the cloud with the np it is created with."""
    return Registration(
        create=tuple((name, np) for name, np in sorted(computes.items())
                     if name not in registered),
        delete=tuple(sorted(name for name in registered if name not in computes)))


@dataclass(frozen=True)
class TorqueJudgement:
    """`monitor`'s conclusions: the findings, and the nodes whose pbs_mom to nudge."""

    findings: tuple[Finding, ...]
    nudge: tuple[str, ...] = ()


def judge(computes: tuple[Peer, ...], registered: Mapping[str, TorqueNode]) -> TorqueJudgement:
    """One finding per compute node (with pbs_server's state and jobs of it) and per node
    pbs_server lists that is not the cloud's; the nodes to nudge."""
    findings, nudge = [], []
    for peer in sorted(computes, key=lambda p: p.node):
        view = registered.get(peer.node)
        if view is None:
            findings.append(Finding(CHECK, False, "not registered with pbs_server", peer.node))
            continue
        if view.leaving and "offline" in view.states:
            ok, message = True, f"{view.describe()}: leaving the cloud, no longer needed"
        elif view.moving and "offline" in view.states:
            ok, message = True, f"{view.describe()}: moving off a drained host once its jobs end"
        elif view.usable:
            ok, message = True, view.describe()
        elif "down" in view.states and "offline" not in view.states and peer.healthy:
            nudge.append(peer.node)
            ok, message = False, (f"{view.describe()} in TORQUE although its agent is "
                                  "healthy: pbs_mom asked to report (momctl -C)")
        else:
            why = "" if peer.healthy else " (its agent is not healthy either)"
            ok, message = False, f"{view.describe()}{why}"
        findings.append(Finding(CHECK, ok, message, peer.node, state=view.state,
                                jobs=view.jobs))
    names = {p.node for p in computes}
    for name in sorted(set(registered) - names):
        findings.append(Finding(CHECK, False, "registered with pbs_server but not a compute "
                                "node of the cloud", name, state=registered[name].state,
                                jobs=registered[name].jobs))
    return TorqueJudgement(tuple(findings), tuple(nudge))


def use_of(view: TorqueNode | None) -> NodeUse:
    """A compute node as the leader's elastic loop and host drains read it."""
    if view is None:
        return NodeUse()
    offline = "offline" in view.states
    return NodeUse(ready=view.usable, busy=bool(view.jobs), released=view.leaving and offline,
                   moving=view.moving and offline)
