"""The manifest's input models as pydantic models, and the parts of the loader that used them,
as they were before `cloudd.config.model` read the manifest without pydantic: kept unchanged
as the oracle of tests/config/test_manifest_differential.py (same Cloud or same placed
problems, in the same order). Do not edit but to follow a deliberate change of the manifest.
The rules that never touched a model (cross-field checks, list files, ranges, the users'
rules) are the loader's own, imported from it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cloudd.config import sources, yamlsrc
from cloudd.config.catalog import Catalog, LayoutNode, RoleSpec, TypeSpec
from cloudd.config.manifest import (
    Located,
    _addresses,
    _check_refs,
    _cross_checks,
    _node,
    _read_lines,
    _stop,
    _stop_or,
    generated,
)
from cloudd.config.model import (
    MAX_ELASTIC,
    MONITOR_INTERVAL,
    UNREACHABLE_RESET_AFTER,
    Cloud,
    ElasticSpec,
    Ensure,
    Migration,
    NodeAccess,
    PoolHost,
    _migration_uri,
)
from cloudd.config.plain import ip_address as _ip
from cloudd.config.problems import inline_secrets
from cloudd.config.sources import Origin, Reads
from cloudd.config.sshkeys import check_public_key
from cloudd.config.users import ID_MAX, ID_MIN, MAX_GROUPS, MAX_USERS, NAME, check_users, user_of
from cloudd.config.yamlsrc import Document
from cloudd.election.config import TwoHost
from cloudd.errors import ConfigError, Problem
from shared.pydantic_problems import from_validation, validate_model

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} is not a DNS label (lowercase letters, digits and '-', "
                         "1 to 63 characters, not starting or ending with '-')")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
SshPublicKey = Annotated[str, AfterValidator(check_public_key)]
Address = Annotated[str, AfterValidator(_ip)]
AbsPath = Annotated[str, AfterValidator(_absolute)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MigrationIn(_Strict):
    """How the other pool hosts move guests to this one live (libvirt's peer-to-peer
    migration): the hosts that name the same `storage` see the same image folders at the
    same paths, and their libvirtds trust each other."""

    uri: Annotated[str, AfterValidator(_migration_uri)]
    """This host's libvirtd as the other hosts' libvirtds reach it (qemu+tls://...)."""
    storage: DnsLabel
    """The name of the storage its image folders are on, shared with the hosts naming it."""
    address: Address | None = None
    """Where this host takes a guest's memory stream; None: the host's `address`."""
    unsafe: bool = False
    """Moves from this host skip libvirt's check that the guest's disks are on storage it
    knows to be shared (NFS, GlusterFS, Ceph...): true only where the operator knows the
    storage is shared though libvirt cannot tell (libvirt's `--unsafe`; the lab's two
    libvirtds on one file system)."""
    tls: bool = False


class PoolHostIn(_Strict):
    name: DnsLabel
    address: Address
    libvirt_uri: str | None = None
    fence: list[str] | None = Field(default=None, min_length=1)
    migration: MigrationIn | None = None


class TwoHostIn(_Strict):
    """A pool of exactly two hosts where the survivor acts after fencing the other
    (docs/operations.md, "Two-host pools"). Seconds."""

    fence_delay: float = Field(default=TwoHost.fence_delay, ge=0, le=3600)
    wait_for_all: float | None = Field(default=None, gt=0, le=86400)


class NetworkIn(_Strict):
    """How nodes configure their address (the manifest gives addresses without prefix)."""

    prefix_length: int = Field(default=24, ge=1, le=128)
    gateway: Address | None = None


class ResourcesIn(_Strict):
    memory_mib: int = Field(default=512, ge=64, le=1024 * 1024)
    vcpus: int = Field(default=1, ge=1, le=512)


#: Seconds a node's agent may stay unreachable while its domain runs before the leader resets
class TimingIn(_Strict):
    """The cloud's own bounds on its guests, in seconds."""

    unreachable_reset_after: float = Field(default=UNREACHABLE_RESET_AFTER, ge=10)
    """A node whose domain runs while its agent has been unreachable (dead by the leader's
    own SWIM probes) this long is hung: reset, then destroyed and started again if it stays
    unreachable as long again. Counted from the domain's start for an agent that never came
    up."""
    monitor_interval: float = Field(default=MONITOR_INTERVAL, ge=1, le=3600)
    """Seconds between two runs of the provider's cluster checks (`monitor`) by the leader;
    they also run after every configure."""


class NodeAccessIn(_Strict):
    """How an operator gets into the cloud's nodes: root's SSH keys (public keys only)."""

    ssh_authorized_keys: list[SshPublicKey] = Field(default=[], max_length=64)


class NodeTemplateIn(_Strict):
    """What every candidate node of an elastic role shares: a node without address or name.
    `{name}` in `image` stands for each node's name (each managed node needs its own disk)."""

    image: AbsPath | None = None
    memory_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)
    vcpus: int | None = Field(default=None, ge=1, le=512)
    host: str | None = None
    base_image: AbsPath | None = None
    overlay: bool = False
    source_host: str | None = None
    managed: bool = True
    run: Literal["always", "rerun-on-failure", "manual"] = "always"


class NodeIn(NodeTemplateIn):
    """One node as written: the fields a template shares, and its own address and name."""

    address: Address
    name: DnsLabel | None = None


class ElasticIn(_Strict):
    min: int = Field(ge=0, le=MAX_ELASTIC)
    max: int = Field(ge=1, le=MAX_ELASTIC)
    idle_after: float = Field(default=300.0, ge=10, le=7 * 86400)
    cooldown: float = Field(default=120.0, ge=0, le=86400)


