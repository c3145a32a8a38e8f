"""What the planner is asked to make true: the manifest in force, with the operator's
maintenance holds applied.

Pure. A node in maintenance keeps its place in the cloud but is planned with the `manual` run
strategy and `held`: never started, stopped, placed or moved while the operator works on it.
A drained host (`drain.Drains`) takes no new domain, and each node says how it may leave one
(`drain.move_of` its roles). Maintenance of the whole cloud is not a hold here: the leader
stops reconciling altogether (`acting_term`).
"""

from __future__ import annotations

from collections.abc import Collection

from cloudd.config.model import Cloud
from cloudd.daemon.leader.drain import NO_DRAINS, Drains, move_of
from cloudd.vmctl import plan


def desired_of(cloud: Cloud, *, held: Collection[str | None] = (),
               drains: Drains = NO_DRAINS) -> plan.Desired:
    """The planner's `Desired` for `cloud`; nodes named in `held` are left as they are."""
    pool = {h.name: h.address for h in cloud.pool}
    nodes = tuple(
        plan.NodeSpec(name=n.name, role=n.role, memory_mib=n.memory_mib, vcpus=n.vcpus,
                      image=n.image or "", base_image=n.base_image, pin=n.host,
                      run=(plan.RunStrategy.MANUAL if n.name in held
                           else plan.RunStrategy(n.run.value)),
                      managed=n.managed, held=n.name in held,
                      move=move_of(cloud.type, n.roles),
                      source=plan.ImageSource(n.source_host, pool[n.source_host])
                      if n.source_host else None)
        for n in cloud.nodes)
    return plan.Desired(cloud=cloud.name, ensure=plan.Ensure(cloud.ensure.value), nodes=nodes,
                        role_order=cloud.roles,
                        unreachable_reset_after=cloud.unreachable_reset_after,
                        drained=drains.hosts & pool.keys(),
                        move_stateful=drains.move_stateful & pool.keys(),
                        storage={h.name: h.migration.storage for h in cloud.pool
                                 if h.migration is not None})

