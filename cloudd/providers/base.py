"""The provider interface: what one cloud type tells the agent about each of its roles.

A provider is data plus a few hooks. For every role it says which packages the node needs,
which files to write (rendered purely from the node's `Assignment`), which services the
supervisor runs, and which roles must be healthy first. The leader runs the cluster-level
hooks (`configure`, `monitor`, `stop`). Rendering is pure so that it can be tested without a
machine; writing the result (`apply_rendered`), reading secrets and installing packages are the
few impure helpers here, shared by every provider.

Relations: an assignment carries the nodes of the other roles with their health. When they
change the node re-renders; `apply_rendered` reports which files changed and which services
want a reload because of them, so that e.g. nginx re-reads its upstream instead of restarting.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudd import children, durable, log
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers import rolefiles
from cloudd.providers.service import ServiceSpec

_log = log.get("providers")

#: A node's address: an IP address object from the leader's assignment (the codec refuses
#: anything else), checked once more by each renderer (`cloudd.providers.values`).
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Peer:
    """Another node of the cloud as a role sees it: where it is and whether it is healthy."""

    node: str
    role: str
    address: IPAddress
    healthy: bool
    #: Every role the node holds (`role` among them); () reads as (`role`,).
    roles: tuple[str, ...] = ()

    def holds(self, role: str) -> bool:
        return role == self.role or role in self.roles


@dataclass(frozen=True)
class Assignment:
    """What one node is told by the leader: who it is, what it is for, and who its peers are."""

    cloud: str
    node: str
    role: str
    address: IPAddress
    #: Everything the node writes lives below this directory (several nodes may share a machine).
    root: Path
    #: Where the role's secrets are, one file per secret name (0600): the node writes there
    #: the secrets of its assignment, those its role needs and no other.
    secrets_dir: Path
    #: The manifest's provider-specific settings (validated by the type's settings model).
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: The other nodes of the cloud, with their health as the leader last saw it.
    peers: tuple[Peer, ...] = ()
    #: Put before every command line of this node: tests run several nodes on one machine,
    #: each in its own network namespace (`("ip", "netns", "exec", "ns1")`).
    exec_prefix: tuple[str, ...] = ()
    #: Every role this node holds, in the type's order (`role`, the one being rendered, among
    #: them); () reads as (`role`,). The node runs them all (`converge`).
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.roles:
            object.__setattr__(self, "roles", (self.role,))

    def as_role(self, role: str) -> Assignment:
        """This assignment as `role`'s renderer sees it (another role of the same node)."""
        return replace(self, role=role)

    def peers_of(self, role: str) -> tuple[Peer, ...]:
        """The nodes holding `role`: the peers, and this node itself when it holds it too
        (a balancer that is also a server lists itself; it is healthy to itself, its own
        services coming up in order)."""
        me = ((Peer(self.node, role, self.address, True, self.roles),)
              if role in self.roles and role != self.role else ())
        return (*me, *(p for p in self.peers if p.holds(role)))

    def healthy(self, role: str) -> tuple[Peer, ...]:
        return tuple(p for p in self.peers_of(role) if p.healthy)

    def setting(self, name: str, default: Any) -> Any:
        return self.settings.get(name, default)


