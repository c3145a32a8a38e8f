"""The Slurm roles: munged on every node, slurmctld on the head, slurmd on the computes.

Each node writes slurm.conf (`conf.py`) and its folders below its root, installs the munge
key from its secrets, and runs its daemons in the foreground under the node's supervisor:
munged (dropped to the munge user), then slurmctld (which drops to SlurmUser itself) or
slurmd as a dynamic node (`-Z`, named by `-N` after the cloud's node, so that it registers
with the controller as that node with the CPUs and memory it has). A changed slurm.conf
reaches the running daemon by SIGHUP, not a restart.

The munge key is a binary file (munge's `mungekey` writes 1024 random bytes, and so does the
leader when it makes one): `prepare` copies it byte for byte from the node's secrets into
`munge/munge.key` (munge's, 0400), never through text. A key that changes while munged runs
reaches munged when it next starts.

The head answers the leader's actions (`HeadRole.act`): `nodes` (the scheduler's view,
`sched.py`), `queue` (the jobs that wait, summed), `resume_node`, `drain_node` (with cloudd's
reason: an elastic role's node leaving, or a node moving off a drained host) and
`delete_node`, each one
`scontrol`/`sinfo`/`squeue` run in the node (through its exec prefix) with a bound on its time.
`resume_node` and `drain_node` read the node again first: a drain an operator set since the
leader's reading is neither undone nor given cloudd's reason.
"""

from __future__ import annotations

import asyncio
import pwd
from collections.abc import Awaitable, Callable, Mapping

from cloudd import children, durable
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers import batchqueue, rolefiles, values
from cloudd.providers.base import (
    ACT_WITHIN,
    RELEASE_NOTES,
    Assignment,
    DirSpec,
    FileSpec,
    Release,
    Rendered,
    Role,
    read_secret,
)
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.slurm import sched
from cloudd.providers.slurm.conf import (
    MUNGE_KEY_MIN,
    MUNGE_USER,
    SLURM_USER,
    SlurmctldHost,
    SlurmPaths,
    render_conf,
    slurm_settings,
)
from cloudd.providers.slurm.spec import munge_key_name

#: Seconds the Slurm commands of one action may take together: below the node's own bound
#: on an action, so that the leader hears this node's sentence rather than a timeout.
ACTION_WITHIN = ACT_WITHIN - 1.0
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _probe(argv: tuple[str, ...], *, period: float) -> ProbeSpec:
    return ProbeSpec(kind=ProbeKind.EXEC, argv=argv, period=period, timeout=5.0)


class SlurmRole(Role):
    """What the head and the compute nodes share: munge, slurm.conf and their folders."""

    #: The Slurm daemon of the role, and its package.
    daemon = ""

    def packages(self, a: Assignment) -> tuple[str, ...]:
        return ("munge", "slurm-client", self.daemon)

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        # The munge key is binary: `prepare` copies its bytes; it is never read as text.
        return ()

    def controller(self, a: Assignment) -> SlurmctldHost:
        raise NotImplementedError

    def own_dirs(self, paths: SlurmPaths) -> tuple[DirSpec, ...]:
        return ()

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        paths = SlurmPaths.of(a.root)
        conf = render_conf(cloud=a.cloud, settings=slurm_settings(a.settings),
                           controller=self.controller(a), paths=paths)
        dirs = (DirSpec(paths.root), DirSpec(paths.log),
                DirSpec(paths.munge, 0o700, MUNGE_USER, MUNGE_USER), DirSpec(paths.run),
                DirSpec(paths.munge_run, 0o755, MUNGE_USER, MUNGE_USER),
                DirSpec(paths.slurm),
                # root's alone: the pid files are read by root (conf.SlurmPaths.slurm_run)
                DirSpec(paths.slurm_run),
                *self.own_dirs(paths))
        return Rendered(dirs=dirs, files=(FileSpec(paths.conf, conf, reload=(self.daemon,)),))

    def munged(self, a: Assignment, paths: SlurmPaths) -> ServiceSpec:
        ping = (*a.exec_prefix, "munge", "--no-input", f"--socket={paths.munge_socket}")
        return ServiceSpec(
            name="munged",
            argv=(*a.exec_prefix, "setpriv", f"--reuid={MUNGE_USER}", f"--regid={MUNGE_USER}",
                  "--init-groups", "munged", "--foreground",
                  f"--key-file={paths.munge_key}", f"--socket={paths.munge_socket}",
                  f"--pid-file={paths.munge / 'munged.pid'}",
                  f"--seed-file={paths.munge / 'munged.seed'}",
                  f"--log-file={paths.munge / 'munged.log'}"),
            liveness=_probe(ping, period=5.0), readiness=_probe(ping, period=1.0),
            log_path=str(paths.log / "munged.out"))

    def scontrol(self, a: Assignment, paths: SlurmPaths, *args: str) -> tuple[str, ...]:
        return (*a.exec_prefix, "env", f"SLURM_CONF={paths.conf}", "scontrol", *args)

    async def prepare(self, a: Assignment) -> None:
        """Install the munge key from the node's secrets (idempotent)."""
        name = munge_key_name(slurm_settings(a.settings))
        key = read_secret(a, name)
        if len(key) < MUNGE_KEY_MIN:
            raise PermanentError(f"munge key secret {name!r} holds {len(key)} bytes; munged "
                                 f"needs at least {MUNGE_KEY_MIN}")
        pw = pwd.getpwnam(MUNGE_USER)
        owner = (pw.pw_uid, pw.pw_gid)
        paths = SlurmPaths.of(a.root)
        with rolefiles.folder(paths.munge) as parent:
            if not rolefiles.look(parent, paths.munge_key.name).same(key, mode=0o400,
                                                                      owner=owner):
                durable.write_at(parent, paths.munge_key.name, key, mode=0o400, owner=owner)


