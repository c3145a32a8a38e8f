"""A manifest made portable: the same cloud, loadable on a machine that lacks its side files.

A manifest names files relative to itself: its domain template, its secrets, and the two
list files (addresses and images) a role may be written as. An agent that hands the manifest
to another member (the CLI sending `apply` to its agent, a member seeding a node, a leader
offering the manifest) sends `portable_text`: every file it names made absolute, and every
role written as list files inlined as the nodes they declare, so the receiver loads exactly
the cloud the sender validated, wherever it writes the text.
"""

from __future__ import annotations

import yaml

from cloudd.config.model import Cloud
from cloudd.errors import PermanentError


def portable_text(cloud: Cloud, text: str) -> str:
    """The manifest as another machine can load it: every file it names made absolute."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PermanentError(f"manifest of {cloud.name} is not a mapping")
    data["domain_template"] = str(cloud.domain_template)
    base = cloud.source.parent
    roles = data.get("roles") or {}
    for role, value in list(roles.items()):
        if isinstance(value, dict):
            # a role written as two list files travels as the nodes they declare
            roles[role] = [{"name": n.name, "address": n.address, "image": n.image}
                           for n in cloud.nodes_of(role)]
    for ref in (data.get("secrets") or {}).values():
        if isinstance(ref, dict) and isinstance(ref.get("file"), str):
            ref["file"] = str((base / ref["file"]).resolve())
    return yaml.safe_dump(data, sort_keys=False)


def node_view(text: str) -> str:
    """The manifest as a node may see it: the portable text without the pool hosts' fence
    commands (operator input that runs as root on a host, none of a tenant's business) and
    without their libvirt connection URIs."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PermanentError("a manifest must be a mapping")
    for host in data.get("pool") or ():
        if isinstance(host, dict):
            host.pop("fence", None)
            host.pop("libvirt_uri", None)
    return yaml.safe_dump(data, sort_keys=False)
