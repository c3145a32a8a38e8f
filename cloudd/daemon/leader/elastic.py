"""Compute that follows the queue: which of an elastic role's nodes the cloud uses. Pure.

Theory of operation. An elastic role lists its candidate nodes (at least `max` of them) and
its bounds; the nodes in use are a prefix-free subset kept in the cloud's record, so that a
new leader goes on from where the last one stood. On every pass the leader reads the batch
scheduler through its provider (the jobs waiting for nodes, summed: `Wanted`; and
per node in use whether it is registered, runs jobs, and whether the scheduler has drained
it) and asks `step` what to change. `step` never waits and remembers only what it returns
(`Memory`): when each node was first seen idle, which nodes it asked the scheduler to drain,
and when the role last grew or shrank.

The rules, in the order they apply:
- Below `min` (a new cloud, a bound raised): take candidates until `min` are in use.
- Jobs wait for nodes: the role needs `wanted = max(nodes asked, ceil(CPUs asked / the
  node's vCPUs))` nodes beyond those that can take them now (in use, not drained, not busy)
  or soon (in use, not yet registered: booting; a node drained to move off a drained host
  counts as neither). Nodes being drained are taken back first
  (their drain undone), then new candidates are taken, never beyond `max`. Growth is not
  held back by any cool-down: a burst of jobs is answered at once, and nodes still booting
  count as capacity, so that the same burst never asks twice.
- No job waits for nodes: a node in use that has run no job for `idle_after` seconds (the
  count starts again whenever jobs wait for nodes: a node idle beside a job waiting for more
  nodes is wanted), and
  the role not grown within `cooldown` seconds, is drained in the scheduler (its jobs, if
  one starts meanwhile, finish there), the most recently taken idle candidates first (an
  older idle node waits while a newer one's idle time runs; a busy one is passed over), never
  below `min` counting the nodes already draining.
- A pass without the scheduler's word on the nodes (it did not answer) keeps each node's
  idle count as it was: a slow head delays nothing.
- A node the scheduler shows drained with no job on it leaves the role's nodes in use: the
  leader's planner then removes its domain like any node that left the manifest. Which
  nodes are being drained is the scheduler's word (cloudd's own reason for it), whoever
  asked: a new leader goes on with the drains of the last one (its memory is gone, the
  scheduler's is not).
Every change comes with its reason, for the event log and `cloudd-cli plan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Wanted:
    """The jobs that wait for nodes, summed (a `batchqueue.Queue`, without what no node added
    would start): how many, and the nodes and CPUs they ask for together."""

    jobs: int = 0
    nodes: int = 0
    cpus: int = 0


@dataclass(frozen=True)
class Bounds:
    """An elastic role's bounds, as the manifest gives them."""

    min: int
    max: int
    #: Seconds a node runs no job before it is drained to leave.
    idle_after: float = 300.0
    #: Seconds after the role grew during which no node is drained.
    cooldown: float = 120.0


@dataclass(frozen=True)
class Use:
    """One node in use, as its scheduler sees it."""

    #: Registered with the scheduler and able to take a job (not down, not drained).
    ready: bool = False
    #: Runs at least one job now.
    busy: bool = False
    #: Drained (or draining) in the scheduler, by cloudd, to leave.
    drained: bool = False
    #: Drained by cloudd to move off a drained host: neither capacity nor leaving.
    moving: bool = False


@dataclass(frozen=True)
class Memory:
    """What the leader keeps between passes for one elastic role (lost with the leader: a new
    one starts counting idleness afresh, which only delays a shrink)."""

    #: node -> when it was first seen idle (ready, no job) in the current idle stretch
    idle_since: Mapping[str, float] = field(default_factory=dict)
    #: nodes asked to drain to leave
    releasing: frozenset[str] = frozenset()
    last_grown: float | None = None


@dataclass(frozen=True)
class ElasticChange:
    """One decision about one node, with its reason."""

    node: str
    #: "take" (into use), "drain" (in the scheduler, to leave), "keep" (undo its drain),
    #: "leave" (out of use)
    what: str
    reason: str


@dataclass(frozen=True)
class ElasticStep:
    """What one pass decides: the nodes in use after it, and each change."""

    active: tuple[str, ...]
    changes: tuple[ElasticChange, ...] = ()
    memory: Memory = Memory()
    #: Why nothing more happens now (a bound reached, a cool-down), "" when nothing waits.
    waiting: str = ""


