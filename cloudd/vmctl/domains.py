"""A node's libvirt domain, rendered from the cloud's template for a term: the same code for
the leader that sends a DEFINE and for the host that checks it.

Every domain cloudd defines carries the `<metadata>` naming its cloud, node, role and term,
and the node's identity (cloud, name, role, address, the pool's hosts to ask first, where its
certificate is) on its kernel command line. A host accepts a DEFINE only when it renders the
very same text itself from the manifest it has in force (`cloudd.daemon.host.admission`), so
the rendering must be deterministic and depend on nothing but the manifest, the node, the term
and two agent settings every member of a pool shares: the listen port and the PKI folder.

`generation(cloud)` fingerprints exactly the manifest facts that host commands are checked
against (the template's text, the pool, the nodes, the network, the template values): a host
whose fingerprint differs from the leader's has not taken the leader's generation yet, and
says so instead of calling the leader's XML forged. It is not `Cloud.digest`, which also
covers the manifest's wording and file paths and differs between members that hold the same
cloud in different files.

The template's text comes with the cloud: read by the manifest's loader from the operator's
file, or received inline from the pool host that sent the generation. Nothing here reads a path.
"""

from __future__ import annotations

import hashlib
import json

from cloudd.config.model import Cloud, Node
from cloudd.errors import PermanentError
from cloudd.vmctl.identity import NodeIdentity, cmdline_words
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, domain_name, render_domain

#: Where libvirt keeps its domains' logs on a host; a template asking for a serial console log
#: gets one file per domain there. The host accepts console logs in this folder only.
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


class DomainRenderer:
    """Renders the domains of one cloud: `render(cloud, node, term)`."""

    def __init__(self, *, port: int, pki_dir: str) -> None:
        self.port, self.pki_dir = port, pki_dir
        self._generation: tuple[Cloud, str, str] | None = None

    @staticmethod
    def _text(cloud: Cloud) -> str:
        if cloud.template_text is None:
            raise PermanentError(f"this agent holds no domain template for cloud {cloud.name}")
        return cloud.template_text

    def render(self, cloud: Cloud, node: str, term: int) -> str:
        """The domain XML of `node` in `term` (PermanentError: no such managed node)."""
        n = managed_node(cloud, node)
        ident = NodeIdentity(
            cloud=cloud.name, node=n.name, role=n.role,
            address=f"{n.address}/{cloud.prefix_length}", gateway=cloud.gateway or "",
            members=tuple(f"{h.name}@{h.address}:{self.port}" for h in cloud.pool),
            term=term, pki=self.pki_dir)
        domain = NodeDomain(
            meta=CloudMeta(cloud=cloud.name, node=n.name, role=n.role, term=term),
            memory_mib=n.memory_mib, vcpus=n.vcpus, image=n.image or "",
            cmdline=" ".join(cmdline_words(ident)), extra=template_extra(cloud, n.name))
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


def template_extra(cloud: Cloud, node: str) -> dict[str, str]:
    """The manifest's own template values, and a serial log path unless it gives one."""
    extra = dict(cloud.template_values)
    extra.setdefault("serial_log",
                     f"{SERIAL_LOG_DIR}/{domain_name(cloud.name, node)}.serial.log")
    return extra


def generation_of(cloud: Cloud, template: str) -> str:
    """sha256 over the manifest facts that rendering and the host's checks read."""
    facts = {
        "cloud": cloud.name,
        "template": template,
        "template_values": dict(sorted(cloud.template_values.items())),
        "network": [cloud.prefix_length, cloud.gateway],
        "pool": [[h.name, h.address] for h in cloud.pool],
        "nodes": [[n.name, n.role, n.address, n.image, n.base_image, n.memory_mib, n.vcpus,
                   n.managed, n.source_host] for n in cloud.nodes],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
