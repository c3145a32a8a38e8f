"""Whether a leader's host command may run on this host: checked against the cloud this host
has in force, never against what the command says about itself.

Theory of operation. A command that names host resources is checked against the manifest
generation this host holds, by what this host can compute from it alone:
- DEFINE: the domain must be a managed node's of this cloud, and its XML exactly the text
  this host renders itself for that node and the command's term (`cloudd.vmctl.domains`, the
  code the leader renders with); that rendering must keep to the host's folders
  (`cloudd.vmctl.confine`). Any other XML (a block disk, a share of `/`, a console log in
  /etc, another cloud's metadata) differs from the rendering and is refused as such. When
  the template attaches a seed, the command's generation must be this host's too: the host
  makes the seed from its own generation, and the seed holds what the XML does not show
  (root's SSH keys, the time servers, the identity where the template has no `${cmdline}`).
- OVERLAY: the domain must be a managed node's of this cloud, image and base that node's
  `image` and `base_image` in the manifest, the base inside the host's image folders
  (HostAgent checks the overlay itself is).
- REMOVE_IMAGE: the image must be no node's base image in the manifest; while the cloud runs,
  no node's disk (only a node that left the manifest, or a disk its node no longer names, is
  removed); while it is stopped, no unmanaged node's disk (that VM is not cloudd's): the
  planner's own rule (`cloudd.vmctl.plan.leftovers.kept`), checked again here (HostAgent
  checks the image is inside the image folders, that its record made it for that domain, and
  that nothing defined there uses it).
- FETCH: the source address must be a pool host's address as the manifest gives it, and the
  image one the manifest names (HostAgent checks it is inside the image folders).
- MIGRATE: the domain must be a managed node's of this cloud, the target another pool host
  that names the same migration storage as this one, and its URI and address the ones the
  manifest gives for it; libvirt's shared-storage check skipped only where the manifest says
  so for this host, the stream in clear only where it says so for the target: the leader's
  word alone sends no guest anywhere, nor lowers how it goes.
Other commands name only domains, whose ownership HostAgent checks by their metadata.

A command the leader rendered from a generation this host has not taken yet would fail these
checks for no fault of the leader: when the command's `generation` differs from this host's,
a refusal is temporary and says so ("generation X is not in force here yet"), so the leader
retries once the generation has reached this host.

Pure: `refusal(command, grounds)` returns an `AdmissionRefusal` or None (the rendering
callable renders the template text that comes with the cloud, and reads no file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cloudd.config.intent import Ensure
from cloudd.config.model import Cloud
from cloudd.errors import ClouddError
from cloudd.vmctl.confine import Folders, inside, problem
from cloudd.vmctl.domains import node_of_domain, uses_seed
from cloudd.vmctl.hostagent import HostCommand, Op
from cloudd.vmctl.plan.leftovers import kept

#: Renders node `node` of `cloud` in `term` (DomainRenderer.render).
Render = Callable[[Cloud, str, int], str]


@dataclass(frozen=True)
class AdmissionRefusal:
    reason: str
    """One sentence, for the log and the leader."""
    temporary: bool = False
    """True when the sender's generation is not in force here yet: worth retrying."""


@dataclass(frozen=True)
class Grounds:
    """What this host checks commands against."""

    cloud: Cloud
    """The manifest generation in force on this host."""
    generation: str
    """Its fingerprint (`DomainRenderer.generation`)."""
    render: Render
    folders: Folders
    me: str = ""
    """This host's name in the pool."""


def refusal(command: HostCommand, grounds: Grounds) -> AdmissionRefusal | None:
    """Why `command` may not run here, or None when it may."""
    check = _CHECKS.get(command.op)
    why = check(command, grounds) if check is not None else None
    if why is None:
        return None
    if command.generation != grounds.generation:
        return AdmissionRefusal(f"manifest generation {_short(command.generation)} is not in force "
                       f"here yet (this host has {_short(grounds.generation)}): {why}",
                       temporary=True)
    return AdmissionRefusal(why)


def _short(generation: str) -> str:
    return generation[:12] or "(none)"


