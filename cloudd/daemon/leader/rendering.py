"""A node's libvirt domain, rendered from the cloud's template for the leader's term.

Every domain cloudd defines carries the `<metadata>` naming its cloud, node, role and term,
and the node's identity (cloud, name, role, address, the pool's hosts to ask first, where its
certificate is) on its kernel command line. The template's text comes with the cloud (read by
the manifest's loader, or received inline from the pool host that sent the generation).
"""

from __future__ import annotations

from cloudd.config.model import Cloud
from cloudd.errors import PermanentError
from cloudd.vmctl.identity import NodeIdentity, cmdline_words
from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.plan import NodeSpec
from cloudd.vmctl.template import NodeDomain, domain_name, render_domain

#: Where libvirt keeps its domains' logs on a host; a template asking for a serial console log
#: gets one file per domain there.
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


class DomainRenderer:
    """Renders the domains of one cloud (`render(cloud, spec, term)` for the controller)."""

    def __init__(self, *, port: int, pki_dir: str) -> None:
        self.port, self.pki_dir = port, pki_dir

    def render(self, cloud: Cloud, spec: NodeSpec, term: int) -> str:
        node = cloud.node(spec.name)
        ident = NodeIdentity(
            cloud=cloud.name, node=node.name, role=node.role,
            address=f"{node.address}/{cloud.prefix_length}", gateway=cloud.gateway or "",
            members=tuple(f"{h.name}@{h.address}:{self.port}" for h in cloud.pool),
            term=term, pki=self.pki_dir)
        domain = NodeDomain(
            meta=CloudMeta(cloud=cloud.name, node=node.name, role=node.role, term=term),
            memory_mib=spec.memory_mib, vcpus=spec.vcpus, image=spec.image,
            cmdline=" ".join(cmdline_words(ident)), extra=template_extra(cloud, node.name))
        if cloud.template_text is None:
            raise PermanentError(f"this agent holds no domain template for cloud {cloud.name}")
        source = str(cloud.domain_template or f"the domain template of {cloud.name}")
        return render_domain(cloud.template_text, domain, source=source)


def template_extra(cloud: Cloud, node: str) -> dict[str, str]:
    """The manifest's own template values, and a serial log path unless it gives one."""
    extra = dict(cloud.template_values)
    extra.setdefault("serial_log",
                     f"{SERIAL_LOG_DIR}/{domain_name(cloud.name, node)}.serial.log")
    return extra