def step(bounds: Bounds, candidates: Sequence[str], active: Sequence[str], queue: Wanted,
         use: Mapping[str, Use], memory: Memory, *, vcpus: int, now: float) -> ElasticStep:
    """The next elastic step of one role (see the module's rules)."""
    in_use = [c for c in candidates if c in set(active)]
    free = [c for c in candidates if c not in set(in_use)]
    changes: list[ElasticChange] = []
    # The nodes being drained to leave, as the scheduler shows them (whoever asked: an
    # earlier leader's memory went with it; a drain undone by anyone is undone here too);
    # what this leader asked for when the scheduler did not answer.
    releasing = ({n for n in in_use if use.get(n, Use()).drained} if use
                 else set(memory.releasing) & set(in_use))
    last_grown = memory.last_grown

    def take(count: int, reason: str) -> None:
        nonlocal last_grown
        for name in free[:max(0, min(count, bounds.max - len(in_use)))]:
            in_use.append(name)
            free.remove(name)
            changes.append(ElasticChange(name, "take", reason))
            last_grown = now

    if len(in_use) < bounds.min:
        take(bounds.min - len(in_use), f"below the role's minimum of {bounds.min}")

    waiting = ""
    wanted = max(queue.nodes, -(-queue.cpus // max(1, vcpus))) if queue.nodes else 0
    if wanted:
        able = [n for n in in_use if n not in releasing and not use.get(n, Use()).moving and (
            not use.get(n, Use()).ready or not use.get(n, Use()).busy)]
        short = wanted - len(able)
        why = (f"{queue.jobs} job(s) wait for nodes, asking {queue.nodes} "
               f"node(s) and {queue.cpus} CPU(s)")
        for name in sorted(releasing, key=candidates.index, reverse=True)[:max(0, short)]:
            releasing.discard(name)
            changes.append(ElasticChange(name, "keep", why))
            short -= 1
        if short > 0:
            before = len(in_use)
            take(short, why)
            if len(in_use) - before < short:
                waiting = (f"{short - (len(in_use) - before)} more node(s) wanted, the role's "
                           f"maximum of {bounds.max} reached")

    # Drained by the scheduler at cloudd's request, no job left: out of use (after the
    # demand above, so that a node being drained is taken back rather than let go).
    for name in sorted(releasing):
        seen = use.get(name, Use())
        if seen.drained and not seen.busy and len(in_use) > bounds.min:
            in_use.remove(name)
            releasing.discard(name)
            changes.append(ElasticChange(name, "leave", "drained in the scheduler, no job left"))

    # No word from the scheduler this pass (it did not answer): idleness counts on as it was.
    idle_since = {n: t for n, t in memory.idle_since.items() if n in in_use} if not use else {}
    for name in in_use if use else ():
        seen = use.get(name, Use())
        if seen.ready and not seen.busy and name not in releasing:
            # Idleness counts only while no job waits for nodes: a node idle beside a job
            # that waits for more nodes (a wide job) is wanted, not idle.
            idle_since[name] = now if wanted else memory.idle_since.get(name, now)

    if use and not wanted:  # no drain without the scheduler's word
        cooling = last_grown is not None and now - last_grown < bounds.cooldown
        # a node moving off a drained host takes no job until it has moved: not one to stay
        staying = len(in_use) - len(releasing) - sum(
            1 for n in in_use if n not in releasing and use.get(n, Use()).moving)
        for name in sorted(idle_since, key=candidates.index, reverse=True):
            if staying <= bounds.min:
                break
            if now - idle_since[name] < bounds.idle_after:
                break  # the newest idle node goes first: an older one waits for it
            if cooling:
                waiting = (f"{name} idle, drained once the role's cool-down of "
                           f"{bounds.cooldown:g}s after growing has passed")
                break
            releasing.add(name)
            staying -= 1
            idle = now - idle_since.pop(name)
            changes.append(ElasticChange(
                name, "drain", f"no job for {idle:.0f}s (the role's idle_after is "
                               f"{bounds.idle_after:g}s), none waiting for nodes"))

    return ElasticStep(tuple(in_use), tuple(changes),
                replace(memory, idle_since=idle_since, releasing=frozenset(releasing),
                        last_grown=last_grown), waiting)
