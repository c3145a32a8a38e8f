"""A new generation's pool of hosts against the pool in force: what may change at once, and
whether a generation still names a given host.

Why one host at a time. A leader acts while a majority of the pool hosts *it* knows hold its
lease, and a write of the record is done once a majority of them has it. While a generation
travels, some agents count with the pool before it and some with the pool after it. Each host
grants its lease to one leader at a time, so two leaders can never act at once as long as
any majority of the old pool and any majority of the new one share a host. That holds when
the two pools differ by one host (Raft's single-server change: with `n` hosts before and
`n + 1` after, `n // 2 + 1` and `(n + 1) // 2 + 1` hosts out of `n + 1` always overlap, and
likewise for a removal), and fails for two: {pm1, pm2, pm3} growing to five hosts has the
majorities {pm2, pm3} and {pm1, pm4, pm5}. So the leader refuses a generation that adds or
removes more than one pool host (`refusal`); an operator makes such a change in steps, each
in force before the next. Renaming a host is a removal and an addition: two steps.

Why a host looks for itself in a generation. A pool host that a new generation leaves out
gets nothing from the other members from then on (the dispatch table refuses it), so it
would campaign alone in the old pool for ever. It still takes the leader's write of that
generation (the write goes to the hosts of the pool in force, itself included): finding
itself missing from it (`names`), it makes that generation its own manifest and, read back,
leaves the cloud (`cloudd.daemon.member.clouds`).

Why a host leaves the pool empty. The leader observes only the hosts of the pool in force: a
domain of the cloud on a host that the new generation drops would no longer be seen, its node
would be placed again elsewhere, and two copies of one VM would run. So a generation that
removes a host is refused while the leader's last listing of that host shows any domain of
the cloud (`removal_refusal`), unless the host has been fenced (powered off); and, until
then, while the leader has not listed it at all (a new leader's first pass, or a host that
does not answer: one the leader cannot list is removed once fenced).

Pure: texts and names in, one sentence (or a truth value) out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import yaml


def refusal(before: Collection[str], after: Collection[str], *, cloud: str) -> str | None:
    """Why a generation whose pool hosts are `after` may not follow the pool `before` (None:
    it may)."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    if len(added) + len(removed) <= 1:
        return None
    changes = ([f"adds {', '.join(added)}"] if added else []) + (
        [f"removes {', '.join(removed)}"] if removed else [])
    return (f"the new generation of {cloud} {' and '.join(changes)}: a generation may add or "
            f"remove one pool host at a time (the majorities of the pools before and after "
            f"must share a host), so apply one change, wait until it is in force, then the "
            f"next")


def pool_of(text: str) -> frozenset[str] | None:
    """The pool host names a generation's text lists (None: the text does not read as one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    pool = data.get("pool") if isinstance(data, dict) else None
    if not isinstance(pool, list):
        return None
    names = [h.get("name") if isinstance(h, dict) else None for h in pool]
    listed = [n for n in names if isinstance(n, str) and n]
    return frozenset(listed) if names and len(listed) == len(names) else None


def names(text: str, host: str) -> bool:
    """True unless `text` reads as a generation whose pool leaves `host` out (a text that
    does not read removes nobody)."""
    pool = pool_of(text)
    return pool is None or host in pool


def removal_refusal(removed: Collection[str], *, seen: Mapping[str, Collection[str]],
                    fenced: Collection[str], cloud: str) -> tuple[str, bool] | None:
    """Why the pool hosts `removed` may not leave yet, given the leader's last listing of
    each host (`seen`: the cloud's nodes whose domains it holds) and the hosts fenced since;
    with True when it is only a matter of moments (None: they may leave)."""
    for host in sorted(set(removed) - set(fenced)):
        if host not in seen:
            return (f"the leader has not listed the domains of {host} yet, which the new "
                    f"generation of {cloud} removes: try again once it has (a leader lists "
                    f"every host that answers within a pass), or once {host} is fenced"), True
        held = sorted(seen[host])
        if held:
            return (f"{host} still holds {', '.join(held)} of {cloud}, and the new generation "
                    f"removes it: a host leaves the pool once it holds none of the cloud's "
                    f"nodes (stop its agent: the leader fences it and places its nodes "
                    f"elsewhere; then apply again)"), False
    return None
