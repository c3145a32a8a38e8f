"""A node's libvirt domain, rendered from the cloud's template for a term: the same code for
the leader that sends a DEFINE and for the host that checks it.

Every domain cloudd defines carries the `<metadata>` naming its cloud, node, role and term,
and the node's identity (cloud, name, role, address, the pool's hosts to ask first, where its
certificate is) on its kernel command line. A host accepts a DEFINE only when it renders the
very same text itself from the manifest it has in force (`cloudd.daemon.host.admission`), so
the rendering must be deterministic and depend on nothing but the manifest, the node, the term
and three agent settings every member of a pool shares: the listen port, the PKI folder and
the first image folder (where a host keeps its nodes' seed ISOs).

A template that says `${seed}` gets the path of the node's NoCloud seed ISO on its host,
`<first image folder>/<domain>.seed.iso` (`seed_path`): the host builds that seed itself when
it defines the domain (`cloudd.vmctl.nodeseed`), and removes it when it undefines it. The
path is cloudd's own: a manifest's template value named `seed` is refused.

`generation(cloud)` fingerprints exactly the manifest facts that host commands are checked
against (the template's text, the pool, the nodes, the network, the template values, whether
the cloud is to run, root's SSH keys that the seeds carry): a host whose fingerprint differs
from the leader's has not taken the leader's generation yet, and says so instead of calling
the leader's XML forged; it defines no seeded domain until it has. It is not `Cloud.digest`,
which also covers the manifest's wording and file paths and differs between members that hold
the same cloud in different files.

The template's text comes with the cloud: read by the manifest's loader from the operator's
file, or received inline from the pool host that sent the generation. Nothing here reads a path.
"""

from __future__ import annotations

import hashlib
import json

from cloudd.config.model import Cloud, Node
from cloudd.errors import PermanentError
from cloudd.vmctl.hostagent import DEFAULT_IMAGE_DIRS
from cloudd.vmctl.identity import NodeIdentity, cmdline_words
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, domain_name, placeholders, render_domain

#: Where libvirt keeps its domains' logs on a host; a template asking for a serial console log
#: gets one file per domain there. The host accepts console logs in this folder only.
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
#: The placeholder of a node's seed ISO, and the end of the seed's file name.
SEED = "seed"
SEED_SUFFIX = ".seed.iso"


class DomainRenderer:
    """Renders the domains of one cloud: `render(cloud, node, term)`."""

    def __init__(self, *, port: int, pki_dir: str,
                 seed_dir: str = str(DEFAULT_IMAGE_DIRS[0])) -> None:
        self.port, self.pki_dir, self.seed_dir = port, pki_dir, seed_dir
        self._generation: tuple[Cloud, str, str] | None = None

    @staticmethod
    def _text(cloud: Cloud) -> str:
        if cloud.template_text is None:
            raise PermanentError(f"this agent holds no domain template for cloud {cloud.name}")
        return cloud.template_text

    def render(self, cloud: Cloud, node: str, term: int) -> str:
        """The domain XML of `node` in `term` (PermanentError: no such managed node)."""
        n = managed_node(cloud, node)
        ident = node_identity(cloud, n, term=term, port=self.port, pki_dir=self.pki_dir)
        domain = NodeDomain(
            meta=CloudMeta(cloud=cloud.name, node=n.name, role=n.role, term=term),
            memory_mib=n.memory_mib, vcpus=n.vcpus, image=n.image or "",
            cmdline=" ".join(cmdline_words(ident)),
            extra=template_extra(cloud, n.name, seed_dir=self.seed_dir))
        source = str(cloud.domain_template or f"the domain template of {cloud.name}")
        return render_domain(self._text(cloud), domain, source=source)

    def generation(self, cloud: Cloud) -> str:
        """The fingerprint of what host commands of `cloud` are checked against ("" when the
        agent holds no template: no host can check anything against it either)."""
        if cloud.template_text is None:
            return ""
        template = cloud.template_text
        kept = self._generation
        if kept is None or kept[0] is not cloud or kept[1] is not template:
            kept = self._generation = (cloud, template, generation_of(cloud, template))
        return kept[2]


def managed_node(cloud: Cloud, name: str) -> Node:
    """The node `name` of `cloud`, if cloudd defines its domain."""
    for n in cloud.nodes:
        if n.name == name:
            if not n.managed:
                raise PermanentError(f"node {name} of cloud {cloud.name} is not managed: "
                                     "cloudd defines no domain for it")
            return n
    raise PermanentError(f"node {name} is not in the manifest of cloud {cloud.name}")


def node_of_domain(cloud: Cloud, domain: str) -> Node | None:
    """The node of `cloud` whose domain is named `domain`, if any."""
    return next((n for n in cloud.nodes if domain_name(cloud.name, n.name) == domain), None)


def node_identity(cloud: Cloud, node: Node, *, term: int, port: int,
                  pki_dir: str = "") -> NodeIdentity:
    """What `node` learns of itself when it boots: cloud, name, role, address with the
    network's prefix, gateway, the pool hosts to ask first (`name@address:port`), the term."""
    return NodeIdentity(
        cloud=cloud.name, node=node.name, role=node.role,
        address=f"{node.address}/{cloud.prefix_length}", gateway=cloud.gateway or "",
        members=tuple(f"{h.name}@{h.address}:{port}" for h in cloud.pool),
        term=term, pki=pki_dir)


def seed_path(seed_dir: str, cloud: str, node: str) -> str:
    """Where a host keeps the seed ISO of `node` (the `${seed}` of its domain)."""
    return f"{seed_dir.rstrip('/')}/{domain_name(cloud, node)}{SEED_SUFFIX}"


def template_extra(cloud: Cloud, node: str, *, seed_dir: str) -> dict[str, str]:
    """The manifest's own template values, a serial log path unless it gives one, and the
    node's seed path (`seed_dir` is the first image folder of the hosts)."""
    extra = dict(cloud.template_values)
    if SEED in extra:
        raise PermanentError(f"template value {SEED!r} of cloud {cloud.name} is cloudd's own "
                             "(the node's seed ISO on its host): remove it from template_values")
    extra.setdefault("serial_log",
                     f"{SERIAL_LOG_DIR}/{domain_name(cloud.name, node)}.serial.log")
    extra[SEED] = seed_path(seed_dir, cloud.name, node)
    return extra


def uses_seed(template: str) -> bool:
    """Whether a domain template attaches a seed ISO (says `${seed}`)."""
    return SEED in placeholders(template)


def generation_of(cloud: Cloud, template: str) -> str:
    """sha256 over the manifest facts that rendering and the host's checks read."""
    facts = {
        "cloud": cloud.name,
        "ensure": cloud.ensure.value,  # whether a node's disk may be removed (REMOVE_IMAGE)
        "template": template,
        "template_values": dict(sorted(cloud.template_values.items())),
        "network": [cloud.prefix_length, cloud.gateway],
        "pool": [[h.name, h.address] for h in cloud.pool],
        # the seed a host builds gives root these keys: leader and host must agree on them
        "node_access": list(cloud.node_access.ssh_authorized_keys),
        "nodes": [[n.name, n.role, n.address, n.image, n.base_image, n.memory_mib, n.vcpus,
                   n.managed, n.source_host] for n in cloud.nodes],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
