"""Hung guests: a domain that runs while its node's agent stays unreachable. Pure.

Theory of operation. libvirt calls a domain running as long as its qemu process lives, so a
guest whose kernel hangs or panicked without rebooting, or whose qemu is stopped (SIGSTOP),
reads "running" forever. Membership is what notices: the node's agent stops answering SWIM
probes and the leader's own probes find it dead (a suspicion is not enough: another member's
gossip can cause one). `hung` turns that into a rule for one node
whose domain runs on a live, reachable host (the planner checks the host first: a host that
does not answer is fencing's business, and its nodes look unreachable from here too):
- the agent has been unreachable since the later of when this leader first saw it dead
  (`Observed.unreachable`) and when the domain last started running (`DomainObs.since`,
  which a reset moves too), so an agent that never came up counts from its domain's start;
- past `Desired.unreachable_reset_after` seconds: Reset, once;
- still unreachable that long again after the reset (`Observed.resets`): Destroy, after which
  the planner's liveness rules start the domain again in place, as for any domain that died;
- before the bound: the node waits, and `inspect` says for how long it has not answered.
The planner never asks this of a node it plans `manual` (its run strategy, or the operator's
maintenance), nor of a domain that does not run. Each reset and hung destroy counts against
the node's backoff (the controller records it), so a guest that keeps hanging is reset less
and less often.
"""

from __future__ import annotations

from cloudd.vmctl.plan.model import Destroy, DomainObs, Observed, Reset, Waiting


def hung(d: DomainObs, observed: Observed, *, bound: float,
         now: float) -> Reset | Destroy | Waiting | None:
    """What the rule does about the running domain `d` now: a Reset or a Destroy, a Waiting
    (its agent is unreachable, but not for `bound` seconds yet), or None (its agent is
    alive)."""
    down = observed.unreachable.get(d.node)
    if down is None:
        return None
    reset_at = observed.resets.get((d.node, d.host))
    since = max(down, d.since) if reset_at is None else max(down, d.since, reset_at)
    seconds = now - since
    if seconds < bound:
        step = "a destroy" if reset_at is not None else "a reset"
        return Waiting(d.node, f"agent unreachable for {seconds:.0f}s while its domain runs; "
                               f"{step} at {bound:g}s")
    if reset_at is None:
        return Reset(d.node, d.host, f"agent unreachable for {seconds:.0f}s while its domain "
                                     f"runs (bound {bound:g}s)", unreachable_for=seconds)
    return Destroy(d.node, d.host, f"agent still unreachable {seconds:.0f}s after a reset; "
                                   "destroying to start it again", unreachable_for=seconds)
