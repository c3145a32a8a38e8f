"""AppScale's layout rules, as appscale-tools 3.8.1 applies them, without its code.

An AppScale deployment is described by its `ips_layout`: a list of node sets, each naming
roles and the addresses that hold all of them (an address may appear in several sets and
then holds the roles of each). `appscale up` reads it with the tools' `NodeLayout` and
refuses a layout with one sentence. cloudd cannot run the tools' Python 2 code, so this
module states the same rules itself, in the order the tools check them, and returns the
tools' own sentence; tests/providers/appscale checks it against the tools' parser loaded
from their source distribution.

`ips_layout(nodes)` is the layout cloudd writes for a cloud (one set per distinct role set);
`check(sets, replication=...)` applies the rules to any list form; `layout_check` is the
type's hook for the manifest loader.

One thing the tools allow is refused here on purpose, because no manifest can write it and
the tools' handling of it is broken: the roles the AppController assigns itself (`shadow`,
`db_master`, `db_slave`, `taskqueue_master`, `taskqueue_slave`; `shadow` without a `master`
makes the tools fail with an AttributeError) are not roles here, and are refused as AppScale
refuses any unknown role.

Where the tools' order of checks depends on Python's dict order (a layout with neither a
compute node nor a master), this follows the tools' source order, as Python 3 runs it; a
manifest never reaches that case, since cloudd itself requires one master.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudd.config.catalog import LayoutNode, Settings

#: The roles an `ips_layout` may name (the tools' advanced format keys).
ROLES = ("master", "database", "appengine", "compute", "open", "zookeeper", "memcache",
         "taskqueue", "search", "search2", "load_balancer")
#: Old names the tools still accept, and what they stand for.
DEPRECATED = {"appengine": "compute"}
#: What `master` stands for on a node: the head (`shadow`) and its load balancer.
_MASTER_EXPANDS = ("shadow", "load_balancer")

# The tools' address forms: `node-N` for a machine they start in a cloud, else an IPv4
# address (matched at the start only, as the tools do).
_NODE_ID = re.compile(r"(node)-(\d+)")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

#: Said before each of AppScale's sentences, so that the operator knows whose rule it is.
PREFIX = "AppScale (appscale-tools 3.8.1) refuses this layout: "


@dataclass(frozen=True)
class NodeSet:
    """One entry of an `ips_layout`: these roles on each of these addresses."""

    roles: tuple[str, ...]
    nodes: tuple[str, ...]

    def as_yaml(self) -> dict[str, list[str]]:
        """The entry as the AppScalefile writes it."""
        return {"roles": list(self.roles), "nodes": list(self.nodes)}


def canonical_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The roles as cloudd writes them: deprecated names replaced, each role once, in the
    order given."""
    return tuple(dict.fromkeys(DEPRECATED.get(r, r) for r in roles))


def ips_layout(nodes: Iterable[LayoutNode]) -> tuple[NodeSet, ...]:
    """The advanced list form of these nodes: one set per distinct role set, in the order
    each first appears, each set's addresses in the nodes' order."""
    sets: dict[tuple[str, ...], list[str]] = {}
    for node in nodes:
        sets.setdefault(canonical_roles(node.roles), []).append(node.address)
    return tuple(NodeSet(roles, tuple(addresses)) for roles, addresses in sets.items())


def _listed(roles: Sequence[str]) -> str:
    # the tools format the set's roles as a Python list would print
    return str(list(roles))


def _expand(roles: Iterable[str]) -> set[str]:
    """What a node holding these roles holds, as the tools count it."""
    out: set[str] = set()
    for role in roles:
        role = DEPRECATED.get(role, role)
        out.update(_MASTER_EXPANDS if role == "master" else (role,))
    return out


def _check_set(entry: NodeSet, *, has_master: bool) -> str | None:
    """The tools' checks of one set alone, in their order."""
    for address in entry.nodes:
        if not _NODE_ID.match(address) and not _IPV4.match(address):
            return f"IP: {address} does not match ip or node-id formats."
    if any(_NODE_ID.match(a) for a in entry.nodes):
        return (f"Role(s) {_listed(entry.roles)}: using node-id format is not supported with "
                "the ips_layout format being used. Please specify an integer or an ip "
                "address.")
    if len(set(entry.nodes)) != len(entry.nodes):
        return "Cannot specify the same IP address more than once."
    if not entry.nodes:
        return f"Node amount cannot be zero for role(s) {_listed(entry.roles)}."
    if "master" in entry.roles and (has_master or len(entry.nodes) > 1):
        return "Only one master is allowed."
    return None


def check(sets: Sequence[NodeSet], *, replication: int | None) -> str | None:
    """AppScale's reason for refusing this `ips_layout` (with `replication` copies of each
    datastore row; None or 0: the tools' default), or None when the tools accept it."""
    if not sets:
        return "Node layout format was not recognized."
    held: dict[str, set[str]] = {}
    has_master = False
    for entry in sets:
        problem = _check_set(entry, has_master=has_master)
        if problem is not None:
            return problem
        has_master = has_master or "master" in entry.roles
        for address in entry.nodes:
            roles = held.setdefault(address, set())
            roles.update(_expand(entry.roles))
            # the tools list every unknown role the node holds, joined without spaces
            unknown = [r for r in dict.fromkeys(entry.roles) if r not in ROLES]
            if unknown:
                return ",".join(f"Invalid role: {r}" for r in unknown)
    databases = sum("database" in roles for roles in held.values())
    if not databases:
        return "At least one database node must be provided."
    # the tools' default: a copy on every database node, at most 3
    copies = replication or min(databases, 3)
    if copies > databases:
        return "Replication factor cannot exceed # of databases."
    present = set().union(*held.values())
    if "compute" not in present:
        return "Need to specify at least one compute node."
    if "shadow" not in present:
        return "Need to specify one master node."
    return None


def layout_check(settings: Settings, nodes: tuple[LayoutNode, ...]) -> str | None:
    """The type's layout hook: AppScale's refusal of the layout cloudd would write for these
    nodes, prefixed with whose rule it is, or None."""
    # The appscale settings (spec.py, which imports this module): only their replication.
    replication = getattr(settings, "replication", None)
    problem = check(ips_layout(nodes), replication=replication)
    return None if problem is None else PREFIX + problem
