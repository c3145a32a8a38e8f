"""Metadata element and domain template filling (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudd.vmctl.metadata import (
    NAMESPACE,
    CloudMeta,
    MetadataError,
    from_domain_xml,
    metadata_xml,
    parse_element,
    stamp_host,
)
from cloudd.vmctl.template import (
    NodeDomain,
    TemplateError,
    node_mac,
    node_uuid,
    placeholders,
    render,
    render_domain,
)

META = CloudMeta(cloud="web1", node="balancer-0", role="balancer", term=7)
TEMPLATE = """<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory>
  <vcpu>${vcpus}</vcpu>
  ${metadata}
  <os><cmdline>${cmdline}</cmdline></os>
  <devices>
    <disk type='file'><source file='${image}'/></disk>
    <interface type='network'><mac address='${mac}'/></interface>
  </devices>
</domain>
"""


def test_metadata_round_trip_through_domain_xml() -> None:
    xml = f"<domain><name>x</name>{metadata_xml(META)}</domain>"
    assert from_domain_xml(xml) == META


def test_domain_without_metadata_is_not_ours() -> None:
    assert from_domain_xml("<domain><name>x</name></domain>") is None
    other = "<domain><metadata><a:x xmlns:a='urn:other'/></metadata></domain>"
    assert from_domain_xml(other) is None


def test_bare_element_as_libvirt_returns_it() -> None:
    assert parse_element('<domain cloud="web1" node="balancer-0" role="balancer" term="7"/>') \
        == META


@pytest.mark.parametrize(("xml", "message"), [
    ('<domain cloud="c" node="n" role="r"/>', r"lacks attribute\(s\): term"),
    ('<domain cloud="c" node="n" role="r" term="x"/>', "term is not an integer"),
    ('<domain cloud="" node="n" role="r" term="1"/>', "cloud must not be empty"),
    ("<other/>", "not a cloudd metadata element"),
    ("<domain", "not XML"),
])
def test_bad_metadata_is_refused_precisely(xml: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_element(xml)


def test_render_fills_every_field_and_escapes() -> None:
    spec = NodeDomain(meta=META, memory_mib=256, vcpus=2, image="/img/a&b.qcow2",
                      cmdline="console=ttyS0 cloudd.role=<balancer>")
    out = render_domain(TEMPLATE, spec)
    root = ET.fromstring(out)
    assert root.findtext("name") == "web1-balancer-0"
    assert root.findtext("memory") == str(256 * 1024)
    assert root.findtext("vcpu") == "2"
    assert root.find("devices/disk/source").get("file") == "/img/a&b.qcow2"
    assert root.findtext("os/cmdline") == "console=ttyS0 cloudd.role=<balancer>"
    assert root.find("devices/interface/mac").get("address") == node_mac("web1", "balancer-0")
    assert root.find(f"metadata/{{{NAMESPACE}}}domain") is not None
    assert from_domain_xml(out) == META


def test_unknown_placeholder_is_named_with_its_line() -> None:
    with pytest.raises(TemplateError, match=r"web.xml:2: unknown placeholder \$\{disk\}"):
        render("<domain>\n<x>${disk}</x></domain>", {"name": "a"}, source="web.xml")


def test_malformed_placeholder_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"malformed placeholder \$\{9x\}"):
        render("<d>${9x}</d>", {})


def test_extra_may_not_replace_standard_values() -> None:
    spec = NodeDomain(meta=META, memory_mib=1, vcpus=1, image="i", extra={"name": "evil"})
    with pytest.raises(TemplateError, match="'name'"):
        render_domain(TEMPLATE, spec)


def test_mac_and_uuid_are_deterministic_and_distinct() -> None:
    mac = node_mac("web1", "server-0")
    assert mac == node_mac("web1", "server-0")
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert mac != node_mac("web1", "server-1")
    assert node_mac("a", "bc") != node_mac("ab", "c")
    assert node_uuid("web1", "server-0") == node_uuid("web1", "server-0")
    assert node_uuid("web1", "server-0") != node_uuid("web2", "server-0")


def test_placeholders_lists_names_in_order() -> None:
    assert placeholders("${b}${a}${b}") == ["b", "a"]


def test_host_round_trips_and_is_optional() -> None:
    meta = CloudMeta(cloud="web1", node="db-0", role="database", term=3, host="pm2")
    assert 'host="pm2"' in metadata_xml(meta)
    assert from_domain_xml(f"<domain>{metadata_xml(meta)}</domain>") == meta
    assert "host=" not in metadata_xml(META)
    assert parse_element('<domain cloud="c" node="n" role="r" term="1" host="pm1"/>').host \
        == "pm1"


def test_stamp_host_changes_only_the_host() -> None:
    xml = (f"<domain type='qemu'><name>web1-balancer-0</name>{metadata_xml(META)}"
           "<devices><disk type='file'/></devices></domain>")
    stamped = stamp_host(xml, "pm3")
    assert from_domain_xml(stamped) == CloudMeta(cloud="web1", node="balancer-0",
                                                 role="balancer", term=7, host="pm3")
    assert "cloudd:domain" in stamped and "ns0" not in stamped
    root = ET.fromstring(stamped)
    assert root.get("type") == "qemu" and root.find("devices/disk") is not None
    assert from_domain_xml(stamp_host(stamped, "pm1")).host == "pm1"  # type: ignore[union-attr]
    with pytest.raises(MetadataError, match="no cloudd metadata to stamp"):
        stamp_host("<domain><name>x</name></domain>", "pm1")



@given(st.text())
def test_a_value_is_escaped_as_the_standard_library_s_xml_escape_would(value: str) -> None:
    """The templates' own escape writes what xml.sax.saxutils.escape writes with both quotes
    as entities (the host no longer loads it: tests/daemon/test_footprint.py)."""
    from xml.sax.saxutils import escape

    want = escape(value, {'"': "&quot;", "'": "&apos;"})
    assert render("<a b='${v}'>${v}</a>", {"v": value}) == f"<a b='{want}'>{want}</a>"
