"""The `appscale` type's provider: the nodes' side of an AppScale deployment, and the AppScale
tools driven on the master by the leader's hooks.

AppScale's own platform installs and runs its services over SSH from the master (its tools'
`appscale up`), so cloudd's nodes run none of AppScale's services themselves. What each node
does (every role, once per node, by its first role):
- the deployment's sshd host key and drop-in (`sshtrust.node_files`), sshd reloaded when they
  change (the `sshd_reload` setting's command);
- root's authorized_keys line for the master's key, which the leader hands it (`trust`: the
  master's public key, from the master; the private key's seed never leaves the master).
The master also writes the AppScalefile (`appscalefile.render`, 0600, it holds the password)
in its deployment folder, and the tools' key and pinned known_hosts in the tools' home; its
actions start the tools' long runs as detached jobs (`jobs`) and read them, and run
`appscale status --verbose` (bounded below the action's own bound).

The leader's hooks (`configure`, on any role's change, once every node is healthy): trust on
every node, then the deployment: `up` when no run left it up, `respawn` (the tools' `down`
then `up`) when a node went unhealthy since and is back (a respawned VM), nothing while a run
goes on (a TemporaryError: the hook is tried again after its delay). `monitor` reads the
tools' status into findings, one per node by address, and the last run's outcome. `stop`
runs `down` and waits for it, before the domains go.

A node that went unhealthy since the last run is kept in the leader's memory; a new leader
also sees a node AppScale lost in the tools' status (unreported, or absent), and respawns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cloudd import durable, log
from cloudd.config.catalog import GeneratedSecret, LayoutNode
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers import values
from cloudd.providers.appscale import appscalefile, jobs, sshtrust, tools
from cloudd.providers.appscale.spec import ADMIN_ROLE, ROLES, AppScaleSettings, role_secrets
from cloudd.providers.base import (
    ACT_WITHIN,
    Assignment,
    ClusterView,
    DirSpec,
    FileSpec,
    Finding,
    Peer,
    Pending,
    Provider,
    Rendered,
    Role,
    read_secret,
    run_command,
)

_log = log.get("providers.appscale")

#: Seconds `appscale status` may take inside the master's action (which has ACT_WITHIN).
STATUS_WITHIN = ACT_WITHIN - 2.0
#: Seconds between two looks at a run of the tools under way (the hook's retry delay).
POLL = 10.0


def seed(a: Assignment, secret: GeneratedSecret) -> bytes:
    """A generated seed's random bytes, from its file."""
    return secret.random_bytes(read_secret(a, secret.name))


def settings_of(raw: Mapping[str, Any]) -> AppScaleSettings:
    return values.settings(AppScaleSettings, raw, kind="appscale")


def tools_settings(a: Assignment, *, status: bool = False) -> tools.ToolsSettings:
    """How the master runs the tools: its deployment folder and the tools' home in its role
    folder, the executable the settings name, the node's namespaces (tests) before it."""
    s = settings_of(a.settings)
    return tools.ToolsSettings(appscale=Path(s.tools), folder=a.root / "deployment",
                               home=a.root / "home", prefix=a.exec_prefix,
                               status_within=STATUS_WITHIN if status else 120.0)