@dataclass(frozen=True)
class DirSpec:
    """A directory a role needs, with its owner and mode."""

    path: Path
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class FileSpec:
    """A rendered configuration file."""

    path: Path
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    #: Services of this node that re-read this file on reload (not restart) when it changes.
    reload: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """Everything a role writes on its node, in order (directories first)."""

    dirs: tuple[DirSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()

    def writers(self, path: Path) -> frozenset[str]:
        """Who besides root may replace what these folders hold at `path`: the owner of
        the folder (or of any folder of this rendering above it), its group (`@group`) when
        group-writable, `*` when anyone may write (sticky or not: anyone may make the name
        first). A file that a daemon reads as root (a pid file it kills by, a key) belongs
        in a folder whose writers are none."""
        who: set[str] = set()
        for d in self.dirs:
            if path == d.path or path.is_relative_to(d.path):
                if d.owner != "root":
                    who.add(d.owner)
                if d.mode & 0o020:
                    who.add(f"@{d.group}")
                if d.mode & 0o002:
                    who.add("*")
        return frozenset(who)


@dataclass(frozen=True)
class Changes:
    """What `apply_rendered` changed on disk, and which services should reload because of it."""

    changed: tuple[Path, ...] = ()
    reload: tuple[str, ...] = ()


@dataclass(frozen=True)
class Converged:
    """The outcome of `converge`: the services to supervise and what changed on disk."""

    services: tuple[ServiceSpec, ...]
    changes: Changes
    installed: tuple[str, ...] = ()


#: The leader's channel to one node's role: (node, action, arguments) -> the answer of that
#: role's `act`. Raises ClouddError (one sentence) when the node cannot be reached, refuses,
#: or the action failed.
NodeAsk = Callable[[str, str, Mapping[str, str]], Awaitable[Mapping[str, str]]]


#: Seconds a node gives its role's `act` before it answers that the action did not finish:
#: below the transport's request timeout (10 s by default), so that the leader hears the
#: node's own sentence. Actions are short commands (`scontrol`, `qmgr`), not long jobs.
ACT_WITHIN = 8.0
#: Most characters an action's answer may hold, keys and values together: an answer is a
#: few fields, not a log file.
ACT_ANSWER_LIMIT = 16 * 1024


async def no_channel(node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
    """The `ask` of a view built where no leader's channel exists (tests of pure hooks)."""
    raise TemporaryError(f"cannot ask {node} for {action!r}: no channel to the nodes here")


@dataclass(frozen=True)
class ClusterView:
    """What the leader hands the cluster-level hooks: the cloud, every node's health, and a
    way to have a node's role act (`ask`: the hooks that must run on the head node)."""

    cloud: str
    nodes: tuple[Peer, ...]
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)
    ask: NodeAsk = field(default=no_channel, compare=False, hash=False)

    def of(self, role: str) -> tuple[Peer, ...]:
        return tuple(p for p in self.nodes if p.role == role)


@dataclass(frozen=True)
class Finding:
    """One result of a provider's `monitor` check.

    The leader keeps the findings of the last `monitor`, shows them in `inspect` (beside the
    node they name, or for the whole cloud when `node` is ""), and logs one when its `ok` or
    `message` changes. A batch scheduler's view of a node is a finding too: `state` is the
    scheduler's own word for the node ("idle", "alloc", "down", "free", "job-exclusive")
    and `jobs` the ids of the jobs running on it; `inspect` shows them beside cloudd's own
    view of that node. They are not compared for the log: jobs come and go all the time.
    """

    check: str
    ok: bool
    message: str
    node: str = ""
    #: The scheduler's state of `node`, as the scheduler says it ("" when not a scheduler's).
    state: str = ""
    #: The ids of the jobs the scheduler runs on `node` now.
    jobs: tuple[str, ...] = ()


class Role:
    """One role of a cloud type. Subclasses override what differs; defaults do nothing."""

    name: str = ""
    #: Roles whose nodes must be healthy before this one is configured.
    depends_on: tuple[str, ...] = ()

    def packages(self, assignment: Assignment) -> tuple[str, ...]:
        return ()

    def secrets(self, assignment: Assignment) -> tuple[str, ...]:
        """Names of the secret files `render` needs: the ones the type's spec declares for
        this role (`TypeSpec.role_secrets`), which are all the leader sends its nodes."""
        return ()

    def render(self, assignment: Assignment, secrets: Mapping[str, str]) -> Rendered:
        return Rendered()

    def services(self, assignment: Assignment) -> tuple[ServiceSpec, ...]:
        return ()

    async def prepare(self, assignment: Assignment) -> None:
        """One-time initialisation after the files are written, before the services start.

        Must be idempotent: it runs on every converge and returns at once when already done.
        """

    #: The actions the leader may ask of this role's nodes (`ClusterView.ask`), each with the
    #: names of the arguments it takes: any other action or argument is refused before `act`.
    actions: Mapping[str, tuple[str, ...]] = {}

    async def act(self, assignment: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        """Do one of `actions` on this node (e.g. `scontrol delete node` on a Slurm head)
        and answer; raise ClouddError with one sentence when it fails.

        Bounds: the node gives `act` `ACT_WITHIN` seconds, and refuses an answer of more
        than `ACT_ANSWER_LIMIT` characters (keys and values together)."""
        raise PermanentError(f"role {self.name!r} has no action {action!r}")


class Pending(TemporaryError):
    """A hook's work goes on elsewhere (a long run on a node): look again after `delay`
    seconds. Not a failure: it does not count toward the hook's backoff, and is logged as
    `provider_hook_pending`."""


class Release(StrEnum):
    """Why cloudd drains a batch compute node in its scheduler (`Provider.release`): the
    scheduler keeps the word (Slurm's reason, TORQUE's note), so that any later leader knows
    the drain for cloudd's own and why."""

    #: An elastic role's idle node, to leave the cloud once its jobs are done.
    LEAVE = "leave"
    #: A node on a drained host, to move to another host once its jobs are done.
    MOVE = "move"


#: What the scheduler is told of each `Release` (a Slurm reason, a TORQUE note).
RELEASE_NOTES: Mapping[Release, str] = {
    Release.LEAVE: "cloudd: idle, leaving the cloud",
    Release.MOVE: "cloudd: moving off a drained host",
}


@dataclass(frozen=True)
class NodeUse:
    """One batch compute node as its scheduler sees it (`Provider.demand`)."""

    #: Registered and able to take a job (not down, not drained).
    ready: bool = False
    #: Runs at least one job now.
    busy: bool = False
    #: Drained (or draining) by cloudd to leave the cloud (`Release.LEAVE`).
    released: bool = False
    #: Drained (or draining) by cloudd to move off a drained host (`Release.MOVE`).
    moving: bool = False


@dataclass(frozen=True)
class Demand:
    """What an elastic role's scheduler says: the jobs waiting for nodes (how many, and the
    nodes and CPUs they ask for together) and each node in use."""

    jobs: int = 0
    nodes: int = 0
    cpus: int = 0
    use: Mapping[str, NodeUse] = field(default_factory=dict)


class Provider:
    """One cloud type: its roles and the leader's hooks. Defaults suit a type with no checks."""

    cloud_type: str = ""
    roles: Mapping[str, Role] = {}
    #: Seconds the cloud is held for this provider's `stop` at most, if more than the
    #: leader's own bound (a deployment whose own `down` takes minutes).
    stop_within: float = 0.0

    def role(self, name: str) -> Role:
        try:
            return self.roles[name]
        except KeyError:
            known = ", ".join(sorted(self.roles))
            raise PermanentError(
                f"cloud type {self.cloud_type!r} has no role {name!r} (roles: {known})"
            ) from None

    @property
    def role_order(self) -> tuple[str, ...]:
        return dependency_order({n: r.depends_on for n, r in self.roles.items()})

    async def configure(self, cluster: ClusterView, role: str) -> None:
        """The leader calls it when `role`'s nodes, their addresses or their health change
        (and when a new generation changes the settings), in role order, once every role it
        depends on has a healthy node. Raise TemporaryError to be retried (with backoff, at
        least its delay); it must be idempotent: a new leader calls it again."""

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        """Type-specific checks beyond each service's own probes: every
        `timing.monitor_interval` seconds of the manifest, and after each configure."""
        return ()

    async def stop(self, cluster: ClusterView) -> None:
        """Cluster-level work before the domains go (`ensure: stopped`), while every node
        still runs its services; then the services stop (in reverse role order on each
        node). Raise TemporaryError to be retried; the stop goes on without it after a
        bound (docs/operations.md, "Provider hooks")."""

    # -- an elastic role's (`RoleSpec.elastic`): the leader's elastic loop calls them -------
    async def demand(self, cluster: ClusterView, role: str) -> Demand:
        """The jobs waiting for `role`'s nodes and each of its nodes in use (`cluster` holds
        the nodes in use only), for a role whose nodes run a scheduler's jobs (an elastic
        role, or one a host drain moves). Raise TemporaryError when the scheduler cannot
        say."""
        raise PermanentError(f"cloud type {self.cloud_type!r} has no elastic role {role!r}")

    async def release(self, cluster: ClusterView, role: str, node: str,
                      why: Release = Release.LEAVE) -> None:
        """Have the scheduler drain `node` (to leave the cloud, or to move): no new job starts
        there, the jobs it runs finish; `demand` then shows it `released` (or `moving`), and
        busy until they are done."""
        raise PermanentError(f"cloud type {self.cloud_type!r} has no elastic role {role!r}")

    async def keep(self, cluster: ClusterView, role: str, node: str) -> None:
        """Undo `release` (either reason; never an operator's drain): the node takes jobs
        again."""
        raise PermanentError(f"cloud type {self.cloud_type!r} has no elastic role {role!r}")


def dependency_order(depends: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """Roles so that each comes after what it depends on; ties broken by name, for stability."""
    deps = {name: set(d) for name, d in depends.items()}
    for name, d in deps.items():
        unknown = d - deps.keys()
        if unknown:
            raise PermanentError(f"role {name!r} depends on unknown role(s) {sorted(unknown)}")
    order: list[str] = []
    while deps:
        ready = sorted(n for n, d in deps.items() if not d - set(order))
        if not ready:
            raise PermanentError(f"role dependencies form a cycle among {sorted(deps)}")
        order.append(ready[0])
        del deps[ready[0]]
    return tuple(order)


def read_secret(assignment: Assignment, name: str) -> bytes:
    """One secret file's bytes as they are (a key may be binary); a missing one is a
    permanent error naming its path."""
    if not name or "/" in name or name.startswith("."):
        raise PermanentError(f"secret name {name!r} is not a plain file name")
    path = assignment.secrets_dir / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"secret {name!r} not found: {path} does not exist") from None


def read_secrets(assignment: Assignment, names: Iterable[str]) -> dict[str, str]:
    """The named secrets as text, without the trailing newline; an empty one is refused."""
    values: dict[str, str] = {}
    for name in names:
        values[name] = read_secret(assignment, name).decode().rstrip("\n")
        if not values[name]:
            path = assignment.secrets_dir / name
            raise PermanentError(f"secret {name!r} is empty: {path}")
    return values


def _ids(owner: str, group: str) -> tuple[int, int]:
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise PermanentError(f"no such user or group: {exc.args[0]}") from None


def apply_rendered(rendered: Rendered) -> Changes:
    """Create the directories and write the files that differ, each atomically (rename).

    Every path is reached without following a link a role's user could have planted
    (`cloudd.providers.rolefiles`): a link where a folder goes is refused (RoleFileRefused),
    and one where a file goes is replaced by the file, never written through. Returns what
    changed so that the caller reloads only the services that need it.
    """
    changed: list[Path] = []
    reload: list[str] = []
    for d in rendered.dirs:
        rolefiles.ensure_folder(d.path, mode=d.mode, owner=_ids(d.owner, d.group))
    for f in rendered.files:
        owner = _ids(f.owner, f.group)
        data = f.content.encode()
        with rolefiles.folder(f.path.parent, create=True) as parent:
            found = rolefiles.look(parent, f.path.name)
            if found.same(data, mode=f.mode, owner=owner):
                continue
            if found.kind is rolefiles.Kind.LINK:
                _log.warning("role_link_refused", path=str(f.path), reason=(
                    "a symbolic link stood where a rendered file goes: replaced by the file, "
                    "not followed"))
            # The mode and owner are set before the content goes in, so a secret is never
            # readable by others, even for an instant; the rename makes readers see old or
            # new, never half.
            durable.write_at(parent, f.path.name, data, mode=f.mode, owner=owner)
        changed.append(f.path)
        reload.extend(s for s in f.reload if s not in reload)
    return Changes(changed=tuple(changed), reload=tuple(reload))


async def run_command(argv: tuple[str, ...], *, within: float | None = None,
                      env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run `argv` to its end: (exit status, output and errors); see `children.run`."""
    return await children.run(argv, within=within, env=env)


def _last_line(out: str, code: int) -> str:
    return out.strip().splitlines()[-1] if out.strip() else f"exit status {code}"


async def _run(argv: tuple[str, ...]) -> tuple[int, str]:
    return await run_command(argv, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


async def missing_packages(names: Iterable[str]) -> tuple[str, ...]:
    """The packages of `names` that dpkg does not list as installed."""
    missing = []
    for name in names:
        code, out = await _run(("dpkg-query", "-W", "-f=${db:Status-Status}", name))
        if code != 0 or out.strip() != "installed":
            missing.append(name)
    return tuple(missing)


async def ensure_packages(names: Iterable[str], *, apt_get: tuple[str, ...] = ("apt-get",),
                          dpkg: tuple[str, ...] = ("dpkg",)) -> tuple[str, ...]:
    """Install with apt the packages not installed yet; returns those it installed.

    Idempotent: when everything is there it runs no apt at all. An install cut short (the
    converge cancelled by a stop, which kills apt's session; the VM's power lost) leaves dpkg
    "interrupted", and apt refuses everything until `dpkg --configure -a` has run: that is run
    here, and the install tried again later.
    """
    missing = await missing_packages(names)
    if not missing:
        return ()
    code, out = await _run((*apt_get, "install", "-y", "--no-install-recommends", *missing))
    if code != 0:
        last = _last_line(out, code)
        if "dpkg was interrupted" in out:
            fixed, said = await _run((*dpkg, "--configure", "-a"))
            raise TemporaryError(
                f"dpkg was interrupted: `dpkg --configure -a` "
                f"{'ran' if fixed == 0 else 'failed: ' + _last_line(said, fixed)}", delay=1.0)
        if "lock" in out.lower():
            raise TemporaryError(f"apt is busy: {last}", delay=10.0)
        raise PermanentError(f"cannot install {', '.join(missing)}: {last}")
    _log.info("provider.packages_installed", packages=list(missing))
    return missing


async def converge(provider: Provider, assignment: Assignment, *,
                   apt_get: tuple[str, ...] = ("apt-get",)) -> Converged:
    """What a node does with its assignment, in order: packages, files, one-time preparation.

    Returns the services for the supervisor; on a later call with changed peers, the caller
    reloads `changes.reload` (a reload, not a restart) on the running supervisor.
    """
    held = roles_of(provider, assignment)
    packages: list[str] = []
    for role, a in held:
        packages += (p for p in role.packages(a) if p not in packages)
    installed = await ensure_packages(packages, apt_get=apt_get)
    changed: list[Path] = []
    reload: list[str] = []
    for role, a in held:
        secrets = read_secrets(a, role.secrets(a))
        done = apply_rendered(role.render(a, secrets))
        changed += done.changed
        reload += (s for s in done.reload if s not in reload)
    changes = Changes(changed=tuple(changed), reload=tuple(reload))
    if changes.changed or installed:
        _log.info("provider.converged", cloud=assignment.cloud, node=assignment.node,
                  role=assignment.role, roles=list(assignment.roles),
                  installed=list(installed), files=[str(p) for p in changes.changed],
                  reload=list(changes.reload))
    for role, a in held:
        await role.prepare(a)
    return Converged(services=node_services(provider, assignment), changes=changes,
                     installed=installed)


def roles_of(provider: Provider, assignment: Assignment) -> tuple[tuple[Role, Assignment], ...]:
    """Each role the node holds, with the assignment as that role sees it, in the type's
    dependency order (the order they are rendered, prepared and started in)."""
    order = provider.role_order
    names = sorted(assignment.roles, key=lambda r: order.index(r) if r in order else len(order))
    return tuple((provider.role(name), assignment.as_role(name)) for name in names)


def node_services(provider: Provider, assignment: Assignment) -> tuple[ServiceSpec, ...]:
    """The services of every role the node holds, for one supervisor: a role's services
    start after those of the roles it depends on that the node holds too (`depends_on`
    across roles); two roles naming the same service are refused."""
    out: list[ServiceSpec] = []
    owner: dict[str, str] = {}
    by_role: dict[str, tuple[str, ...]] = {}
    for role, a in roles_of(provider, assignment):
        specs = role.services(a)
        for spec in specs:
            if spec.name in owner:
                raise PermanentError(
                    f"roles {owner[spec.name]} and {role.name} of node {assignment.node} both "
                    f"run a service named {spec.name!r}; they cannot share a node")
            owner[spec.name] = role.name
        first = tuple(name for dep in role.depends_on for name in by_role.get(dep, ()))
        out += (replace(spec, depends_on=(*spec.depends_on,
                                          *(f for f in first if f not in spec.depends_on)))
                for spec in specs)
        by_role[role.name] = tuple(spec.name for spec in specs)
    return tuple(out)
