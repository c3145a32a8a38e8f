"""The soak's safety invariants, as pure checkers fed what the runner observes from outside.

Each `observe...` returns the breaches it found (usually none); the runner stops the soak at
the first. What each checks:
- `Leaders`: never two members acting as leader in one term (from the agents' `status`
  answers and from every `election_acting` line of their logs);
- `Singles`: never two processes serving one thing (two agents for one node, two masters of
  one service on one node);
- `observe_domains`: never two running domains for one node, nor two qemu processes for one
  domain (VM nodes: libvirt's view and the machine's);
- `Untouched`: a domain cloudd does not own (no cloudd metadata) keeps its definition and its
  state;
- `Ledger`: no write the site acknowledged is missing from a read that started after the
  acknowledgement;
- `Exits`: no agent exits unless the schedule killed it;
- `converged`: after the faults, the leader's view matches the manifest (`reasons` says what
  does not yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Breach:
    invariant: str
    detail: str

    def line(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass
class Leaders:
    """term -> the member seen acting in it (and where it was seen first)."""

    acting: dict[int, tuple[str, str]] = field(default_factory=dict)

    def observe(self, member: str, term: int, *, seen: str) -> list[Breach]:
        first = self.acting.setdefault(term, (member, seen))
        if first[0] == member:
            return []
        return [Breach("one_leader_per_term",
                       f"{first[0]} ({first[1]}) and {member} ({seen}) both acted in term "
                       f"{term}")]

    def observe_status(self, statuses: Mapping[str, Mapping[str, Any] | None]) -> list[Breach]:
        out = []
        for member, s in sorted(statuses.items()):
            if s and s.get("acting") and isinstance(s.get("term"), int):
                out += self.observe(member, s["term"], seen="status")
        return out

    def observe_log(self, member: str, events: Iterable[Mapping[str, Any]]) -> list[Breach]:
        out = []
        for e in events:
            if (e.get("event") == "election_acting" and str(e.get("reason", "")).startswith("yes")
                    and isinstance(e.get("term"), int)):
                out += self.observe(member, e["term"], seen=f"log at {e.get('timestamp')}")
        return out


def observe_singles(counts: Mapping[str, int]) -> list[Breach]:
    """`counts`: what (e.g. `lab-server-1/cloudd`, `lab-database-1/mariadbd`) -> how many
    processes serve it now."""
    return [Breach("one_process_per_node", f"{n} processes serve {what}")
            for what, n in sorted(counts.items()) if n > 1]


def observe_domains(running: Mapping[str, Sequence[str]],
                    qemus: Mapping[str, Sequence[int]]) -> list[Breach]:
    """`running`: node -> the running domains whose cloudd metadata names it (libvirt's view);
    `qemus`: domain -> the qemu processes running it (this machine's view, which also sees a
    qemu that libvirt lost track of). No live migration happens in the soak, so no hand-over
    excuses two."""
    out = [Breach("one_running_domain_per_node",
                  f"{len(names)} running domains for node {node}: {', '.join(sorted(names))}")
           for node, names in sorted(running.items()) if len(names) > 1]
    out += [Breach("one_running_domain_per_node",
                   f"{len(pids)} qemu processes run domain {domain}: "
                   f"{', '.join(map(str, sorted(pids)))}")
            for domain, pids in sorted(qemus.items()) if len(pids) > 1]
    return out


@dataclass
class Untouched:
    """A domain without cloudd metadata: its definition and state as they were at the start."""

    name: str
    xml: str
    state: str

    def observe(self, xml: str | None, state: str | None) -> list[Breach]:
        if xml is None:
            return [Breach("foreign_domain_untouched", f"domain {self.name} is gone")]
        out = []
        if xml != self.xml:
            out.append(Breach("foreign_domain_untouched",
                              f"domain {self.name}'s definition changed"))
        if state != self.state:
            out.append(Breach("foreign_domain_untouched",
                              f"domain {self.name} is {state}, was {self.state}"))
        return out


@dataclass
class Ledger:
    """Every write the site acknowledged: body -> (sent, acknowledged), unix times."""

    writes: dict[str, tuple[float, float]] = field(default_factory=dict)

    def acknowledged(self, body: str, *, sent: float, at: float) -> None:
        self.writes[body] = (sent, at)

    def observe_read(self, stored: Iterable[str], *, started: float) -> list[Breach]:
        """A read of every entry, begun at `started`: each write acknowledged before then must
        be in it."""
        have = set(stored)
        missing = sorted((at, body) for body, (_, at) in self.writes.items()
                         if at < started and body not in have)
        if not missing:
            return []
        shown = ", ".join(f"{b} (acknowledged at {at:.3f})" for at, b in missing[:5])
        return [Breach("no_acknowledged_write_lost",
                       f"{len(missing)} acknowledged writes missing from a read begun at "
                       f"{started:.3f}: {shown}")]


@dataclass
class Exits:
    """Agents that exited: only those the schedule signalled may."""

    def observe(self, agents: Mapping[str, tuple[int | None, bool]]) -> list[Breach]:
        """`agents`: name -> (exit code or None while it runs, the lab signalled it)."""
        return [Breach("no_unscheduled_exit", f"agent {n} exited with {rc}, unsignalled")
                for n, (rc, signalled) in sorted(agents.items())
                if rc is not None and not signalled]


def reasons(view: Mapping[str, Any] | None, *, nodes: Iterable[str],
            agents: Mapping[str, bool],
            domains: Mapping[str, Sequence[str]] | None = None,
            vms: Iterable[str] = ()) -> list[str]:
    """Why the cloud has not converged to the manifest yet (empty: it has).

    `view`: the acting leader's `status`, None when no single leader is followed by all;
    `nodes`: the manifest's nodes; `agents`: agent -> it runs; `domains`: node -> its
    running domains (libvirt's view, None when libvirt could not tell); `vms`: the nodes
    that must each run exactly one domain."""
    out = [f"agent {n} is not running" for n, up in sorted(agents.items()) if not up]
    vms = sorted(vms)
    if vms and domains is None:
        out.append("libvirt did not answer")
    for node in vms if domains is not None else ():
        if len(domains.get(node, ())) != 1:
            out.append(f"node {node} runs {len(domains.get(node, ()))} domains")
    if view is None:
        return [*out, "no single acting leader followed by every agent"]
    phases = {n: v.get("phase") for n, v in (view.get("nodes") or {}).items()}
    for node in sorted(nodes):
        if phases.get(node) != "ready":
            out.append(f"node {node} is {phases.get(node) or 'unknown to the leader'}")
    return out
