"""Choosing a host for a node that has no domain anywhere.

Spread first: a host with fewer nodes of the same role wins, then one with fewer nodes of the
cloud, then the lexically smaller name (so that plans are deterministic). Only hosts that are
alive by quorum, reachable, not fenced and not backing off are candidates; a candidate must
have the node's image (or its base image, for an overlay) and enough free memory once the
domains already started or placed in this same plan are counted.

A candidate that lacks the image still fits when the node names a source host that is alive,
reachable and reports the image it would copy (`NodeSpec.copied_image`): the planner then
copies it first. Hosts that already have the image always win over hosts that would need a
copy, whatever the spread: a copy costs minutes, an uneven spread costs nothing yet.

Cost: one heap per role, built when the planner reaches that role, so a placement is
O(log hosts) unless many hosts are unfit for the node (each unfit host is set aside once).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Iterable, Mapping

from cloudd.config.intent import RunStrategy
from cloudd.vmctl.plan.model import HostObs, NodeSpec


def has_image(host: HostObs, node: NodeSpec) -> bool:
    return node.image in host.images or (
        node.base_image is not None and node.base_image in host.images)


def can_copy(servers: Mapping[str, HostObs], node: NodeSpec) -> bool:
    """Whether `node` names a source host among `servers` that has the image it would copy."""
    source = node.source
    if source is None:
        return False
    server = servers.get(source.host)
    return server is not None and node.copied_image in server.images


class Placer:
    """Running totals for one planning pass: memory left, nodes per host and per role.

    `servers`: the hosts a copy may come from (alive and reachable, by their last report)."""

    def __init__(self, candidates: Iterable[HostObs], *,
                 servers: Iterable[HostObs] = ()) -> None:
        self.hosts = {h.name: h for h in candidates}
        self.servers = {h.name: h for h in servers}
        self.memory = {name: h.free_memory_mib for name, h in self.hosts.items()}
        self.total: Counter[str] = Counter()
        self.per_role: Counter[tuple[str, str]] = Counter()
        self._role: str | None = None
        self._heap: list[tuple[int, int, str]] = []

    def count(self, *, host: str, role: str) -> None:
        """A node of `role` lives on `host` already (whatever its state)."""
        self.total[host] += 1
        self.per_role[(role, host)] += 1

    def count_all(self, placed: Iterable[tuple[str, str]]) -> None:
        """`count` for many (host, role) pairs at once."""
        pairs = list(placed)
        self.total.update(host for host, _ in pairs)
        self.per_role.update((role, host) for host, role in pairs)

    def charge(self, host: str, memory_mib: int) -> None:
        """A domain will be started on `host` in this plan: its memory is taken."""
        if host in self.memory:
            self.memory[host] -= memory_mib

    def why_not(self, host: str, node: NodeSpec) -> str | None:
        """Why `node` cannot go to `host` (None: it can)."""
        info = self.hosts.get(host)
        if info is None:
            return f"host {host} is not a candidate (not alive, unreachable or backing off)"
        if not has_image(info, node) and not can_copy(self.servers, node):
            return f"host {host} lacks image {node.image}{self._no_source(node)}"
        if self.memory[host] < node.memory_mib:
            return f"host {host} has {self.memory[host]} MiB free, node needs {node.memory_mib}"
        return None

    def _key(self, role: str, host: str) -> tuple[int, int, str]:
        return (self.per_role[(role, host)], self.total[host], host)

    def choose(self, node: NodeSpec, *, among: Collection[str] | None = None) -> str | None:
        """The best host for `node`, already booked; None when no candidate fits. `among`:
        only those hosts, and only with the image already there (a live migration's
        targets: no copy comes first)."""
        if node.pin is not None:
            if self.why_not(node.pin, node) is not None or (
                    among is not None and node.pin not in among):
                return None
            self._book(node.pin, node)
            return node.pin
        if self._role != node.role:
            self._role = node.role
            self._heap = [self._key(node.role, h) for h in self.hosts]
            heapq.heapify(self._heap)
        role, heap, per_role, total = node.role, self._heap, self.per_role, self.total
        memory, hosts, need = self.memory, self.hosts, node.memory_mib
        copy = among is None and can_copy(self.servers, node)
        aside: list[tuple[int, int, str]] = []
        chosen: str | None = None
        fallback: str | None = None  # the best-ranked fit that needs a copy
        while heap:
            entry = heapq.heappop(heap)
            host = entry[2]
            current = (per_role[(role, host)], total[host], host)
            if entry != current:
                # booked since this entry was pushed (a pinned node): requeue at its true rank
                heapq.heappush(heap, current)
                continue
            if memory[host] >= need and (among is None or host in among):
                if has_image(hosts[host], node):
                    chosen = host
                    break
                if copy and fallback is None:
                    fallback = host
            aside.append(entry)
        for entry in aside:
            heapq.heappush(heap, entry)
        if chosen is None and fallback is not None:
            chosen = fallback
            heap.remove((per_role[(role, chosen)], total[chosen], chosen))
            heapq.heapify(heap)
        if chosen is not None:
            self._book(chosen, node)
            heapq.heappush(heap, (per_role[(role, chosen)], total[chosen], chosen))
        return chosen

    def _book(self, host: str, node: NodeSpec) -> None:
        self.total[host] += 1
        self.per_role[(node.role, host)] += 1
        if node.run is not RunStrategy.MANUAL:
            self.memory[host] -= node.memory_mib

    def fits(self, node: NodeSpec) -> str | None:
        """None when some candidate could take `node` now (nothing is booked), else why not."""
        if node.pin is not None:
            why = self.why_not(node.pin, node)
            return None if why is None else f"pinned: {why}"
        if any(self.why_not(h, node) is None for h in self.hosts):
            return None
        return self.explain(node)

    def explain(self, node: NodeSpec) -> str:
        """One sentence for a node that could not be placed."""
        if node.pin is not None:
            return f"pinned: {self.why_not(node.pin, node)}"
        if not self.hosts:
            return "no candidate host (none alive, reachable and out of backoff)"
        if not any(has_image(h, node) for h in self.hosts.values()) \
                and not can_copy(self.servers, node):
            return f"no candidate host has image {node.image}{self._no_source(node)}"
        return f"no candidate host has {node.memory_mib} MiB free"

    def _no_source(self, node: NodeSpec) -> str:
        source = node.source
        if source is None:
            return ""
        if source.host not in self.servers:
            return f" and source host {source.host} is not alive and reachable"
        return f" and source host {source.host} does not report {node.copied_image}"
