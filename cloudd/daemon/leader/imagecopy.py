"""Getting a node's disk image onto the host that will run it, for the planner's
`CopyImage` and `CreateOverlay` actions (its removal, `RemoveImage`, is one plain host command
the controller sends).

Both are host commands in the leader's term, sent through the leader's `HostClient`. A copy
may take minutes: the host answers PENDING while it runs, each answer within a short wait
(under the transport's request timeout), and the same FETCH goes again, in the current term,
until the host says done or failed. A leader that loses its term stops asking at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cloudd.daemon.leader.controller import HostClient
from cloudd.errors import PermanentError, TemporaryError
from cloudd.vmctl.hostagent import CommandOutcome, HostCommand, Op
from cloudd.vmctl.plan import NodeSpec
from cloudd.vmctl.template import domain_name

#: Longest a copy may take, seconds, before it counts as failed (and backs off).
COPY_LIMIT = 3600.0

#: Seconds between two FETCHes, so that a host that answers PENDING at once is not flooded.
FETCH_PAUSE = 0.5


async def copy_to_host(client: HostClient, host: str, spec: NodeSpec, *,
                       term: Callable[[], int | None], limit: float = COPY_LIMIT,
                       pause: float = FETCH_PAUSE) -> None:
    """Have `host` copy the image `spec` needs (`spec.copied_image`) from its source host;
    return once it is there, or raise when it failed, the term was lost, or `limit` passed."""
    source = spec.source
    if source is None:
        raise PermanentError(f"node {spec.name} has no source host to copy its image from")
    image = spec.copied_image
    try:
        async with asyncio.timeout(limit):
            while True:
                now = term()
                if now is None:
                    raise TemporaryError("no longer the acting leader")
                result = await client.call(host, HostCommand(Op.FETCH, now, image=image,
                                                             source=source.address))
                if result.outcome is CommandOutcome.PENDING:
                    await asyncio.sleep(pause)
                    continue
                if result.outcome in (CommandOutcome.DONE, CommandOutcome.NOOP):
                    return
                why = f"copy of {image} from {source.host} to {host}: {result.message}"
                if result.retry_after is None:
                    raise PermanentError(why)
                raise TemporaryError(why, delay=result.retry_after)
    except TimeoutError:
        raise TemporaryError(f"copy of {image} from {source.host} to {host} did not finish "
                             f"within {limit:g}s") from None


async def create_overlay(client: HostClient, host: str, spec: NodeSpec, *, cloud: str,
                         term: Callable[[], int | None]) -> None:
    """The planner's CreateOverlay: the node's image as an overlay of its base image, made as
    the disk of the node's domain (the host records it so, for its later removal)."""
    if not spec.base_image:
        raise PermanentError(f"node {spec.name} has no base image to overlay")
    now = term()
    if now is None:
        raise TemporaryError("no longer the acting leader")
    result = await client.call(host, HostCommand(Op.OVERLAY, now, domain_name(cloud, spec.name),
                                                 image=spec.image, base=spec.base_image))
    if result.outcome not in (CommandOutcome.DONE, CommandOutcome.NOOP):
        raise TemporaryError(f"overlay of {spec.name} on {host}: {result.message}")
