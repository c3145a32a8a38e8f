"""The template whose guests run the agent, rendered as the leader renders it: the kernel
command line carries the identity, the network words /init reads and the agent command."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest
from cloudd_lab.vmlab import AGENT_TEMPLATE, agent_command

from cloudd.vmctl.identity import NodeIdentity, cmdline_words, from_cmdline
from cloudd.vmctl.metadata import CloudMeta, from_domain_xml
from cloudd.vmctl.template import NodeDomain, TemplateError, render_domain

pytestmark = [pytest.mark.e2e]

IDENT = NodeIdentity(cloud="lab", node="lab-server-1", role="server", address="10.9.0.6/24",
                     members=("pm1@10.9.0.2:7760", "pm2@10.9.0.3:7760"), term=4,
                     pki="/var/tmp/cloudd-lab-x/pki")
EXTRA = {"kernel": "/var/tmp/g/vmlinuz", "initrd": "/var/tmp/g/initrd.cpio.gz",
         "bridge": "labbr", "serial_log": "/var/log/libvirt/qemu/lab-lab-server-1.serial.log",
         "agent_cmd64": base64.b64encode(agent_command().encode()).decode()}


def render(extra: dict[str, str]) -> str:
    return render_domain(AGENT_TEMPLATE.read_text(), NodeDomain(
        meta=CloudMeta(cloud="lab", node="lab-server-1", role="server", term=4),
        memory_mib=256, vcpus=1, image="/var/lib/cloudd/images/lab-node.img",
        cmdline=" ".join(cmdline_words(IDENT)), extra=extra), source=str(AGENT_TEMPLATE))


def test_the_guest_gets_its_identity_and_the_agent_command() -> None:
    xml = render(EXTRA)
    root = ET.fromstring(xml)
    cmdline = root.findtext("os/cmdline") or ""
    assert from_cmdline(cmdline) == IDENT
    words = dict(w.split("=", 1) for w in cmdline.split() if "=" in w)
    assert words["cloudd.ip"] == "10.9.0.6/24"  # the guest's /init configures eth0 from it
    assert words["cloudd.hostname"] == "lab-server-1"
    assert base64.b64decode(words["cloudd.cmd64"]).decode() == (
        f"exec {agent_command().split()[1]} --from-cmdline /proc/cmdline")
    assert root.get("type") == "qemu"
    assert root.find("devices/interface/source").get("bridge") == "labbr"  # type: ignore[union-attr]
    meta = from_domain_xml(xml)
    assert meta is not None and (meta.cloud, meta.node) == ("lab", "lab-server-1")


def test_a_missing_agent_command_is_named() -> None:
    extra = {k: v for k, v in EXTRA.items() if k != "agent_cmd64"}
    with pytest.raises(TemplateError, match=r"unknown placeholder \$\{agent_cmd64\}"):
        render(extra)
