"""The per-node overlays a cloud leaves on its hosts: which the leader removes, and when. Pure.

Theory of operation. Each host reports the overlays it made for this cloud and still has
(`HostObs.overlays`: path and node, from the host's own record, so never a base image or
another cloud's file). An overlay is a node's disk and holds what the node wrote (the
database's data): it outlives every undefine that a define of the same node follows (a restart
in place, a new term's DEFINE, a move after a host died) and goes only when no node can need
it again:
- the cloud is to be stopped: every overlay, once its node has no domain left;
- the cloud runs: an overlay whose path no node of the manifest names any more (its node left
  the manifest, or now names another disk), once that node has no domain left.
"No domain left" counts every copy the planner counts as live, on unreachable hosts too (their
last report), but not one on a fenced host: the fence powered that host off.
Never removed: a path the manifest names as a base image; while the cloud runs, a path any
node names as its disk; while it stops, an unmanaged node's disk (that VM is not cloudd's).
That rule is `kept`, which the host's admission of REMOVE_IMAGE applies too.
Not now: an overlay on a host that is not alive, reachable and unfenced, or of a node with an
action in flight or backing off after failures; a later pass asks again.
The host checks again what only it can see (its record names that path for that node's
domain; no domain defined there uses the file): the planner's word alone removes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from cloudd.config.intent import Ensure
from cloudd.vmctl.plan.model import Desired, HostObs, Liveness, RemoveImage


class Disks(Protocol):
    """A node's disks as the manifest names them (a `NodeSpec`, or the manifest's `Node`)."""

    @property
    def name(self) -> str: ...

    @property
    def image(self) -> str | None: ...

    @property
    def base_image(self) -> str | None: ...

    @property
    def managed(self) -> bool: ...


def kept(image: str, nodes: Iterable[Disks], *, stopping: bool) -> str | None:
    """Why the manifest keeps `image` whoever made it ("a base image", "node N's disk"), or
    None when it may go: never a base image; a node's disk only when the cloud is to be
    stopped and cloudd manages that node."""
    nodes = tuple(nodes)
    if any(n.base_image == image for n in nodes):
        return "a base image"
    user = next((n for n in nodes if n.image == image and not (stopping and n.managed)), None)
    return None if user is None else f"node {user.name}'s disk"


def leftovers(desired: Desired, hosts: Iterable[HostObs], *, live: Collection[str],
              held: Callable[[str], bool]) -> list[RemoveImage]:
    """The overlays to remove now, host by host and path by path. `live` are the nodes with
    a domain left; `held(node)` says a node is not to be acted on now (in flight, backing
    off)."""
    stopping = desired.ensure is Ensure.STOPPED
    known = {n.name for n in desired.nodes}
    out: list[RemoveImage] = []
    for host in sorted(hosts, key=lambda h: h.name):
        if host.liveness is not Liveness.ALIVE or not host.reachable or host.fenced:
            continue
        for path, node in sorted(host.overlays):
            if node in live or held(node) or kept(path, desired.nodes, stopping=stopping):
                continue
            why = ("cloud is to be stopped" if stopping
                   else "node is no longer in the manifest" if node not in known
                   else "the manifest no longer names it as the node's disk")
            out.append(RemoveImage(node, host.name, path, f"{why}; its domain is gone"))
    return out