def _define(cmd: HostCommand, g: Grounds) -> str | None:
    cloud = g.cloud
    node = node_of_domain(cloud, cmd.domain)
    if node is None:
        return f"domain {cmd.domain!r} is no node's of cloud {cloud.name}"
    if not node.managed:
        return f"node {node.name} of cloud {cloud.name} is not managed: cloudd defines no domain"
    try:
        mine = g.render(cloud, node.name, cmd.term)
    except (ClouddError, OSError) as e:
        return f"this host cannot render node {node.name}: {e}"
    if cmd.xml != mine:
        return (f"the domain XML of {cmd.domain} is not this host's rendering of node "
                f"{node.name} in term {cmd.term}")
    why = problem(mine, g.folders)
    if why is not None:
        return f"domain {cmd.domain}: {why}"
    if cmd.generation != g.generation and uses_seed(cloud.template_text or ""):
        # the seed holds what the XML does not show (root's keys, the time servers): this
        # host makes it from its own generation, so only the leader's may be in force here
        return f"node {node.name}'s seed is made from the manifest in force here"
    return None


def _overlay(cmd: HostCommand, g: Grounds) -> str | None:
    node = node_of_domain(g.cloud, cmd.domain)
    if node is None or not (node.managed and node.image == cmd.image
                            and node.base_image == cmd.base):
        return (f"overlay {cmd.image} on {cmd.base} is not the image and base image of a "
                f"managed node's domain {cmd.domain!r} in the manifest of cloud {g.cloud.name}")
    if not inside(cmd.base, g.folders.images):
        return (f"base image {cmd.base} is outside this host's image folders "
                f"({', '.join(g.folders.images) or 'none'})")
    return None


def _fetch(cmd: HostCommand, g: Grounds) -> str | None:
    if cmd.source not in {h.address for h in g.cloud.pool}:
        return (f"fetch source {cmd.source!r} is no pool host's address in the manifest of "
                f"cloud {g.cloud.name}")
    images = {p for n in g.cloud.nodes for p in (n.image, n.base_image) if p}
    if cmd.image not in images:
        return f"image {cmd.image} is none of the images in the manifest of cloud {g.cloud.name}"
    return None


def _remove_image(cmd: HostCommand, g: Grounds) -> str | None:
    cloud = g.cloud
    why = kept(cmd.image, cloud.nodes, stopping=cloud.ensure is Ensure.STOPPED)
    if why is None:
        return None
    return f"image {cmd.image} is {why} in the manifest of cloud {cloud.name}"


def _migrate(cmd: HostCommand, g: Grounds) -> str | None:
    cloud = g.cloud
    node = node_of_domain(cloud, cmd.domain)
    if node is None or not node.managed:
        return f"domain {cmd.domain!r} is no managed node's of cloud {cloud.name}"
    pool = {h.name: h for h in cloud.pool}
    here, there = pool.get(g.me), pool.get(cmd.target)
    if there is None or there.name == g.me:
        return f"migrate target {cmd.target!r} is no other pool host of cloud {cloud.name}"
    if here is None or here.migration is None or there.migration is None \
            or here.migration.storage != there.migration.storage:
        return (f"hosts {g.me} and {there.name} share no storage for live migration in the "
                f"manifest of cloud {cloud.name}")
    if (cmd.target_uri, cmd.target_address) != (there.migration.uri, there.migration.address):
        return (f"host {there.name} takes migrations at {there.migration.uri} "
                f"({there.migration.address}) in the manifest of cloud {cloud.name}, not at "
                f"{cmd.target_uri} ({cmd.target_address})")
    if cmd.unsafe and not here.migration.unsafe:
        return (f"moves from {g.me} keep libvirt's shared-storage check in the manifest of "
                f"cloud {cloud.name}")
    if there.migration.tls and not cmd.tls:
        return (f"moves to {there.name} are encrypted (tls) in the manifest of cloud "
                f"{cloud.name}")
    return None


#: One check per op of `hostagent.MANIFEST_CHECKED` (the ops the leader stamps a generation on).
_CHECKS: dict[Op, Callable[[HostCommand, Grounds], str | None]] = {
    Op.DEFINE: _define, Op.OVERLAY: _overlay, Op.FETCH: _fetch,
    Op.REMOVE_IMAGE: _remove_image, Op.MIGRATE: _migrate}