class HeadRole(SlurmRole):
    name = "head"
    daemon = "slurmctld"
    actions: Mapping[str, tuple[str, ...]] = {
        "nodes": (), "queue": (), "resume_node": ("node",), "drain_node": ("node", "why"),
        "delete_node": ("node",)}

    def controller(self, a: Assignment) -> SlurmctldHost:
        return SlurmctldHost.of(a.node, a.address)

    def own_dirs(self, paths: SlurmPaths) -> tuple[DirSpec, ...]:
        return (DirSpec(paths.state, 0o700, SLURM_USER, SLURM_USER),)

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        paths = SlurmPaths.of(a.root, target="slurmctld's command line")
        ping = self.scontrol(a, paths, "ping")
        return (self.munged(a, paths), ServiceSpec(
            name="slurmctld", argv=(*a.exec_prefix, "slurmctld", "-D", "-f", str(paths.conf)),
            depends_on=("munged",), liveness=_probe(ping, period=5.0),
            readiness=_probe(ping, period=2.0), reload_argv=(),  # SIGHUP: re-read slurm.conf
            log_path=str(paths.log / "slurmctld.out")))

    async def act(self, assignment: Assignment, action: str,
                  args: Mapping[str, str]) -> Mapping[str, str]:
        acts: dict[str, Callable[[Assignment, Mapping[str, str], float],
                                 Awaitable[Mapping[str, str]]]] = {
            "nodes": self._nodes, "queue": self._queue, "resume_node": self._resume,
            "drain_node": self._drain, "delete_node": self._delete}
        if action not in acts:
            return await super().act(assignment, action, args)
        deadline = asyncio.get_running_loop().time() + ACTION_WITHIN
        return await acts[action](assignment, args, deadline)

    async def _nodes(self, a: Assignment, args: Mapping[str, str],
                     deadline: float) -> Mapping[str, str]:
        try:
            async with asyncio.TaskGroup() as both:
                sinfo = both.create_task(self._checked(
                    a, deadline, "sinfo", "-h", "-N", "-o", sched.SINFO_FORMAT))
                squeue = both.create_task(self._checked(
                    a, deadline, "squeue", "-h", "-t", "RUNNING,COMPLETING",
                    "-o", sched.SQUEUE_FORMAT))
        except ExceptionGroup as failed:  # the other command was cancelled, hence killed
            raise failed.exceptions[0] from None
        return sched.encode(sched.view(sinfo.result(), squeue.result()))

    async def _queue(self, a: Assignment, args: Mapping[str, str],
                     deadline: float) -> Mapping[str, str]:
        pending = await self._checked(a, deadline, "squeue", "-h", "-t", "PENDING",
                                      "-o", sched.PENDING_FORMAT)
        return batchqueue.encode(sched.parse_pending(pending))

    async def _resume(self, a: Assignment, args: Mapping[str, str],
                      deadline: float) -> Mapping[str, str]:
        """Undo a drain or down that is Slurm's own or cloudd's; an operator's is refused."""
        node = _node_arg(args)
        if sched.on_resume(await self._read(a, deadline, node, "resume_node"),
                           slurm_user=SLURM_USER) is sched.OnResume.RESUME:
            await self._checked(a, deadline, "scontrol", "update", f"nodename={node}",
                                "state=resume")
        return {"node": node, "state": "resumed"}

    async def _drain(self, a: Assignment, args: Mapping[str, str],
                     deadline: float) -> Mapping[str, str]:
        """No new job on the node, its jobs finish: with cloudd's reason for `why` (an
        elastic role's node leaving, a node moving off a drained host), so that the leader
        knows the drain for its own, and why. A node an operator drained or took down keeps
        its own reason (refused)."""
        node = _node_arg(args)
        try:
            why = Release(args.get("why", ""))
        except ValueError:
            raise PermanentError(f"drain_node: why {str(args.get('why'))[:20]!r} is not one of "
                                 f"{', '.join(r.value for r in Release)}") from None
        if sched.on_drain(await self._read(a, deadline, node, "drain_node"), RELEASE_NOTES[why],
                          slurm_user=SLURM_USER) is sched.OnDrain.DRAIN:
            await self._checked(a, deadline, "scontrol", "update", f"nodename={node}",
                                "state=drain", f"reason={RELEASE_NOTES[why]}")
        return {"node": node, "state": "draining"}

    async def _delete(self, a: Assignment, args: Mapping[str, str],
                      deadline: float) -> Mapping[str, str]:
        """Take the node down (its jobs are requeued), then delete it; one already gone is
        fine. Refused by slurmctld while its jobs still complete: retried later."""
        node = _node_arg(args)
        code, out = await _run(a, deadline, "scontrol", "-o", "show", "node", node)
        if code != 0 and "not found" in out:
            return {"node": node, "deleted": "already absent"}
        await self._checked(a, deadline, "scontrol", "update", f"nodename={node}",
                            "state=down", f"reason=left cloud {a.cloud}")
        await self._checked(a, deadline, "scontrol", "delete", f"nodename={node}")
        return {"node": node, "deleted": "yes"}

    async def _read(self, a: Assignment, deadline: float, node: str,
                    action: str) -> sched.SchedNode:
        """The node as slurmctld sees it now. The leader decided from a reading taken
        seconds ago; an operator may have drained the node since, and that drain is theirs
        to undo (`sched.on_resume`, `sched.on_drain`)."""
        seen = sched.parse_sinfo(await self._checked(
            a, deadline, "sinfo", "-h", "-N", "-n", node, "-o", sched.SINFO_FORMAT)).get(node)
        if seen is None:
            raise TemporaryError(f"{action}: {node} is not registered with slurmctld",
                                 delay=5.0)
        return seen

    async def _checked(self, a: Assignment, deadline: float, *argv: str) -> str:
        code, out = await _run(a, deadline, *argv)
        if code != 0:
            said = next((line for line in out.splitlines() if line.strip()), f"exit {code}")
            raise TemporaryError(f"`{' '.join(argv[:2])}` on {a.node} failed: {said[:200]}",
                                 delay=5.0)
        return out


