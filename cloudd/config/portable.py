"""A manifest made self-contained: the same cloud, as another member may load and must see it.

A manifest read from disk names files relative to itself: its domain template, its secrets,
and the two list files (addresses and images) a role may be written as. A manifest received
over the network names none (`cloudd.config.sources`), so whoever hands a cloud to another
member sends `text_for(cloud, recipient)`, cut for that recipient:

- a pool host (`Recipient.HOST`) may lead next, and then needs everything without reading a
  path that another machine wrote: the template's text (`domain_template_text`), every
  secret's contents (`secrets: {NAME: {value_b64: ...}}`), the fence commands, every role
  written as list files inlined as the nodes they declare. Such a text holds secrets: the
  receiver keeps it private (0600), and only pool hosts get it;
- a node (`Recipient.NODE`) gets its cloud's view: the same roles, nodes and settings, the
  names of the secrets but none of their contents (the leader sends a node the secrets its
  role needs in its assignment), no template, no template values, no `node_access` (the
  operator's keys go into the seeds the hosts build), no `timing` (the leader's own bounds:
  a node never leads, and a node image older than the field still takes the text), no
  `two_host` (a pool host's business), and neither the hosts' fence commands nor their
  libvirt URIs.

Both texts say `self_contained: true`. `portable_text` is the pool hosts' text (what
`cloudd-cli apply` sends, and what an agent hands over to the leader).
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Any

import yaml

from cloudd.config.model import Cloud
from cloudd.errors import PermanentError

#: Fields of a pool host's text that a node's view leaves out (host-side only).
_HOST_ONLY = ("domain_template", "domain_template_text", "template_values", "node_access",
              "timing", "two_host")


class Recipient(StrEnum):
    """Who a manifest's text is cut for."""

    HOST = "host"
    """A pool host: everything, secrets' contents and template included."""
    NODE = "node"
    """A node: its cloud's view, without secrets' contents, template, fence commands or the
    hosts' libvirt and migration settings."""


def recipient_of(cloud: Cloud, member: str) -> Recipient:
    """A pool host of `cloud` is a HOST; anyone else gets no more than a node's view."""
    return Recipient.HOST if any(h.name == member for h in cloud.pool) else Recipient.NODE


def text_for(cloud: Cloud, recipient: Recipient, text: str | None = None) -> str:
    """The manifest of `cloud` (its `text`, or the text given) as `recipient` may have it."""
    data = _self_contained(cloud, cloud.text if text is None else text)
    if recipient is Recipient.NODE:
        for key in _HOST_ONLY:
            data.pop(key, None)
        if cloud.secrets:
            data["secrets"] = {name: {} for name in cloud.secrets}
        for host in data.get("pool") or ():
            if isinstance(host, dict):
                host.pop("fence", None)
                host.pop("libvirt_uri", None)
                host.pop("migration", None)
    return yaml.safe_dump(data, sort_keys=False)


def portable_text(cloud: Cloud, text: str) -> str:
    """The manifest as a pool host receives it: self-contained, secrets and template inlined."""
    return text_for(cloud, Recipient.HOST, text)


def _self_contained(cloud: Cloud, text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PermanentError(f"manifest of {cloud.name} is not a mapping")
    data.pop("domain_template", None)
    if cloud.template_text is not None:
        data["domain_template_text"] = cloud.template_text
    roles = data.get("roles") or {}
    for role, value in list(roles.items()):
        if isinstance(value, dict) and "elastic" not in value:
            # a role written as two list files travels as the nodes they declare (an
            # elastic role's addresses and template name no file: it travels as written)
            roles[role] = [{"name": n.name, "address": n.address, "image": n.image}
                           if n.role == role else {"address": n.address}
                           for n in cloud.nodes_of(role)]
    # What this agent does not hold (a node's view) it cannot pass on: sent as withheld.
    data["secrets"] = {name: ({"value_b64": base64.b64encode(s.value).decode("ascii")}
                              if s.value is not None else {})
                       for name, s in cloud.secrets.items()}
    if not data["secrets"]:
        del data["secrets"]
    data["self_contained"] = True
    return data
