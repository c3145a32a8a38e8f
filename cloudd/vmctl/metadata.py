"""The `<metadata>` element that marks a libvirt domain as cloudd's.

cloudd never modifies or removes a domain that does not carry this element: it is how a host
tells the domains cloudd created (and for which cloud, node, role and term) from the ones an
operator defined by hand on the same libvirtd. Nor does a host agent touch a domain whose
element names another cloud than the one it serves (`HostAgent.mine`): the `cloud` attribute,
not the domain's name, says whose a domain is.

The element lives in its own XML namespace, NAMESPACE, under the prefix `cloudd`:

    <metadata>
      <cloudd:domain xmlns:cloudd="https://cloudd.example/xmlns/domain/1"
                     cloud="web1" node="balancer-0" role="balancer" term="7" host="pm1"/>
    </metadata>

`host` names the pool host whose agent defined the domain. On a real pool every host has its
own libvirtd and the attribute only documents where the domain was made; when several host
agents share one libvirtd (the test lab), it is how each of them tells its own domains from
the others'. It is optional: domains defined before it existed read as host "" (anyone's).

The `/1` in the URI is the format's version: a change that older agents could misread gets a
new URI, so an old agent sees "no cloudd metadata" and keeps its hands off.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from cloudd.errors import PermanentError

#: The namespace URI of cloudd's domain metadata (version 1 of the format).
NAMESPACE = "https://cloudd.example/xmlns/domain/1"
#: The prefix libvirt stores the element under (virDomainSetMetadata's `key`).
PREFIX = "cloudd"
_TAG = f"{{{NAMESPACE}}}domain"
# So that a re-serialized domain XML (stamp_host) keeps the `cloudd:` prefix, not `ns0:`.
ET.register_namespace(PREFIX, NAMESPACE)


class MetadataError(PermanentError):
    """A cloudd metadata element exists but cannot be read (a wrong or damaged element)."""


@dataclass(frozen=True)
class CloudMeta:
    """What cloudd records on each domain it defines."""

    cloud: str
    node: str
    role: str
    term: int
    #: the pool host whose agent defined the domain; "" when unknown (older domains)
    host: str = ""

    def __post_init__(self) -> None:
        for field in ("cloud", "node", "role"):
            if not getattr(self, field):
                raise MetadataError(f"cloudd metadata: {field} must not be empty")
        if self.term < 0:
            raise MetadataError(f"cloudd metadata: term must be >= 0, got {self.term}")


def element_xml(meta: CloudMeta) -> str:
    """The `<cloudd:domain .../>` element alone (what goes inside `<metadata>`)."""
    attrs = {
        f"xmlns:{PREFIX}": NAMESPACE,
        "cloud": meta.cloud,
        "node": meta.node,
        "role": meta.role,
        "term": str(meta.term),
    }
    if meta.host:
        attrs["host"] = meta.host
    elem = ET.Element(f"{PREFIX}:domain", attrs)
    return ET.tostring(elem, encoding="unicode")


def metadata_xml(meta: CloudMeta) -> str:
    """A whole `<metadata>` element carrying `meta`, for a domain XML template."""
    return f"<metadata>{element_xml(meta)}</metadata>"


def _from_element(elem: ET.Element) -> CloudMeta:
    missing = [a for a in ("cloud", "node", "role", "term") if a not in elem.attrib]
    if missing:
        raise MetadataError(f"cloudd metadata lacks attribute(s): {', '.join(missing)}")
    try:
        term = int(elem.attrib["term"])
    except ValueError:
        raise MetadataError(
            f"cloudd metadata: term is not an integer: {elem.attrib['term']!r}") from None
    return CloudMeta(cloud=elem.attrib["cloud"], node=elem.attrib["node"],
                     role=elem.attrib["role"], term=term, host=elem.attrib.get("host", ""))


def parse_element(xml: str) -> CloudMeta:
    """Read the element as virDomainGetMetadata returns it (libvirt drops the namespace, having
    already selected the element by it, so a bare `<domain .../>` is accepted too)."""
    try:
        elem = ET.fromstring(xml)
    except ET.ParseError as e:
        raise MetadataError(f"cloudd metadata is not XML: {e}") from None
    if elem.tag not in (_TAG, "domain"):
        raise MetadataError(f"not a cloudd metadata element: {elem.tag}")
    return _from_element(elem)


def from_domain_xml(xml: str) -> CloudMeta | None:
    """cloudd's metadata in a whole domain XML, or None when the domain is not cloudd's."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise MetadataError(f"domain XML does not parse: {e}") from None
    md = root.find("metadata")
    if md is None:
        return None
    elem = md.find(_TAG)
    return None if elem is None else _from_element(elem)


def stamp_host(xml: str, host: str) -> str:
    """`xml` (a whole domain XML carrying cloudd metadata) with `host` recorded in it.

    Only the `host` attribute of cloudd's element changes; the rest of the document is
    re-serialized as parsed (comments dropped, which libvirt discards anyway).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise MetadataError(f"domain XML does not parse: {e}") from None
    md = root.find("metadata")
    elem = None if md is None else md.find(_TAG)
    if elem is None:
        raise MetadataError("domain XML carries no cloudd metadata to stamp a host into")
    _from_element(elem)  # refuse a damaged element before writing into it
    elem.set("host", host)
    return ET.tostring(root, encoding="unicode")
