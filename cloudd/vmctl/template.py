"""Per-node libvirt domain XML from an operator's template with `${placeholder}` fields.

The operator writes the domain XML once per cloud (disk bus, network, console...) and leaves
`${...}` where per-node values go. Filling is strict: every placeholder in the template must
have a value (an unknown one is an error naming it and its line), and every value is XML-escaped,
except the `metadata` fragment which cloudd builds itself. libvirt validates the result again
(defineXMLFlags VALIDATE) before anything is defined.

Placeholders filled by `domain_values`:

| name | value |
|---|---|
| name | the domain name, `<cloud>-<node>` |
| uuid | a UUID derived from cloud and node (stable across respawns) |
| memory_kib | memory in KiB |
| vcpus | virtual CPUs |
| image | the node's disk (its copy-on-write overlay) |
| mac | a locally administered MAC `52:54:00:xx:xx:xx` derived from cloud and node |
| cmdline | kernel command line carrying the node's identity (direct kernel boot) |
| metadata | the `<metadata>` element (see cloudd.vmctl.metadata) |
| cloud, node, role, term | the same, for templates that want them elsewhere |

`extra` adds more (e.g. `kernel`, `initrd`, `seed` for a cloud-init ISO).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudd.errors import PermanentError
from cloudd.vmctl.metadata import NAMESPACE, CloudMeta, metadata_xml

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: What a value becomes in XML text or in an attribute of either quote: one pass, so that the
#: `&` of an entity written here is not escaped again (xml.sax.saxutils would do the same but
#: loads urllib.request, http.client and email with it: 1.3 MiB of a host agent).
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


class TemplateError(PermanentError):
    """A domain template cannot be filled: it names an unknown or malformed placeholder."""


@dataclass(frozen=True)
class RawXml:
    """An XML fragment cloudd built itself: inserted as is, not escaped."""

    xml: str


@dataclass(frozen=True)
class NodeDomain:
    """Everything about one node that its domain XML needs."""

    meta: CloudMeta
    memory_mib: int
    vcpus: int
    image: str
    cmdline: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return domain_name(self.meta.cloud, self.meta.node)


def domain_name(cloud: str, node: str) -> str:
    """The libvirt domain name of a node: `<cloud>-<node>`. Two clouds' names can collide
    (cloud `a-b` node `c`, cloud `a` node `b-c`): ownership goes by the metadata's cloud, so
    the second cloud is refused that name on a shared libvirtd, never handed the domain."""
    return f"{cloud}-{node}"


def node_mac(cloud: str, node: str) -> str:
    """A MAC address derived from cloud and node, in QEMU's locally administered 52:54:00 range.

    Deterministic so that a respawned node keeps its address (and its DHCP lease).
    """
    digest = hashlib.sha256(f"{cloud}\0{node}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def node_uuid(cloud: str, node: str) -> str:
    """A UUID derived from cloud and node (UUIDv5 under cloudd's metadata namespace)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}#{cloud}/{node}"))


def domain_values(spec: NodeDomain) -> dict[str, str | int | RawXml]:
    """The standard placeholder values for one node (see the module docstring)."""
    meta = spec.meta
    values: dict[str, str | int | RawXml] = {
        "name": spec.name,
        "uuid": node_uuid(meta.cloud, meta.node),
        "memory_kib": spec.memory_mib * 1024,
        "vcpus": spec.vcpus,
        "image": spec.image,
        "mac": node_mac(meta.cloud, meta.node),
        "cmdline": spec.cmdline,
        "metadata": RawXml(metadata_xml(meta)),
        "cloud": meta.cloud,
        "node": meta.node,
        "role": meta.role,
        "term": meta.term,
    }
    for key, value in spec.extra.items():
        if key in values:
            raise TemplateError(f"extra value {key!r} would replace a standard placeholder")
        values[key] = value
    return values


def placeholders(template: str) -> list[str]:
    """The placeholder names a template uses, in order of first appearance."""
    seen: dict[str, None] = {}
    for m in _PLACEHOLDER.finditer(template):
        seen.setdefault(m.group(1), None)
    return list(seen)


def render(template: str, values: Mapping[str, str | int | RawXml], *,
           source: str = "template") -> str:
    """Fill every `${name}` of `template` from `values`; XML-escape all but RawXml values.

    An unknown or malformed placeholder raises TemplateError naming it, `source` and its line.
    """
    for m in _PLACEHOLDER.finditer(template):
        name = m.group(1)
        line = template.count("\n", 0, m.start()) + 1
        if not _NAME.match(name):
            raise TemplateError(f"{source}:{line}: malformed placeholder ${{{name}}}")
        if name not in values:
            known = ", ".join(sorted(values))
            raise TemplateError(
                f"{source}:{line}: unknown placeholder ${{{name}}} (known: {known})")

    def fill(m: re.Match[str]) -> str:
        value = values[m.group(1)]
        if isinstance(value, RawXml):
            return value.xml
        return str(value).translate(_ESCAPES)

    return _PLACEHOLDER.sub(fill, template)


def render_domain(template: str, spec: NodeDomain, *, source: str = "template") -> str:
    """The domain XML for one node."""
    return render(template, domain_values(spec), source=source)