class ComputeRole(SlurmRole):
    name = "compute"
    daemon = "slurmd"
    depends_on = ("head",)

    def controller(self, a: Assignment) -> SlurmctldHost:
        heads = a.peers_of("head")
        if not heads:
            raise TemporaryError(f"{a.node}: no head node in the assignment yet", delay=5.0)
        return SlurmctldHost.of(heads[0].node, heads[0].address)

    def own_dirs(self, paths: SlurmPaths) -> tuple[DirSpec, ...]:
        return (DirSpec(paths.spool),)

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        paths = SlurmPaths.of(a.root, target="slurmd's command line")
        node = values.label(a.node, what="node name", target="slurmd's command line")
        check = self.scontrol(a, paths, "show", "slurmd")
        return (self.munged(a, paths), ServiceSpec(
            name="slurmd",
            argv=(*a.exec_prefix, "slurmd", "-D", "-Z", "-N", node, "-f", str(paths.conf)),
            depends_on=("munged",), liveness=_probe(check, period=5.0),
            readiness=_probe(check, period=2.0), reload_argv=(),  # SIGHUP
            log_path=str(paths.log / "slurmd.out")))


def _node_arg(args: Mapping[str, str]) -> str:
    # A label only: a host list ("c[1-9]") or a second word would reach other nodes.
    return values.label(args.get("node"), what="node name", target="scontrol")


async def _run(a: Assignment, deadline: float, *argv: str) -> tuple[int, str]:
    """Run a Slurm command in the node until `deadline` (the loop's time) at the latest:
    (exit status, output)."""
    paths = SlurmPaths.of(a.root, target="a Slurm command")
    env = {"PATH": _PATH, "LANG": "C", "SLURM_CONF": str(paths.conf)}
    proc = await asyncio.create_subprocess_exec(
        *a.exec_prefix, *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        start_new_session=True)
    # Timed out or cancelled (the other command of `nodes` failed), it is killed and reaped.
    async with children.ended(proc):
        try:
            async with asyncio.timeout_at(deadline):
                out, _ = await proc.communicate()
        except TimeoutError:
            raise TemporaryError(f"`{' '.join(argv[:2])}` on {a.node} did not finish within "
                                 f"the action's {ACTION_WITHIN:g}s", delay=5.0) from None
    return proc.returncode or 0, out.decode(errors="replace")
