"""The `slurm` cloud type: a head running slurmctld, compute nodes running slurmd, munge on all.

Roles (`roles.py`), in dependency order: `head`, then `compute`. Compute nodes are Slurm's
dynamic nodes: each registers itself when its slurmd starts, so adding one needs nothing of
the head, and slurm.conf never changes when compute nodes come and go (`conf.py` says why).

The leader's hooks reach slurmctld through the head's actions (`ClusterView.ask`):
- `configure`: the head answers (`head`); then (`compute`) nodes Slurm knows but the cloud no
  longer has are deleted, and the configure is retried until every healthy compute node has
  registered;
- `monitor`: the scheduler's view of every compute node as findings (state and running jobs
  beside cloudd's own view in `inspect`), nodes Slurm itself marked down or drained while
  cloudd keeps them healthy resumed, and nodes that left deleted (`sched.judge`); and the
  jobs waiting in the queue, summed, as a finding for the whole cloud (`batchqueue`);
- `demand`, `release`, `keep` (compute may be elastic): the jobs waiting for nodes and each
  compute node's use; a node drained with cloudd's own reason to leave, or resumed.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloudd.errors import ClouddError, TemporaryError
from cloudd.providers import batchqueue
from cloudd.providers.base import ClusterView, Demand, Finding, Peer, Provider, Release, Role
from cloudd.providers.slurm import sched
from cloudd.providers.slurm.conf import SLURM_USER
from cloudd.providers.slurm.roles import ComputeRole, HeadRole

__all__ = ["PROVIDER", "SlurmProvider"]


class SlurmProvider(Provider):
    cloud_type = "slurm"
    roles: Mapping[str, Role] = {r.name: r for r in (HeadRole(), ComputeRole())}

    def _head(self, cluster: ClusterView) -> Peer:
        heads = cluster.of("head")
        if not heads:
            raise TemporaryError(f"cloud {cluster.cloud} has no head node", delay=5.0)
        return heads[0]

    async def _view(self, cluster: ClusterView, head: Peer) -> tuple[sched.SchedNode, ...]:
        try:
            return sched.decode(await cluster.ask(head.node, "nodes", {}))
        except ClouddError as exc:
            raise TemporaryError(f"slurmctld on {head.node} did not answer: {exc}",
                                 delay=5.0) from None

    async def configure(self, cluster: ClusterView, role: str) -> None:
        """`head`: slurmctld answers. `compute`: the nodes that left are deleted, and every
        healthy compute node has registered (else TemporaryError, to be retried)."""
        self.role(role)
        head = self._head(cluster)
        nodes = await self._view(cluster, head)
        if role == "head":
            return
        verdict = sched.judge(nodes, cluster.of("compute"), slurm_user=SLURM_USER)
        for name in verdict.delete:
            await self._ask(cluster, head, "delete_node", name)
        known = {n.name for n in nodes}
        missing = sorted(p.node for p in cluster.of("compute") if p.healthy
                         and p.node not in known)
        if missing:
            raise TemporaryError(f"compute node(s) {', '.join(missing)} not registered with "
                                 "slurmctld yet", delay=2.0)

    async def monitor(self, cluster: ClusterView) -> tuple[Finding, ...]:
        """The scheduler's view of each compute node; resumes and deletes as `sched.judge`
        decides. An action that fails is reported as a finding, and tried again next time."""
        try:
            head = self._head(cluster)
            nodes = await self._view(cluster, head)
        except ClouddError as exc:
            heads = cluster.of("head")
            return (Finding("slurmctld", False, str(exc), heads[0].node if heads else ""),)
        verdict = sched.judge(nodes, cluster.of("compute"), slurm_user=SLURM_USER)
        failed = []
        for action, names in (("resume_node", verdict.resume), ("delete_node", verdict.delete)):
            for name in names:
                try:
                    await self._ask(cluster, head, action, name)
                except ClouddError as exc:
                    failed.append(Finding(action, False, str(exc), name))
        try:
            queue = batchqueue.finding(batchqueue.decode(
                await cluster.ask(head.node, "queue", {})))
        except ClouddError as exc:
            queue = batchqueue.unreadable("slurmctld", str(exc))
        return (Finding("slurmctld", True, "slurmctld answers", head.node),
                *verdict.findings, *failed, queue)

    async def demand(self, cluster: ClusterView, role: str) -> Demand:
        """`compute`, elastic: the jobs waiting for nodes and each compute node's use."""
        if self.role(role).name != "compute":
            return await super().demand(cluster, role)
        head = self._head(cluster)
        nodes = {n.name: n for n in await self._view(cluster, head)}
        try:
            queue = batchqueue.decode(await cluster.ask(head.node, "queue", {}))
        except ClouddError as exc:
            raise TemporaryError(f"no queue from slurmctld on {head.node}: {exc}",
                                 delay=5.0) from None
        return batchqueue.demand(queue, {p.node: sched.use_of(nodes.get(p.node))
                                         for p in cluster.of(role)})

    async def release(self, cluster: ClusterView, role: str, node: str,
                      why: Release = Release.LEAVE) -> None:
        if self.role(role).name != "compute":
            await super().release(cluster, role, node, why)
        await self._ask(cluster, self._head(cluster), "drain_node", node, why=why.value)

    async def keep(self, cluster: ClusterView, role: str, node: str) -> None:
        if self.role(role).name != "compute":
            await super().keep(cluster, role, node)
        await self._ask(cluster, self._head(cluster), "resume_node", node)

    async def _ask(self, cluster: ClusterView, head: Peer, action: str, node: str,
                   **more: str) -> None:
        try:
            await cluster.ask(head.node, action, {"node": node, **more})
        except ClouddError as exc:
            raise TemporaryError(f"{action} {node} on {head.node}: {exc}", delay=5.0) from None


PROVIDER = SlurmProvider()
