"""Loading a cloud manifest (`kind: Cloud`) into a normalized `Cloud`, or refusing it.

Two entry points, by where the text comes from (`cloudd.config.sources`): `load_cloud` for a
file of this machine, which may name this machine's files; `load_cloud_text` for a text
received over the network, which must be self-contained and makes this agent read nothing.

Checks run in stages and stop after the first stage that finds anything, so that one mistake
gives one message rather than a cascade (an unknown type does not also report every role as
unknown): the file itself, what its origin allows, inline secrets, the top-level shape, the
type and its settings, the template and the secrets, the roles and their nodes, then the
rules that span the whole cloud.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cloudd.config import sources, yamlsrc
from cloudd.config.catalog import Catalog, GeneratedSecret, LayoutNode, RoleSpec, TypeSpec
from cloudd.config.model import (
    MAX_ELASTIC,
    Cloud,
    CloudIn,
    ElasticRoleIn,
    ElasticSpec,
    Ensure,
    Migration,
    Node,
    NodeAccess,
    NodeIn,
    PoolHost,
    RoleFilesIn,
    RunStrategy,
)
from cloudd.config.plain import given
from cloudd.config.problems import inline_secrets, read_as, read_typed
from cloudd.config.sources import Origin, Reads
from cloudd.config.users import check_users, user_of
from cloudd.config.yamlsrc import Document
from cloudd.election.config import TwoHost
from cloudd.errors import ConfigError, Problem

T = TypeVar("T")
#: What names a text received over the network in problems (it has no file).
RECEIVED = Path("<received manifest>")


def load_cloud(path: str | os.PathLike[str], catalog: Catalog, *,
               with_template: bool = True, with_secrets: bool | None = None) -> Cloud:
    """The Cloud declared by the manifest file at `path`; ConfigError listing placed problems.

    The file may name files of this machine (it is the operator's own), unless it says it
    is self-contained (a generation cloudd installed from the network): then it is read as
    the text it was received as, and must be private if it holds secrets.
    `with_template=False` is for agents that never render domains nor lead (node agents
    inside VMs, where the hosts' files do not exist): neither the template nor the secrets'
    files are read. `with_secrets=False` alone is for checking a manifest on a machine that
    does not hold its secrets (`cloudd-cli validate`)."""
    doc = yamlsrc.load(path)
    cloud = build_cloud(doc, catalog, with_template=with_template, with_secrets=with_secrets)
    if sources.is_wire(doc, Origin.FILE):
        _stop(sources.private(doc, cloud.secrets, yamlsrc.mode_of(doc.path)))
    return cloud


def load_cloud_text(text: str, catalog: Catalog, *, origin: Origin = Origin.WIRE,
                    with_template: bool = True, name: Path = RECEIVED) -> Cloud:
    """The Cloud declared by a manifest's text that is no file of this machine.

    `origin=Origin.WIRE` (a text received over the network): it must be self-contained, and
    nothing in it makes this agent read a file, so `with_template` changes nothing (the
    text carries what its sender cut for this receiver, `portable.text_for`). `name` names
    the text in problems."""
    doc = yamlsrc.parse_text(text, name)
    return build_cloud(doc, catalog, with_template=with_template, origin=origin)


def build_cloud(doc: Document, catalog: Catalog, *, with_template: bool = True,
                with_secrets: bool | None = None, origin: Origin = Origin.FILE) -> Cloud:
    """The Cloud of an already parsed Document (see load_cloud and load_cloud_text)."""
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.place((), message="a manifest must be a YAML mapping")])
    wire = sources.is_wire(doc, origin)
    # Before anything is read or validated: a refused text makes this agent read nothing.
    _stop(sources.check_origin(doc, wire=wire, received=origin is Origin.WIRE))
    _stop(inline_secrets(doc))
    top, problems = read_as(doc, CloudIn, doc.data)
    if not wire and doc.data.get("domain_template") is None:
        # optional in the model, which also reads self-contained texts: required here
        problems = sorted([*problems, doc.place(("domain_template",), message="is required")],
                          key=lambda p: (p.line or 0, p.column or 0))
    _stop(problems)
    assert top is not None
    spec = catalog.get(top.type)
    if spec is None:
        known = ", ".join(sorted(catalog))
        _stop([doc.place(("type",), message=f"unknown type {top.type!r} (known: {known})")])
    assert spec is not None
    settings, problems = spec.read_settings(doc, top.settings, ("settings",))
    _stop(problems)
    assert settings is not None
    _stop(_check_refs(doc, top))
    reads = Reads()
    template, template_text, problems = sources.read_template(
        doc, top.domain_template, wire=wire, read=with_template, reads=reads)
    _stop(problems)
    read = with_template if with_secrets is None else with_secrets
    secrets = _stop_or(sources.read_secrets(doc, wire=wire, read=read, reads=reads))
    roles = spec.roles_for(settings)
    elastic: dict[str, ElasticSpec] = {}
    nodes = _stop_or(_nodes(doc, top, spec, roles, reads=None if wire else reads,
                            elastic=elastic))
    _stop(_cross_checks(doc, top, nodes))
    why = spec.layout_check(settings, tuple(LayoutNode(n.address, n.roles) for n, _ in nodes))
    if why is not None:
        _stop([doc.place(("roles",), at_key=True, message=why)])
    _stop(check_users(doc, top.users))
    present = tuple(r.name for r in roles if any(r.name in n.roles for n, _ in nodes))
    role_secrets = {r: spec.role_secrets(settings, r) for r in present}
    return Cloud(
        name=top.name,
        type=top.type,
        ensure=Ensure(top.ensure),
        source=doc.path,
        digest=sources.digest(doc, wire=wire, reads=reads, secrets=secrets),
        text=doc.raw.decode("utf-8", errors="replace"),
        inputs=reads.paths,
        domain_template=template,
        template_text=template_text,
        pool=tuple(PoolHost(h.name, h.address, h.libvirt_uri, tuple(h.fence or ()),
                            None if h.migration is None else Migration(
                                h.migration.uri, h.migration.storage,
                                h.migration.address or h.address, h.migration.unsafe,
                                h.migration.tls))
                   for h in top.pool),
        roles=present,
        nodes=tuple(n for n, _ in nodes),
        settings=settings,
        secrets=MappingProxyType(secrets),
        role_secrets=MappingProxyType(role_secrets),
        prefix_length=top.network.prefix_length,
        gateway=top.network.gateway,
        template_values=MappingProxyType(dict(top.template_values)),
        node_access=NodeAccess(tuple(top.node_access.ssh_authorized_keys)),
        two_host=None if top.two_host is None else TwoHost(
            fence_delay=top.two_host.fence_delay, wait_for_all=top.two_host.wait_for_all),
        unreachable_reset_after=top.timing.unreachable_reset_after,
        users=tuple(user_of(u) for u in top.users),
        generated=generated(spec, declared=top.secrets, needed=role_secrets.values()),
        hosts_file=spec.hosts_file,
        monitor_interval=top.timing.monitor_interval,
        elastic=dict(elastic),
    )


def generated(spec: TypeSpec, *, declared: Iterable[str],
              needed: Iterable[tuple[str, ...]]) -> tuple[GeneratedSecret, ...]:
    """The secrets the leader makes for a cloud: those of the type's that some role needs
    and the manifest does not declare (a declared one is the operator's, and wins)."""
    wanted = {name for names in needed for name in names} - set(declared)
    return tuple(g for g in spec.generated_secrets if g.name in wanted)


def _stop(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(problems)


def _stop_or(result: tuple[T, list[Problem]]) -> T:
    _stop(result[1])
    return result[0]


def _check_refs(doc: Document, top: CloudIn) -> list[Problem]:
    """Every `*_ref` setting names a secret declared under `secrets`."""
    problems = []
    for key, value in top.settings.items():
        if (isinstance(key, str) and key.endswith("_ref") and value is not None
                and value not in top.secrets):
            declared = ", ".join(sorted(top.secrets)) or "none"
            problems.append(doc.place(("settings", key), message=(
                f"names secret {value!r}, which is not declared under secrets "
                f"(declared: {declared})")))
    return problems


Located = tuple[Node, tuple[str | int, ...]]


def _nodes(doc: Document, top: CloudIn, spec: TypeSpec, roles: tuple[RoleSpec, ...], *,
           reads: Reads | None, elastic: dict[str, ElasticSpec]
           ) -> tuple[list[Located], list[Problem]]:
    """The nodes of every role (an elastic role's: its candidates, and its bounds into
    `elastic`); `reads` None: read no list file (a self-contained text)."""
    by_name = {r.name: r for r in roles}
    problems: list[Problem] = []
    for role in top.roles:
        if role not in by_name:
            allowed = ", ".join(by_name)
            problems.append(doc.place(("roles", role), at_key=True, message=(
                f"unknown role {role!r} for type {spec.name} (roles: {allowed})")))
    for r in roles:
        if r.required and r.name not in top.roles:
            problems.append(doc.place(
                ("roles",), at_key=True, field_name=f"roles.{r.name}", message=(
                f"missing role {r.name!r}: type {spec.name} needs {r.describe()} "
                f"{r.name} node{'' if r.describe().endswith(' 1') else 's'}")))
    if problems:
        return [], problems
    listed: list[tuple[str, list[tuple[NodeIn, tuple[str | int, ...]]]]] = []
    for r in roles:
        if r.name not in top.roles:
            continue
        value, loc = top.roles[r.name], ("roles", r.name)
        if isinstance(value, dict) and "elastic" in value:
            entries, bounds, found = _elastic_entries(doc, top, spec, r, value, loc)
            problems += found
            if bounds is not None:
                elastic[r.name] = bounds
            listed.append((r.name, entries))
            continue
        entries, found = _role_entries(doc, value, loc, reads=reads)
        problems += found
        count = len(entries)
        if not found and (count < r.min_nodes or (r.max_nodes is not None
                                                  and count > r.max_nodes)):
            problems.append(doc.place(("roles", r.name), message=(
                f"has {count} node{'s' if count != 1 else ''}; type {spec.name} needs "
                f"{r.describe()}")))
        listed.append((r.name, entries))
    if problems:
        return [], problems
    return _shared(doc, top, listed, elastic=frozenset(elastic))


#: Most addresses a range `FIRST-LAST` of an elastic role may span.
_RANGE_MAX = MAX_ELASTIC


def _elastic_entries(doc: Document, top: CloudIn, spec: TypeSpec, r: RoleSpec, value: Any,
                     loc: tuple[str | int, ...]
                     ) -> tuple[list[tuple[NodeIn, tuple[str | int, ...]]],
                                ElasticSpec | None, list[Problem]]:
    """An elastic role's candidate nodes (its addresses with its template) and bounds."""
    if not r.elastic:
        return [], None, [doc.place((*loc, "elastic"), at_key=True, message=(
            f"role {r.name} of type {spec.name} cannot be elastic (elastic roles: "
            f"{', '.join(x.name for x in spec.roles if x.elastic) or 'none'})"))]
    role, problems = read_as(doc, ElasticRoleIn, value, loc)
    if role is None:
        return [], None, problems
    bounds = role.elastic
    addresses, why = _addresses(role.addresses)
    if why is not None:
        return [], None, [doc.place((*loc, "addresses"), message=why)]
    out: list[tuple[NodeIn, tuple[str | int, ...]]] = []
    if bounds.max < bounds.min:
        problems.append(doc.place((*loc, "elastic", "max"), message=(
            f"is {bounds.max}, below min ({bounds.min})")))
    elif bounds.min < r.min_nodes or (r.max_nodes is not None and bounds.max > r.max_nodes):
        problems.append(doc.place((*loc, "elastic"), message=(
            f"allows {bounds.min} to {bounds.max} nodes; type {spec.name} needs "
            f"{r.describe()}")))
    if len(addresses) < bounds.max:
        problems.append(doc.place((*loc, "addresses"), message=(
            f"gives {len(addresses)} address(es), fewer than max ({bounds.max})")))
    names = role.names or f"{top.name}-{r.name}-{{index}}"
    if "{index}" not in names:
        problems.append(doc.place((*loc, "names"), message=(
            "gives every candidate node the same name; put {index} in it, which stands for "
            "each node's place in addresses")))
    image = role.template.image
    if image is not None and len(addresses) > 1 and "{name}" not in image:
        problems.append(doc.place((*loc, "template", "image"), message=(
            "names one disk for every candidate node; put {name} in its path, which "
            "stands for each node's name")))
    if problems:
        return [], None, problems
    fields = {name: getattr(role.template, name) for name in given(role.template)}
    for i, address in enumerate(addresses, start=1):
        name = names.replace("{index}", str(i))
        node = {**fields, "address": address, "name": name}
        if image is not None:
            node["image"] = image.replace("{name}", name)
        entry, found = read_as(doc, NodeIn, node, (*loc, "addresses", i - 1))
        if entry is None:
            return [], None, found
        out.append((entry, (*loc, "addresses", i - 1)))
    return out, ElasticSpec(bounds.min, bounds.max, bounds.idle_after, bounds.cooldown), []


def _addresses(value: list[str] | str) -> tuple[list[str], str | None]:
    """An elastic role's addresses: a list, or a range `FIRST-LAST` of one family."""
    if isinstance(value, list):
        return value, None
    first, sep, last = value.partition("-")
    try:
        lo, hi = ip_address(first.strip()), ip_address(last.strip())
    except ValueError:
        return [], (f"{value[:60]!r} is neither a list of addresses nor a range "
                    "FIRST-LAST")
    if not sep or lo.version != hi.version or int(hi) < int(lo):
        return [], f"{value[:60]!r} is not a range FIRST-LAST, FIRST not above LAST"
    if int(hi) - int(lo) >= _RANGE_MAX:
        return [], f"range {value[:60]!r} spans more than {_RANGE_MAX} addresses"
    return [str(ip_address(n)) for n in range(int(lo), int(hi) + 1)], None


#: What an entry naming a node that another role's entry declares may say: which node.
_REFERENCE_FIELDS = frozenset({"address", "name"})


def _shared(doc: Document, top: CloudIn,
            listed: list[tuple[str, list[tuple[NodeIn, tuple[str | int, ...]]]]], *,
            elastic: frozenset[str] = frozenset(),
            ) -> tuple[list[Located], list[Problem]]:
    """One node per address: an address listed under several roles is one node holding them
    all. One of its entries declares it (the only one saying more than its address and name;
    else the first in the type's order), the others name it (address, and the same name if
    any); every role of the node is counted for that role."""
    by_address: dict[str, list[tuple[str, int, NodeIn, tuple[str | int, ...]]]] = {}
    for role, entries in listed:
        for i, (entry, loc) in enumerate(entries, start=1):
            by_address.setdefault(entry.address, []).append((role, i, entry, loc))
    problems: list[Problem] = []
    out: list[Located] = []
    for group in by_address.values():
        full = [g for g in group if given(g[2]) - _REFERENCE_FIELDS]
        declaring = full[0] if full else group[0]
        role, index, entry, loc = declaring
        names = sorted({g[2].name for g in group if g[2].name is not None})
        node = _node(top, role, index, entry, name=names[0] if names else None)
        held: list[str] = []
        bad = len(names) > 1
        shared_elastic = sorted({g[0] for g in group} & elastic) if len(group) > 1 else []
        if shared_elastic:
            problems.append(doc.place(group[-1][3], message=(
                f"address {entry.address} is a candidate node of elastic role "
                f"{shared_elastic[0]}, which holds no other role")))
            continue
        if bad:
            problems.append(doc.place(loc, message=(
                f"address {entry.address} is one node, named differently under its roles: "
                f"{', '.join(names)}")))
        for g in group:
            other, _, said, at = g
            if other in held or (g is not declaring and other == role):
                bad = True
                problems.append(doc.place((*at, "address"), message=(
                    f"address {said.address} is already used by node {node.name}")))
            elif g is not declaring and g in full:
                bad = True
                extra = ", ".join(sorted(given(said) - _REFERENCE_FIELDS))
                problems.append(doc.place(at, message=(
                    f"address {said.address} is the node declared at "
                    f"{yamlsrc.render_loc(loc)} (role {role}); a further role's entry names "
                    f"it by address (and name) only, this one also gives {extra}")))
            else:
                held.append(other)
        if not bad:
            out.append((replace(node, roles=tuple(held)), loc))
    return out, problems


def _role_entries(doc: Document, value: Any, loc: tuple[str | int, ...], *,
                  reads: Reads | None) -> tuple[list[tuple[NodeIn, tuple[str | int, ...]]],
                                                list[Problem]]:
    """The node entries of one role, written inline or as an addresses/images file pair."""
    if not isinstance(value, list) and not (
            reads is not None and isinstance(value, dict)
            and {"addresses_file", "images_file"} & set(value)):
        return [], [doc.place(loc, message=(
            "must be a list of nodes, or {addresses_file: PATH, images_file: PATH}"))]
    if isinstance(value, dict) and reads is not None:
        files, problems = read_as(doc, RoleFilesIn, value, loc)
        if files is None:
            return [], problems
        return _from_files(doc, files, loc, reads=reads)
    nodes, problems = read_typed(doc, list[NodeIn], value, loc)
    if nodes is None:
        return [], problems
    return [(n, (*loc, i)) for i, n in enumerate(nodes)], []


def _read_lines(doc: Document, path: str, loc: tuple[str | int, ...], *, reads: Reads
                ) -> tuple[Path, list[tuple[int, str]] | None, list[Problem]]:
    full = sources.resolve(doc.path.parent, path)
    raw, problems = sources.read_file(doc, full, loc)
    if raw is None:
        return full, None, problems
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return full, None, [doc.place(loc, message=f"{str(full)!r}: not a UTF-8 text file")]
    reads.files.append((full, raw))
    lines = [(n, s.strip()) for n, s in enumerate(text.splitlines(), start=1)]
    return full, [(n, s) for n, s in lines if s and not s.startswith("#")], []


def _from_files(doc: Document, files: RoleFilesIn, loc: tuple[str | int, ...], *, reads: Reads
                ) -> tuple[list[tuple[NodeIn, tuple[str | int, ...]]], list[Problem]]:
    """Nodes from two list files of this machine (a manifest read from disk only)."""
    apath, addresses, p1 = _read_lines(doc, files.addresses_file, (*loc, "addresses_file"),
                                       reads=reads)
    ipath, images, p2 = _read_lines(doc, files.images_file, (*loc, "images_file"),
                                    reads=reads)
    if addresses is None or images is None:
        return [], p1 + p2
    if len(addresses) != len(images):
        return [], [doc.place(loc, message=(
            f"{files.addresses_file} lists {len(addresses)} addresses but "
            f"{files.images_file} lists {len(images)} images; line i of one pairs with "
            "line i of the other"))]
    out, problems = [], []
    for (aline, address), (iline, image) in zip(addresses, images, strict=True):
        node, found = read_as(doc, NodeIn, {"address": address, "image": image})
        if node is None:
            # Place the problem in the list file itself: that is where the typo is.
            bad = "address" if any(p.field == "address" for p in found) else "image"
            where, line = (apath, aline) if bad == "address" else (ipath, iline)
            problems += [Problem(str(where), line, 1, p.field, p.message) for p in found]
        else:
            out.append((node, loc))
    return out, problems


def _node(top: CloudIn, role: str, index: int, entry: NodeIn, *,
          name: str | None = None) -> Node:
    return Node(
        name=name or entry.name or f"{top.name}-{role}-{index}",
        role=role,
        index=index,
        address=entry.address,
        image=entry.image,
        memory_mib=entry.memory_mib or top.resources.memory_mib,
        vcpus=entry.vcpus or top.resources.vcpus,
        host=entry.host,
        base_image=entry.base_image,
        overlay=entry.overlay,
        source_host=entry.source_host,
        managed=entry.managed,
        run=RunStrategy(entry.run),
    )


def _cross_checks(doc: Document, top: CloudIn, nodes: list[Located]) -> list[Problem]:
    problems: list[Problem] = []
    hosts = [h.name for h in top.pool]
    seen_addr: dict[str, str] = {}
    seen_name: dict[str, str] = {}

    def unique(table: dict[str, str], key: str, what: str, where: str,
               loc: tuple[str | int, ...], field: str) -> None:
        if key in table:
            problems.append(doc.place((*loc, field), message=(
                f"{what} {key} is already used by {table[key]}")))
        else:
            table[key] = where

    seen_uri: dict[str, str] = {}
    for i, h in enumerate(top.pool):
        unique(seen_name, h.name, "host name", f"pool host {h.name}", ("pool", i), "name")
        unique(seen_addr, h.address, "address", f"pool host {h.name}", ("pool", i), "address")
        if h.migration is not None:
            unique(seen_uri, h.migration.uri, "migration URI", f"pool host {h.name}",
                   ("pool", i, "migration"), "uri")
    problems += _two_host(doc, top)
    for node, loc in nodes:
        unique(seen_name, node.name, "name", f"node {node.name}", loc, "name")
        unique(seen_addr, node.address, "address", f"node {node.name}", loc, "address")
        for field in ("host", "source_host"):
            value = getattr(node, field)
            if value is not None and value not in hosts:
                problems.append(doc.place((*loc, field), message=(
                    f"names {value!r}, which is not a pool host (pool: {', '.join(hosts)})")))
        if len(node.name) > 63:
            problems.append(doc.place((*loc, "name"), message=(
                f"node name {node.name!r} is longer than 63 characters; give a shorter name")))
        if node.managed and node.image is None:
            problems.append(doc.place(loc, field_name=_field(loc, "image"),
                                      message="is required for a managed node"))
        if node.overlay and node.base_image is None:
            problems.append(doc.place(loc, field_name=_field(loc, "base_image"),
                                      message="is required when overlay is true"))
    return problems


def _two_host(doc: Document, top: CloudIn) -> list[Problem]:
    """A two-host pool has exactly two hosts, and the survivor fences the other: each needs
    its fence command (a node's view, which carries no fence commands, carries no two_host)."""
    if top.two_host is None:
        return []
    if len(top.pool) != 2:
        return [doc.place(("two_host",), message=(
            f"a two-host pool has exactly two pool hosts, and this pool lists {len(top.pool)}"))]
    return [doc.place(("pool", i), field_name=_field(("pool", i), "fence"), message=(
                "is required in a two-host pool: the survivor acts only after fencing the other"))
            for i, h in enumerate(top.pool) if not h.fence]


def _field(loc: tuple[str | int, ...], name: str) -> str:
    return yamlsrc.render_loc((*loc, name))
