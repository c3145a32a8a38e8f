"""The `torque` cloud type: TORQUE 6.1.3.h5, built from its source, on real daemons.

Roles, in dependency order:
- `head`: trqauthd, pbs_server and pbs_sched, started in that order. Its server database is
  created once, in `prepare` (`pbs_server -t create`); the server's settings (the default
  queue, scheduling) are applied by its `setup` action, which the leader asks for once the
  head is healthy. Its other actions are the leader's hands on the scheduler: `nodes`
  (`pbsnodes -x`), `queue` (`qstat -x`, the waiting jobs summed: `queue.py`), `create_node`,
  `delete_node` (qmgr), `cycle_node` (`momctl -C`), `drain_node` (`pbsnodes -o` with one of
  cloudd's notes: an elastic role's node leaves, or a node moves off a drained host, once
  its jobs end) and `resume_node` (`pbsnodes -c`, only of a node cloudd drained so).
- `compute`: trqauthd and pbs_mom, whose `$pbsserver` is the head.

Every daemon runs in the foreground under the node's supervisor (`-F`; pbs_sched, which has
no such flag, stays in the foreground with `PBSDEBUG` set) with the node's own PBS_HOME
(`-d`, see `layout`), so several nodes share one machine in tests.

The leader's hooks: `configure("head")` applies the server's settings, `configure("compute")`
makes pbs_server's node list the cloud's compute nodes (created when they appear, deleted
when they leave), and `monitor` reports pbs_server's view of each compute node and nudges
the pbs_mom of a node TORQUE shows `down` while its agent is healthy (`nodes.judge`), and
the jobs waiting in its queues, summed, for the whole cloud. `demand`, `release` and `keep`
(compute may be elastic): the jobs waiting for nodes and each compute node's use, read from
the head, and the drain of an idle node to leave, or its undoing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from cloudd import log
from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers import batchqueue, values
from cloudd.providers.base import (
    RELEASE_NOTES,
    Assignment,
    ClusterView,
    Demand,
    Finding,
    Peer,
    Provider,
    Release,
    Rendered,
    Role,
)
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.torque import layout, nodes, programs, queue
from cloudd.providers.torque.layout import Home, head_of, program, torque_settings

__all__ = ["PROVIDER", "TorqueProvider"]
_log = log.get("providers.torque")


def _tcp(a: Assignment, port: int) -> ProbeSpec:
    return ProbeSpec(kind=ProbeKind.TCP, host=str(a.address), port=port, period=2.0,
                     timeout=2.0)


def _trqauthd(a: Assignment, home: Home, head: str) -> ServiceSpec:
    # Clients authenticate through trqauthd's socket: ready once the socket is there.
    socket = ProbeSpec(kind=ProbeKind.EXEC, period=2.0, timeout=5.0,
                       argv=(*a.exec_prefix, "test", "-S", layout.TRQAUTHD_SOCKET))
    return ServiceSpec(
        name="trqauthd",
        argv=(*a.exec_prefix, program("sbin", "trqauthd"), "-F",
              f"--logfile_dir={home.home / 'client_logs'}"),
        env=layout.environment(head), readiness=socket,
        log_path=str(home.log / "trqauthd.out"))


class TorqueHeadRole(Role):
    name = "head"
    actions: Mapping[str, tuple[str, ...]] = {
        "setup": (), "nodes": (), "queue": (), "create_node": ("name", "np"),
        "delete_node": ("name",), "cycle_node": ("name",), "drain_node": ("name", "why"),
        "resume_node": ("name",)}

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        return layout.render_head(a)

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        s = torque_settings(a.settings)
        home = layout.home_of(a, "the head's command lines")
        head = head_of(a, "the head's command lines")
        d = ("-d", str(home.home))
        server = ServiceSpec(
            name="pbs_server",
            argv=(*a.exec_prefix, program("sbin", "pbs_server"), "-F", *d, "-H", head),
            env=layout.environment(head), depends_on=("trqauthd",),
            liveness=_tcp(a, layout.SERVER_PORT), readiness=_tcp(a, layout.SERVER_PORT),
            stop_grace=30.0, log_path=str(home.log / "pbs_server.out"))
        sched = ServiceSpec(
            name="pbs_sched",
            argv=(*a.exec_prefix, program("sbin", "pbs_sched"), *d),
            env=(*layout.environment(head), ("PBSDEBUG", "1")), depends_on=("pbs_server",),
            readiness=_tcp(a, layout.SCHED_PORT), log_path=str(home.log / "pbs_sched.out"))
        return (_trqauthd(a, home, head), server, *((sched,) if s.scheduler else ()))

    async def prepare(self, a: Assignment) -> None:
        programs.installed()
        home = layout.home_of(a, "the head's PBS_HOME")
        programs.seed_home(layout.PREFIX / "spool", home.home)
        await programs.create_server_db(a, home)

    async def act(self, a: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        handler = _HEAD_ACTIONS.get(action)
        if handler is None:
            return await super().act(a, action, args)
        return await handler(a, head_of(a, f"the {action} action"), args)


async def _pbsnodes(a: Assignment, head: str) -> tuple[nodes.TorqueNode, ...]:
    code, out = await programs.run(a, head, (program("bin", "pbsnodes"), "-x"))
    if code != 0:
        # pbs_server with no node at all says so instead of printing an empty list.
        if "node list is empty" in out or "Server has no node list" in out:
            return ()
        last = out.splitlines()[-1] if out else f"exit status {code}"
        raise TemporaryError(f"pbsnodes -x failed on {a.node}: {last}", delay=5.0)
    return nodes.parse_pbsnodes(out)


def _name(args: Mapping[str, str], action: str) -> str:
    return values.label(args.get("name"), what="node name", target=f"the {action} action")


async def _nodes(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    return nodes.encode(await _pbsnodes(a, head))


async def _setup(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    s = torque_settings(a.settings)
    printed = await programs.client(a, head, "qmgr", "-c", "print server")
    queues = tuple(line.split()[2] for line in printed.splitlines()
                   if line.startswith("create queue ") and len(line.split()) > 2)
    # One qmgr for every command (read from its input; -a: stop at the first that fails):
    # each qmgr started costs a guest under TCG the better part of a second, and the whole
    # action has ACT_WITHIN (8 s).
    commands = layout.server_setup(s, queues=queues)
    await programs.client(a, head, "qmgr", "-a", stdin="".join(f"{c}\n" for c in commands))
    return {"queue": s.queue}


async def _view(a: Assignment, head: str, name: str) -> nodes.TorqueNode | None:
    return next((n for n in await _pbsnodes(a, head) if n.name == name), None)


async def _create_node(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    name, np = _name(args, "create_node"), args.get("np", "")
    if not np.isdigit() or not 1 <= int(np) <= 4096:
        raise PermanentError(f"create_node: np {np[:20]!r} is not a count of slots")
    done = nodes.on_create(await _view(a, head, name))
    if done is nodes.OnCreate.CREATE:
        await programs.client(a, head, "qmgr", "-c", f"create node {name} np={np}")
    elif done is nodes.OnCreate.RESUME:
        await programs.client(a, head, "pbsnodes", "-c", "-N", "", name)
    return {"node": name, "done": done.value}


async def _delete_node(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    name = _name(args, "delete_node")
    view = await _view(a, head, name)
    done = nodes.on_delete(view)
    if done is nodes.OnDelete.DELETE:
        await programs.client(a, head, "qmgr", "-c", f"delete node {name}")
    elif done is nodes.OnDelete.DRAIN:
        await programs.client(a, head, "pbsnodes", "-o", "-N", nodes.DRAIN_NOTE, name)
    return {"node": name, "done": done.value, "jobs": str(len(view.jobs) if view else 0)}


async def _queue(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    return batchqueue.encode(queue.parse_qstat_x(await programs.client(a, head, "qstat", "-x")))


async def _cycle_node(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    name = _name(args, "cycle_node")
    await programs.client(a, head, "momctl", "-h", name, "-C", kind="sbin")
    return {"node": name}


async def _drain_node(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    """No new job on the node, its jobs finish: offline with cloudd's note for `why` (an
    elastic role's node leaving, a node moving off a drained host), so that the leader knows
    the drain for its own, and why. A node an operator set offline keeps its own note."""
    name = _name(args, "drain_node")
    try:
        why = Release(args.get("why", ""))
    except ValueError:
        raise PermanentError(f"drain_node: why {str(args.get('why'))[:20]!r} is not one of "
                             f"{', '.join(r.value for r in Release)}") from None
    view = await _view(a, head, name)
    if view is None:
        raise TemporaryError(f"drain_node: {name} is not registered with pbs_server", delay=5.0)
    ours = view.leaving or view.moving
    if "offline" in view.states and not ours:
        raise PermanentError(f"drain_node: {name} is offline by its operator's word "
                             f"(note {view.note[:60]!r}): left as it is")
    if view.note != RELEASE_NOTES[why] or "offline" not in view.states:
        await programs.client(a, head, "pbsnodes", "-o", "-N", RELEASE_NOTES[why], name)
    return {"node": name, "state": "draining"}


async def _resume_node(a: Assignment, head: str, args: Mapping[str, str]) -> Mapping[str, str]:
    """Undo `drain_node`: online again, the note cleared; only a node cloudd drained so."""
    name = _name(args, "resume_node")
    view = await _view(a, head, name)
    if view is None:
        raise TemporaryError(f"resume_node: {name} is not registered with pbs_server",
                             delay=5.0)
    if "offline" in view.states and not (view.leaving or view.moving):
        raise PermanentError(f"resume_node: {name} is offline by its operator's word "
                             f"(note {view.note[:60]!r}): left as it is")
    if "offline" in view.states:
        await programs.client(a, head, "pbsnodes", "-c", "-N", "", name)
    return {"node": name, "state": "resumed"}


_Handler = Callable[[Assignment, str, Mapping[str, str]], Awaitable[Mapping[str, str]]]
#: The head's actions (`TorqueHeadRole.actions` names their arguments; the node checks them first).
_HEAD_ACTIONS: Mapping[str, _Handler] = {
    "setup": _setup, "nodes": _nodes, "queue": _queue, "create_node": _create_node,
    "delete_node": _delete_node, "cycle_node": _cycle_node, "drain_node": _drain_node,
    "resume_node": _resume_node}


class TorqueComputeRole(Role):
    name = "compute"
    depends_on = ("head",)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        return layout.render_compute(a)

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        home = layout.home_of(a, "pbs_mom's command line")
        head = head_of(a, "pbs_mom's command line")
        node = values.label(a.node, what="node name", target="pbs_mom's command line")
        mom = ServiceSpec(
            name="pbs_mom",
            argv=(*a.exec_prefix, program("sbin", "pbs_mom"), "-F", "-d", str(home.home),
                  "-H", node),
            env=layout.environment(head), depends_on=("trqauthd",),
            liveness=_tcp(a, layout.MOM_MANAGER_PORT),
            readiness=_tcp(a, layout.MOM_MANAGER_PORT),
            # pbs_mom re-reads mom_priv/config on SIGHUP (a new head, new shared folders).
            reload_argv=(), stop_grace=30.0, log_path=str(home.log / "pbs_mom.out"))
        return (_trqauthd(a, home, head), mom)

    async def prepare(self, a: Assignment) -> None:
        programs.installed()
        programs.seed_home(layout.PREFIX / "spool", layout.home_of(a, "PBS_HOME").home)


def _head(cluster: ClusterView) -> Peer:
    heads = [p for p in cluster.of("head") if p.healthy]
    if not heads:
        raise TemporaryError(f"cloud {cluster.cloud} has no healthy TORQUE head", delay=5.0)
    return heads[0]


class TorqueProvider(Provider):
    cloud_type = "torque"
    roles: Mapping[str, Role] = {r.name: r for r in (TorqueHeadRole(), TorqueComputeRole())}

    async def configure(self, cluster: ClusterView, role: str) -> None:
        head = _head(cluster)
        if self.role(role).name == "head":
            await cluster.ask(head.node, "setup", {})
            return
        np = layout.node_np(torque_settings(cluster.settings))
        registered = nodes.decode(await cluster.ask(head.node, "nodes", {}))
        plan = nodes.registration({p.node: np for p in cluster.of("compute")}, registered)
        for name, slots in plan.create:
            await cluster.ask(head.node, "create_node", {"name": name, "np": str(slots)})
            _log.info("torque.node_created", cloud=cluster.cloud, node=name, np=slots)
        draining = []
        for name in plan.delete:
            answer = await cluster.ask(head.node, "delete_node", {"name": name})
            if answer.get("done") == nodes.OnDelete.DRAIN:
                draining.append(f"{name} ({answer.get('jobs', '?')} job(s))")
            else:
                _log.info("torque.node_deleted", cloud=cluster.cloud, node=name)
        if draining:
            # Deleted on a later try, once TORQUE shows no job on them any more.
            raise TemporaryError(f"offline in TORQUE until their jobs end, then deleted: "
                                 f"{', '.join(draining)}", delay=30.0)

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        try:
            head = _head(cluster)
            registered = nodes.decode(await cluster.ask(head.node, "nodes", {}))
        except ClouddError as exc:
            return (Finding(nodes.CHECK, False, f"no view from pbs_server: {exc}"),)
        verdict = nodes.judge(cluster.of("compute"), registered)
        for name in verdict.nudge:
            try:
                await cluster.ask(head.node, "cycle_node", {"name": name})
            except ClouddError as exc:
                _log.warning("torque.nudge_failed", cloud=cluster.cloud, node=name,
                             reason=str(exc))
        try:
            waiting = batchqueue.finding(batchqueue.decode(
                await cluster.ask(head.node, "queue", {})))
        except ClouddError as exc:
            waiting = batchqueue.unreadable("pbs_server", str(exc))
        return (*verdict.findings, waiting)

    async def demand(self, cluster: ClusterView, role: str) -> Demand:
        """`compute`, elastic: the jobs waiting for nodes and each compute node's use."""
        if self.role(role).name != "compute":
            return await super().demand(cluster, role)
        head = _head(cluster)
        try:
            registered = nodes.decode(await cluster.ask(head.node, "nodes", {}))
            waiting = batchqueue.decode(await cluster.ask(head.node, "queue", {}))
        except ClouddError as exc:
            raise TemporaryError(f"no queue or node list from pbs_server on {head.node}: "
                                 f"{exc}", delay=5.0) from None
        return batchqueue.demand(waiting, {p.node: nodes.use_of(registered.get(p.node))
                                           for p in cluster.of(role)})

    async def release(self, cluster: ClusterView, role: str, node: str,
                      why: Release = Release.LEAVE) -> None:
        if self.role(role).name != "compute":
            await super().release(cluster, role, node, why)
        await self._ask(cluster, "drain_node", node, why=why.value)

    async def keep(self, cluster: ClusterView, role: str, node: str) -> None:
        if self.role(role).name != "compute":
            await super().keep(cluster, role, node)
        await self._ask(cluster, "resume_node", node)

    async def _ask(self, cluster: ClusterView, action: str, node: str, **more: str) -> None:
        head = _head(cluster)
        try:
            await cluster.ask(head.node, action, {"name": node, **more})
        except ClouddError as exc:
            raise TemporaryError(f"{action} {node} on {head.node}: {exc}", delay=5.0) from None


PROVIDER = TorqueProvider()
