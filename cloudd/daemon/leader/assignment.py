"""Which role assignment every node should hold now, and which of them to send.

Pure: a function of the cloud in force, the nodes' last reports, who is alive and the
operator's maintenance. Roles are assigned in the type's dependency order: a role is assigned
once every role before it has a ready node (a database before its web servers, a TORQUE head
before its compute nodes), and each assignment carries the health of the node's peers so that
the node configures only against peers that work. A stopped cloud assigns nothing.

An assignment carries the secrets the node's role needs (the type declares them,
`Cloud.role_secrets`) and no other: the balancer of a web cloud never sees the database's
password. A secret the manifest declares wins over one the leader made of the same name
(`generated`, from the cloud's record). A role that needs a secret the leader makes, which
the record does not hold yet, is not assigned yet (nor any role after it): the leader is
writing it. A declared secret this generation does not hold is left out; the node's converge
says which one it misses. Every assignment carries the manifest's users.

An assignment is sent again when it changed, or when the node's report says it runs another
generation (it restarted, or missed the last one); never to a node that is not alive (it
would be lost) nor to a node in maintenance (the operator is working on it).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterable, Mapping
from ipaddress import ip_address

from cloudd.config.model import Cloud, Ensure, Node
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, PeerInfo, RoleAssignment


def healthy(node: str, *, reports: Mapping[str, NodeReport], alive: Collection[str]) -> bool:
    """A node is healthy when it is alive and its last report says ready."""
    report = reports.get(node)
    return report is not None and report.phase == NodePhase.READY and node in alive


def assignments(cloud: Cloud, *, term: int, reports: Mapping[str, NodeReport],
                alive: Collection[str], generated: Mapping[str, bytes] | None = None,
                ) -> tuple[RoleAssignment, ...]:
    """What every node should be told now, in role order, as far as the order allows;
    `generated`: the secrets the leaders made (name -> contents)."""
    if cloud.ensure is Ensure.STOPPED:
        return ()
    made = generated or {}
    well = {n.name for n in cloud.nodes if healthy(n.name, reports=reports, alive=alive)}
    peers = tuple(PeerInfo(n.name, n.role, ip_address(n.address), n.name in well,
                           _more(n.roles))
                  for n in cloud.nodes)
    ready = {r: frozenset(m.name for m in cloud.nodes_of(r) if m.name in well)
             for r in cloud.roles}
    held = {n.name: ready_roles(cloud, n, ready, made) for n in cloud.nodes}
    out: list[RoleAssignment] = []
    for role in cloud.roles:
        for n in cloud.nodes:
            roles = held[n.name]
            if not roles or roles[-1] != role:
                continue
            secrets = tuple(dict.fromkeys(pair for r in roles
                                          for pair in role_secrets(cloud, r, made)))
            out.append(RoleAssignment(
                term=term, cloud=cloud.name, node=n.name,
                role=n.role if n.role in roles else roles[0],
                address=ip_address(n.address), generation=cloud.digest,
                peers=tuple(p for p in peers if p.node != n.name), secrets=secrets,
                users=cloud.users, roles=_more(roles)))
    return tuple(out)


def ready_roles(cloud: Cloud, node: Node, ready: Mapping[str, frozenset[str]],
                made: Mapping[str, bytes]) -> tuple[str, ...]:
    """The roles `node` is given now: those of its roles, in the type's order, whose earlier
    roles it does not hold itself each have a ready node elsewhere (`ready`: role -> its
    ready nodes), and whose secrets are made (up to the first that waits). A node holding a
    role that needs another node's (a database and balancer whose servers are elsewhere)
    starts with the roles it can run, is ready with them, and gets the next once the others
    are ready."""
    out: list[str] = []
    for role in node.roles:
        i = cloud.roles.index(role)
        if any(waiting(cloud, r, made) for r in cloud.roles[:i + 1]):
            break
        if not all(ready[r] - {node.name} for r in cloud.roles[:i] if r not in node.roles):
            break
        out.append(role)
    return tuple(out)


def _more(roles: tuple[str, ...]) -> tuple[str, ...]:
    """A node's roles as the wire carries them: () for a node of one role (`role` says it)."""
    return roles if len(roles) > 1 else ()


def waiting(cloud: Cloud, role: str, generated: Mapping[str, bytes]) -> bool:
    """Whether `role` needs a secret the leader makes that is not made yet."""
    needs = set(cloud.role_secrets.get(role, ()))
    return any(g.name in needs and g.name not in generated for g in cloud.generated)


def role_secrets(cloud: Cloud, role: str, generated: Mapping[str, bytes] | None = None,
                 ) -> tuple[tuple[str, str], ...]:
    """(name, base64 of the contents) of each secret `role` needs that this generation holds
    (the manifest's own first) or the leaders made."""
    made = generated or {}
    out = []
    for name in cloud.role_secrets.get(role, ()):
        secret = cloud.secrets.get(name)
        value = secret.value if secret is not None else made.get(name)
        if value is not None:
            out.append((name, base64.b64encode(value).decode("ascii")))
    return tuple(out)


def due(wanted: Iterable[RoleAssignment], *, sent: Mapping[str, RoleAssignment],
        reports: Mapping[str, NodeReport], alive: Collection[str],
        maintenance: Collection[str | None]) -> tuple[RoleAssignment, ...]:
    """The assignments to send now, given what was sent since this leader took over."""
    out = []
    for a in wanted:
        report = reports.get(a.node)
        if sent.get(a.node) == a and report is not None and report.generation == a.generation:
            continue
        if a.node not in alive or a.node in maintenance:
            continue
        out.append(a)
    return tuple(out)