class ElasticRoleIn(_Strict):
    """A role whose nodes follow its scheduler's queue, between `min` and `max` of the
    candidates its addresses make (a list, or a range `FIRST-LAST`)."""

    elastic: ElasticIn
    template: NodeTemplateIn
    addresses: list[Address] | str = Field(min_length=1)
    #: The candidates' names: `{index}` stands for each one's place in `addresses` (from
    #: 1); by default `CLOUD-ROLE-{index}`, as any node's.
    names: str | None = Field(default=None, min_length=1, max_length=63)


class RoleFilesIn(_Strict):
    """A role written as two files, line i of one pairing with line i of the other."""

    addresses_file: str
    images_file: str


class CloudIn(_Strict):
    apiVersion: Literal["cloudd/v1"]
    kind: Literal["Cloud"]
    name: DnsLabel
    type: str
    ensure: Literal["running", "stopped"] = "running"
    #: A file of this machine: required in a manifest read from disk, refused in a
    #: self-contained one (`cloudd.config.sources`).
    domain_template: str | None = None
    #: The template's text, in a self-contained manifest only (cloudd writes it).
    domain_template_text: str | None = None
    #: Set by cloudd on the manifests it sends: the text names no file (`sources.Origin`).
    self_contained: bool = False
    pool: list[PoolHostIn] = Field(min_length=1)
    #: Present: the pool is a two-host pool (exactly two hosts, each with a fence command).
    two_host: TwoHostIn | None = None
    roles: dict[str, Any] = Field(min_length=1)
    resources: ResourcesIn = ResourcesIn()
    settings: dict[str, Any] = {}
    #: name -> {file: PATH} (read from disk) or {value_b64: ...} / {} (self-contained);
    #: checked by `cloudd.config.sources`, never by pydantic, whose messages quote values.
    secrets: dict[str, Any] = {}
    network: NetworkIn = NetworkIn()
    template_values: dict[str, str] = {}
    #: Optional: without it no one can log into a node (root is locked, no user, no key).
    node_access: NodeAccessIn = NodeAccessIn()
    timing: TimingIn = TimingIn()
    #: The users every node has, with the same uid everywhere (`cloudd.config.users`).
    users: list[UserIn] = Field(default=[], max_length=MAX_USERS)
def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a user or group name (lowercase letters, digits, "
                         "'_' and '-', at most 32, starting with a letter or '_')")
    return value


PosixName = Annotated[str, AfterValidator(_name)]
Id = Annotated[int, Field(ge=ID_MIN, le=ID_MAX)]


class UserIn(BaseModel):
    """One entry of `users:` as written."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: PosixName
    uid: Id
    gid: Id | None = None
    groups: list[PosixName] = Field(default=[], max_length=MAX_GROUPS)


_NODES: TypeAdapter[list[NodeIn]] = TypeAdapter(list[NodeIn])
T = TypeVar("T")


def validate_as(doc: Document, adapter: TypeAdapter[T], data: Any,
                prefix: tuple[str | int, ...] = ()
                ) -> tuple[T, list[Problem]] | tuple[None, list[Problem]]:
    """Like validate_model, for any type through a TypeAdapter."""
    try:
        return adapter.validate_python(data), []
    except ValidationError as exc:
        return None, from_validation(doc, exc, prefix)


def build_cloud(doc: Document, catalog: Catalog, *, with_template: bool = True,
                with_secrets: bool | None = None, origin: Origin = Origin.FILE) -> Cloud:
    """The Cloud of an already parsed Document (see load_cloud and load_cloud_text)."""
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.place((), message="a manifest must be a YAML mapping")])
    wire = sources.is_wire(doc, origin)
    # Before anything is read or validated: a refused text makes this agent read nothing.
    _stop(sources.check_origin(doc, wire=wire, received=origin is Origin.WIRE))
    _stop(inline_secrets(doc))
    top, problems = validate_model(doc, CloudIn, doc.data)
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
    settings, problems = spec.read_settings(doc, top.settings, ("settings",))  # not under test
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
    role, problems = validate_model(doc, ElasticRoleIn, value, loc)
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
    fields = role.template.model_dump(exclude_unset=True)
    for i, address in enumerate(addresses, start=1):
        name = names.replace("{index}", str(i))
        node = {**fields, "address": address, "name": name}
        if image is not None:
            node["image"] = image.replace("{name}", name)
        entry, found = validate_model(doc, NodeIn, node, (*loc, "addresses", i - 1))
        if entry is None:
            return [], None, found
        out.append((entry, (*loc, "addresses", i - 1)))
    return out, ElasticSpec(bounds.min, bounds.max, bounds.idle_after, bounds.cooldown), []



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
        full = [g for g in group if set(g[2].model_fields_set) - _REFERENCE_FIELDS]
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
                extra = ", ".join(sorted(set(said.model_fields_set) - _REFERENCE_FIELDS))
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
        files, problems = validate_model(doc, RoleFilesIn, value, loc)
        if files is None:
            return [], problems
        return _from_files(doc, files, loc, reads=reads)
    nodes, problems = validate_as(doc, _NODES, value, loc)
    if nodes is None:
        return [], problems
    return [(n, (*loc, i)) for i, n in enumerate(nodes)], []


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
        node, found = validate_model(doc, NodeIn, {"address": address, "image": image})
        if node is None:
            # Place the problem in the list file itself: that is where the typo is.
            bad = "address" if any(p.field == "address" for p in found) else "image"
            where, line = (apath, aline) if bad == "address" else (ipath, iline)
            problems += [Problem(str(where), line, 1, p.field, p.message) for p in found]
        else:
            out.append((node, loc))
    return out, problems