class AppScaleRole(Role):
    """One role of AppScale's ips_layout. The node's files come from its first role; the
    master's from the master role."""

    actions = {"trust": ("public", "master")}

    def __init__(self, name: str) -> None:
        self.name = name

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return role_secrets(settings_of(a.settings), a.role)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        files: list[FileSpec] = []
        dirs: list[DirSpec] = []
        host = sshtrust.HOST_SEED.random_bytes(secrets[sshtrust.HOST_SEED.name].encode())
        if a.role == a.roles[0]:
            files += (FileSpec(Path(f.path), f.text, f.mode)
                      for f in sshtrust.node_files(host, cloud=a.cloud))
        if a.role == ADMIN_ROLE:
            s = settings_of(a.settings)
            home = a.root / "home"
            dirs += [DirSpec(a.root / "deployment", 0o700), DirSpec(home, 0o700),
                     DirSpec(home / ".appscale", 0o700),
                     DirSpec(Path(sshtrust.wrappers_dir(PurePosixPath(home))), 0o700)]
            nodes = _deployment(a)
            text = appscalefile.render(
                [LayoutNode(str(p.address), p.roles or (p.role,)) for p in nodes], s,
                password=secrets[s.admin_password_ref].encode())
            files.append(FileSpec(a.root / "deployment" / appscalefile.NAME, text, 0o600))
            client = sshtrust.CLIENT_SEED.random_bytes(
                secrets[sshtrust.CLIENT_SEED.name].encode())
            files += (FileSpec(Path(f.path), f.text, f.mode) for f in sshtrust.master_files(
                client, host, cloud=a.cloud, keyname=s.keyname, home=PurePosixPath(home),
                nodes=[sshtrust.TrustNode(str(p.address), p.node) for p in nodes]))
            files += (FileSpec(Path(f.path), f.text, f.mode) for f in sshtrust.tools_wrappers(
                home=PurePosixPath(home), keyname=s.keyname))
        return Rendered(dirs=tuple(dirs), files=tuple(files))

    async def prepare(self, a: Assignment) -> None:
        """sshd reloaded once its host key or drop-in changed (a stamp of them in the role
        folder); a failed reload is said and tried again at the next converge."""
        if a.role != a.roles[0]:
            return
        files = sshtrust.node_files(seed(a, sshtrust.HOST_SEED), cloud=a.cloud)
        stamp = hashlib.sha256("".join(f.text for f in files).encode()).hexdigest()
        mark = a.root / "sshd.stamp"
        if mark.exists() and mark.read_text() == stamp:
            return
        argv = (*a.exec_prefix, *settings_of(a.settings).sshd_reload)
        code, out = await run_command(argv, within=ACT_WITHIN)
        if code != 0:
            _log.warning("appscale_sshd_reload_failed", cloud=a.cloud, node=a.node, code=code,
                         reason=out.strip()[-200:])
            return
        a.root.mkdir(parents=True, exist_ok=True)
        durable.write_durable(mark, stamp, mode=0o600)

    async def act(self, a: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        handler = self.handlers().get(action)
        if handler is None:
            raise PermanentError(f"role {self.name} has no action {action!r}")
        return await handler(a, args)

    def handlers(self) -> Mapping[str, Handler]:
        return {"trust": trust}


Handler = Callable[[Assignment, Mapping[str, str]], Awaitable[Mapping[str, str]]]


async def trust(a: Assignment, args: Mapping[str, str]) -> Mapping[str, str]:
    """Root's authorized_keys gets the master's key, usable from the master's address only:
    refused unless the line is this deployment's client key (its comment) and the address is
    the master this node's assignment names, so that nothing else can be slipped in nor an
    operator's key of another comment be replaced."""
    masters = [p for p in _deployment(a) if p.holds(ADMIN_ROLE)]
    if not masters or args["master"] != str(masters[0].address):
        raise PermanentError(f"{args['master']!r} is not the master of {a.cloud}")
    if args["public"].rsplit(" ", 1)[-1] != sshtrust.client_comment(a.cloud):
        raise PermanentError(f"the key is not {a.cloud}'s client key (its comment differs)")
    try:
        line = sshtrust.authorized_keys_line(args["public"], master=args["master"])
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    changed = await asyncio.to_thread(_trust, Path(sshtrust.AUTHORIZED_KEYS_PATH), line)
    return {"changed": str(changed).lower()}


def _trust(path: Path, line: str) -> bool:
    """Root's authorized_keys with the master's line merged in; whether it changed."""
    old = path.read_text() if path.exists() else ""
    new = sshtrust.merge_authorized_keys(old, line)
    if new != old:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        durable.write_durable(path, new, mode=0o600)
    return new != old


class MasterRole(AppScaleRole):
    """The master: the AppScalefile, the tools' key, and the tools' runs."""

    actions = {"trust": ("public", "master"), "pubkey": (), "start": ("verb",),
               "result": (), "status": ()}

    def handlers(self) -> Mapping[str, Handler]:
        return {"trust": trust, "pubkey": pubkey, "start": start, "result": result,
                "status": status}


async def pubkey(a: Assignment, args: Mapping[str, str]) -> Mapping[str, str]:
    client = sshtrust.client_key(seed(a, sshtrust.CLIENT_SEED), cloud=a.cloud)
    return {"public": client.public_line}


async def start(a: Assignment, args: Mapping[str, str]) -> Mapping[str, str]:
    return (await asyncio.to_thread(_start, a, args["verb"])).pairs()


async def result(a: Assignment, args: Mapping[str, str]) -> Mapping[str, str]:
    return (await asyncio.to_thread(jobs.read, a.root / "deployment")).pairs()


async def status(a: Assignment, args: Mapping[str, str]) -> Mapping[str, str]:
    """`appscale status --verbose`, within the action's bound: one pair per node."""
    report = await tools.status(tools_settings(a, status=True))
    out = {"summary": report.summary.value}
    for fact in report.nodes:
        out[f"node {fact.address}"] = f"{fact.state.value} {','.join(fact.roles)}"
    return out


#: What each run of the tools is: the commands of `tools`, and whether it needs the
#: AppScalefile ready (an `up` would prompt without it).
_RUNS: Mapping[jobs.Run, tuple[Callable[[tools.ToolsSettings], tuple[tools.ToolsCommand, ...]],
                               bool]] = {
    jobs.Run.UP: (lambda s: (tools.plan(tools.Verb.UP, s),), True),
    jobs.Run.DOWN: (lambda s: (tools.plan(tools.Verb.DOWN, s),), False),
    jobs.Run.RESPAWN: (tools.respawn_plan, True),
}


def _start(a: Assignment, verb: str) -> jobs.JobView:
    try:
        which = jobs.Run(verb)
    except ValueError:
        raise PermanentError(f"no AppScale run {verb!r} (runs: up, down, respawn)") from None
    settings = tools_settings(a)
    plan, needs_file = _RUNS[which]
    (tools.ready if needs_file else lambda s: tools.check_executable(s.appscale))(settings)
    view = jobs.start(settings.folder, which, plan(settings), env=tools.environment(settings))
    _log.info("appscale_run_started", cloud=a.cloud, node=a.node, verb=view.verb,
              state=view.state.value)
    return view


def _deployment(a: Assignment) -> tuple[Peer, ...]:
    """Every node of the deployment (this one and its peers), once each."""
    me = Peer(a.node, a.role, a.address, True, a.roles)
    return (me, *(p for p in a.peers if p.node != a.node))


def next_run(view: jobs.JobView, *, back: bool) -> str | None:
    """What the deployment needs, from the master's last run and whether a node went away and
    came back since that run started: `up`, `respawn`, or nothing (None). A run under way is
    the caller's to wait for."""
    if not view.deployed:
        return "up"
    return "respawn" if back else None


#: Characters of the master's words (a node: a tenant's VM) the leader repeats in a finding or
#: an error: they reach inspect and the event log.
SAID = 200


def rows(answer: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The master's `status` answer as address -> (AppScale's state, the row as said), each
    bounded: the answer is a node's, and goes into findings."""
    return {key.removeprefix("node ")[:64]: (value.split(" ", 1)[0][:32], value[:SAID])
            for key, value in answer.items() if key.startswith("node ")}


def forgotten(answer: Mapping[str, str] | None, addresses: list[str]) -> bool:
    """Whether the master's `status` answer shows a node of the deployment that AppScale lost:
    a row it could not fill (`unreported`: a VM respawned with nothing of AppScale on it) or
    no row at all. Level-triggered: a new leader sees it too. None (no answer): unknown, no."""
    if answer is None:
        return False
    states = {address: state for address, (state, _) in rows(answer).items()}
    return any(states.get(a, tools.NodeState.UNREPORTED.value)
               == tools.NodeState.UNREPORTED.value for a in addresses)


async def _status(cluster: ClusterView, master: Peer) -> Mapping[str, str] | None:
    try:
        return await cluster.ask(master.node, "status", {})
    except ClouddError:
        return None


class AppScaleProvider(Provider):
    cloud_type = "appscale"
    roles = {r.name: (MasterRole(r.name) if r.name == ADMIN_ROLE else AppScaleRole(r.name))
             for r in ROLES}
    #: `appscale down` may take 600 s (tools.ToolsSettings.down_within), then a margin
    stop_within = 660.0

    def __init__(self) -> None:
        #: cloud -> nodes seen unhealthy since the last run of the tools started
        self._lost: dict[str, set[str]] = {}

    @property
    def role_order(self) -> tuple[str, ...]:
        """AppScale's order (spec.ROLES): storage and coordination, the master, the services,
        the app servers, the balancers, spare nodes."""
        return tuple(r.name for r in ROLES)

    async def configure(self, cluster: ClusterView, role: str) -> None:
        """The deployment as a whole, whichever role's change calls it (a role's configure is
        called again only when that role's nodes change: each must be able to drive it; the
        first to start a run makes the others wait for it)."""
        self.role(role)
        nodes = _nodes(cluster)
        lost = self._lost.setdefault(cluster.cloud, set())
        sick = sorted(n.node for n in nodes.values() if not n.healthy)
        lost.update(sick)
        if sick:
            return  # called again when their health changes
        master = _master(cluster)
        public = (await cluster.ask(master.node, "pubkey", {}))["public"]
        for name in nodes:
            await cluster.ask(name, "trust", {"public": public, "master": str(master.address)})
        view = _view(await cluster.ask(master.node, "result", {}))
        if view.state is jobs.JobState.RUNNING:
            raise Pending(f"appscale {view.verb} runs on {master.node}", delay=POLL)
        back = bool(lost) or (view.deployed and forgotten(
            await _status(cluster, master), [str(p.address) for p in nodes.values()]))
        verb = next_run(view, back=back)
        if verb is None:
            return
        if view.state in (jobs.JobState.FAILED, jobs.JobState.LOST):
            _log.warning("appscale_run_failed", cloud=cluster.cloud, verb=view.verb,
                         reason=view.message)
        started = _view(await cluster.ask(master.node, "start", {"verb": verb}))
        why = f" (back: {', '.join(sorted(lost))})" if verb == "respawn" else ""
        lost.clear()
        raise Pending(f"appscale {started.verb} started on {master.node}{why}", delay=POLL)

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        masters = [p for p in cluster.of(ADMIN_ROLE) if p.healthy]
        if not masters:
            return (Finding("appscale", False, "no healthy master to ask"),)
        master = masters[0]
        view = _view(await cluster.ask(master.node, "result", {}))
        found = [Finding("appscale-run", view.state is not jobs.JobState.FAILED,
                         f"appscale {view.verb or 'up'}: {view.state.value}"
                         + (f": {view.message[:SAID]}" if view.message else ""),
                         node=master.node)]
        if not view.deployed:
            return tuple(found)
        try:
            answer = await cluster.ask(master.node, "status", {})
        except ClouddError as exc:
            return (*found, Finding("appscale", False, f"appscale status failed: {exc}",
                                    node=master.node))
        by_address = {str(p.address): p.node for p in _nodes(cluster).values()}
        for address, (state, said) in sorted(rows(answer).items()):
            if address in by_address:  # a row for no node of the deployment says nothing
                found.append(Finding("appscale", state == tools.NodeState.LOADED.value,
                                     f"AppScale says {said}", node=by_address[address],
                                     state=state))
        return tuple(found)

    async def stop(self, cluster: ClusterView) -> None:
        master = _master(cluster)
        view = _view(await cluster.ask(master.node, "result", {}))
        if view.state is jobs.JobState.RUNNING:
            raise Pending(f"appscale {view.verb} runs on {master.node}", delay=POLL)
        if view.state is jobs.JobState.NONE or (view.verb == jobs.Run.DOWN
                                                and view.state is jobs.JobState.DONE):
            return
        await cluster.ask(master.node, "start", {"verb": "down"})
        raise Pending(f"appscale down started on {master.node}", delay=POLL)


def _nodes(cluster: ClusterView) -> dict[str, Peer]:
    """Each node of the cluster once (a node of several roles is listed per role)."""
    out: dict[str, Peer] = {}
    for p in cluster.nodes:
        out.setdefault(p.node, p)
    return out


def _master(cluster: ClusterView) -> Peer:
    masters = cluster.of(ADMIN_ROLE)
    if not masters or not masters[0].healthy:
        raise TemporaryError("the AppScale master is not healthy yet", delay=POLL)
    return masters[0]


def _view(pairs: Mapping[str, str]) -> jobs.JobView:
    """The master's answer about its run, as the leader reads it (its words bounded)."""
    verb = pairs.get("verb", "")
    try:
        if verb:
            jobs.Run(verb)  # one of the runs, or no answer of the master's own
        return jobs.JobView(verb, jobs.JobState(pairs.get("state", "")),
                            pairs.get("message", "")[:SAID])
    except ValueError:
        raise TemporaryError("the master answered no run state: "
                             f"{str(dict(pairs))[:SAID]}") from None


PROVIDER = AppScaleProvider()
